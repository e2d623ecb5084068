"""One owner per output: a run holds a lease on its output location while it writes, so a second run started on the
same output is refused instead of writing into the same store.

The lease is `<output>/lease.json`: owner host, pid, start time, a random token and a heartbeat the owner refreshes
every HEARTBEAT_S seconds. Starting a run:

1. no lease, or a lease whose owner is dead (same host, no such pid) or whose heartbeat is older than EXPIRY_S: take it
   (a takeover is logged with the previous owner);
2. otherwise refuse with one line naming the owner;
3. after writing, read the lease back: if another starter's token is there, it won the race and this run refuses.

Local paths rename atomically, so the window in 3 is the time between two starters' read and write (milliseconds).
Object stores have no conditional write through fsspec, so two runs started on one S3 output within about a second
could both pass 1; the read-back in 3 then makes the later writer win, and the earlier one notices at its next
heartbeat and stops before its next stage (`LeaseLost`), having written at most part of one stage's units (each
unit publishes its outputs whole, so the store stays consistent either way).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from ldm.errors import UserError
from workflows.store.files import read_file, remove_file, write_atomic
from workflows.store.paths import LEASE

HEARTBEAT_S = 30.0
EXPIRY_S = 120.0  # four missed heartbeats


class LeaseHeldError(UserError):
    """Another live run owns the output."""


class LeaseLost(UserError):
    """This run's lease was taken over (its heartbeat had expired): it must stop writing."""


@dataclass(frozen=True)
class Lease:
    host: str
    pid: int
    started: float
    heartbeat: float
    token: str

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host}, started {since}, heartbeat {time.time() - self.heartbeat:.0f} s ago"


def read_lease(output: str) -> Lease | None:
    data = read_file(output, LEASE)
    return None if data is None else Lease(**json.loads(data))


def _ours(lease: Lease | None) -> bool:
    """Whether this process holds `lease` (a stage run inside a run)."""
    return lease is not None and lease.pid == os.getpid() and lease.host == socket.gethostname()


def _alive(lease: Lease, now: float) -> bool:
    """Whether the lease's owner may still be writing: its heartbeat is fresh and, on this host, its pid exists."""
    if now - lease.heartbeat > EXPIRY_S:
        return False
    if lease.host != socket.gethostname():
        return True
    try:
        os.kill(lease.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def acquire(output: str, stream=None) -> Lease:
    """Take the output's lease (module docstring), or raise LeaseHeldError naming its live owner."""
    stream = stream or sys.stderr
    now = time.time()
    held = read_lease(output)
    if _ours(held):
        return held
    if held is not None and _alive(held, now):
        raise LeaseHeldError(f"output {output!r} is in use by another run ({held.describe()}); wait for it to "
                             f"finish or stop it (a lease whose owner is gone is taken over after {EXPIRY_S:.0f} s)")
    mine = Lease(socket.gethostname(), os.getpid(), now, now, uuid.uuid4().hex)
    write_atomic(output, LEASE, json.dumps(asdict(mine)).encode())
    if (read_lease(output) or mine).token != mine.token:
        raise LeaseHeldError(f"output {output!r} was taken by another run starting at the same moment; "
                             "start this one again once it has finished")
    if held is not None:
        print(f"lease on {output}: taken over from {held.describe()}", file=stream, flush=True)
    return mine


def release(output: str, lease: Lease) -> None:
    """Give the lease up if it is still ours."""
    held = read_lease(output)
    if held is not None and held.token == lease.token:
        remove_file(output, LEASE)


class Holding:
    """`with Holding(output):` holds the output's lease for the block, refreshing its heartbeat from a thread.

    Reentrant within a process: a run's stages hold the lease once; a nested holder leaves it to the outer one."""

    def __init__(self, output: str, heartbeat_s: float = HEARTBEAT_S, stream=None):
        self.output, self.heartbeat_s, self.stream = output, heartbeat_s, stream
        self.lease: Lease | None = None
        self.lost: str | None = None
        self._outer = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Holding:
        self._outer = not _ours(read_lease(self.output))
        self.lease = acquire(self.output, self.stream)
        if self._outer:
            self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            held = read_lease(self.output)
            if held is None or held.token != self.lease.token:
                self.lost = "taken over" if held else "removed"
                return
            self.lease = Lease(**{**asdict(self.lease), "heartbeat": time.time()})
            write_atomic(self.output, LEASE, json.dumps(asdict(self.lease)).encode())

    def check(self) -> None:
        """Raise LeaseLost if another run took the lease over."""
        if self.lost:
            raise LeaseLost(f"the lease on {self.output!r} was {self.lost} by another run; this run stopped writing")

    def __exit__(self, *exc: object) -> None:
        if not self._outer:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lease is not None and not self.lost:
            release(self.output, self.lease)
