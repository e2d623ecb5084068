"""Progress lines and the end-of-run summary.

Plain periodic lines rather than a redrawn bar: they read well in `ray job logs`, CI logs and terminals alike.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def format_bytes(n: float) -> str:
    """1234567 -> "1.2 MB" (decimal units)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


@dataclass
class Progress:
    """Counts work items (images by default); prints `images done/total, images/s, ETA` at most every `every` seconds
    (and when forced, at the end).

    `already` items were complete before this session (a resumed run) and do not count toward the rate.
    """

    total: int
    unit: str = "images"
    already: int = 0
    every: float = 10.0
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    done: int = 0
    failed: int = 0
    start: float = field(default_factory=time.monotonic)
    _last: float = 0.0
    _printed: str = ""

    def rate(self) -> float:
        elapsed = time.monotonic() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        finished = self.already + self.done
        rate = self.rate()
        left = self.total - finished - self.failed
        eta = _duration(left / rate) if rate > 0 and left > 0 else "-" if left > 0 else "0s"
        failed = f", {self.failed} failed" if self.failed else ""
        return (f"{self.unit} {finished}/{self.total} ({100 * finished / max(self.total, 1):.0f}%){failed}, "
                f"{rate:.2f} {self.unit}/s, ETA {eta}")

    def update(self, done: int = 0, failed: int = 0, force: bool = False) -> None:
        self.done += done
        self.failed += failed
        now = time.monotonic()
        if force or now - self._last >= self.every:
            line = self.line()
            if line != self._printed:  # a forced final update after the last shard would repeat the same line
                print(line, file=self.stream, flush=True)
            self._last, self._printed = now, line

    def summary(self, bytes_written: int, failed_shards: list[int], pending_shards: list[int]) -> str:
        elapsed = time.monotonic() - self.start
        lines = [
            f"generated {self.done} images in {_duration(elapsed)} ({self.rate():.2f} images/s); "
            f"{self.already + self.done}/{self.total} images complete; store holds {format_bytes(bytes_written)}",
        ]
        if self.done:
            lines[0] += f" ({format_bytes(bytes_written / max(self.already + self.done, 1))} per image)"
        if failed_shards:
            lines.append(f"FAILED shards ({len(failed_shards)}): {', '.join(map(str, failed_shards))}; "
                         "rerun with --resume to regenerate them")
        if pending_shards:
            lines.append(f"not generated ({len(pending_shards)} shards): {', '.join(map(str, pending_shards[:20]))}"
                         + (" ..." if len(pending_shards) > 20 else "") + "; rerun with --resume")
        return "\n".join(lines)
