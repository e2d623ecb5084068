"""Completion records: the one scheme by which every resumable unit of work says it is done.

A unit (a generation shard, a label shard, a probe group, an intervention unit) writes its outputs first and its
record last, atomically, at `<output>/<folder>/<key>.json`: its outputs are valid exactly when the record exists, so a
crash or a kill mid-unit leaves a unit that is simply redone on resume. A unit that failed all its attempts gets
`<key>.failed.json`, removed when it later completes. Keys may contain "/" (probe groups, intervention units).
"""

from __future__ import annotations

import json
import posixpath

from workflows.store.files import filesystem, remove_file, write_atomic

DONE, FAILED = ".json", ".failed.json"


class Records:
    def __init__(self, output: str, folder: str):
        self.output, self.folder = output, folder

    def _all(self, suffix: str) -> dict[str, object]:
        fs, root = filesystem(self.output)
        base = posixpath.join(root, self.folder)
        try:
            files = fs.find(base)
        except FileNotFoundError:
            return {}
        out = {}
        for path in files:
            key = posixpath.relpath(path, base)
            if ".tmp-" in key or not key.endswith(suffix) or (suffix == DONE and key.endswith(FAILED)):
                continue
            try:
                out[key[: -len(suffix)]] = json.loads(fs.cat_file(path))
            except FileNotFoundError:  # listed, then gone (taken back, or an object store's listing ahead of it)
                continue
        return out

    def done(self) -> dict[str, object]:
        """{key: record} of every unit whose outputs are complete."""
        return self._all(DONE)

    def failed(self) -> dict[str, object]:
        """{key: record} of the units that failed all their attempts (and have not completed since)."""
        return self._all(FAILED)

    def write(self, key: str, record: object, indent: int | None = None) -> None:
        """Publish a unit: call after every one of its outputs is on storage."""
        write_atomic(self.output, f"{self.folder}/{key}{DONE}", json.dumps(record, indent=indent, default=float).encode())
        remove_file(self.output, f"{self.folder}/{key}{FAILED}")

    def unpublish(self, key: str, reason: object) -> None:
        """Take a published unit back (its outputs were found damaged): it is failed until it runs again."""
        self.fail(key, reason)
        remove_file(self.output, f"{self.folder}/{key}{DONE}")

    def fail(self, key: str, record: object) -> None:
        write_atomic(self.output, f"{self.folder}/{key}{FAILED}", json.dumps(record, indent=1).encode())

    def clear(self) -> None:
        """Forget every unit (their outputs are then overwritten by the units that run again)."""
        fs, root = filesystem(self.output)
        base = posixpath.join(root, self.folder)
        if fs.exists(base):
            fs.rm(base, recursive=True)
