"""The write path of generation: `ShardWriter` streams a shard's activations into the store (docs/store.md, "The
write path")."""

from __future__ import annotations

import posixpath
import queue
import threading
from typing import Any

import numpy as np
import zarr

from workflows.store.act_dtype import encode
from workflows.store.files import disk_full, filesystem, is_disk_full
from workflows.store.paths import IMAGES, STORE, activation_scales, activations, shard_key
from workflows.store.run_store import open_store, shard_records
from workflows.store.shardfile import direct_encoding, write_shard
from workflows.store.staging import HostStaging, is_cuda


class ShardWriter:
    """Writes shards: buffers one batch's activations, then writes them from background threads.

    Each activation array is a Zarr shard per batch `(batch, step, h, w, c)` holding one inner chunk per step, so a
    batch costs one file per hook point (not one per hook and step) and is written whole, never read back. While
    `threads` threads write batch k (one hook point each, whole shards straight to storage through `shardfile`,
    bypassing Zarr's slow generic path), the model computes batch k+1. The queue holds at most one batch, so memory
    stays bounded by about two batches of activations; written buffers are kept and reused, since fresh gigabyte
    buffers cost more in page faults than the copies into them. CUDA activations are copied to pinned buffers
    asynchronously (`HostStaging`), so capture does not stall the GPU. A write error (disk full, lost bucket) is
    raised by the next call and by `flush`, and the completion record is written only after every queued write is on
    storage. One writer per process; an actor keeps it for all its shards. `close()` (or `with ShardWriter(...)`)
    stops the threads, which otherwise hold the writer and its buffers until the process ends. direct=False sends
    every write through Zarr (for comparison in benchmarks/bench_sd14.py).
    """

    def __init__(self, output: str, threads: int = 4, direct: bool = True):
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.output, self.direct = output, direct
        self.root = open_store(output, mode="r+")
        self.arrays: dict[str, zarr.Array] = {}
        # the current batch: name -> (pool key, buffer (step, batch, h, w, c)), and for float8 activations the
        # scales (step, batch, c)
        self._buffers: dict[str, tuple[tuple, np.ndarray]] = {}
        self._scales: dict[str, np.ndarray] = {}
        self._filled: dict[str, set[int]] = {}
        self._start: int | None = None
        self._staging = HostStaging()
        self._encodings: dict[str, Any] = {}  # name -> shardfile.direct_encoding (None: through Zarr)
        self._act_dtypes: dict[str, str] = {}  # name -> the array's act_dtype (workflows.store.act_dtype)
        self._fs, root = filesystem(output)
        self._store_root = posixpath.join(root, STORE)
        self._pool: dict[tuple, list[np.ndarray]] = {}  # written batch buffers by (shape, dtype, pinned)
        self._pool_lock = threading.Lock()
        acts = len(self.root.attrs["sceneprobe"]["layout"]["acts"])
        self._queue: queue.Queue = queue.Queue(maxsize=acts + 1)
        self._error: BaseException | None = None
        self._threads = [threading.Thread(target=self._drain, name=f"shard-writer-{k}", daemon=True)
                         for k in range(threads)]
        for thread in self._threads:
            thread.start()

    def _array(self, path: str) -> zarr.Array:
        if path not in self.arrays:
            self.arrays[path] = self.root[path]
        return self.arrays[path]

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:  # close(): stop
                self._queue.task_done()
                return
            write, args, recycle = item
            try:
                if self._error is None:  # after a failure the rest of the shard is dropped; it will be retried
                    write(*args)
            except BaseException as err:  # noqa: BLE001 - handed to the producer thread, which raises it
                # a full disk stops the run at once (a retry cannot free space), as one line naming the output
                if is_disk_full(err):
                    err = disk_full(self.output, "a shard's images and activations")
                self._error = self._error or err
            finally:
                if recycle is not None:
                    with self._pool_lock:
                        self._pool.setdefault(recycle[0], []).append(recycle[1])
                self._queue.task_done()

    def _put(self, write, *args, recycle: tuple[tuple, np.ndarray] | None = None) -> None:
        if self._error is not None:
            self.flush()
        self._queue.put((write, args, recycle))

    def _buffer(self, shape: tuple[int, ...], dtype: np.dtype, like) -> tuple[tuple, np.ndarray]:
        """(pool key, batch buffer): a written one of the same kind if there is one, else a new one."""
        key = (shape, np.dtype(dtype).str, is_cuda(like))  # pinned for CUDA tensors
        with self._pool_lock:
            free = self._pool.get(key)
            if free:
                return key, free.pop()
        return key, self._staging.empty(shape, dtype, like)

    @staticmethod
    def _zarr_write(arr: zarr.Array, selection: tuple, data: np.ndarray) -> None:
        arr[selection] = data

    def begin(self) -> None:
        """Start a shard: wait for leftovers, drop a half-filled batch and the error of a shard that already failed."""
        self._queue.join()
        self._staging.wait()
        self._error = None
        self._buffers, self._filled, self._scales, self._start = {}, {}, {}, None

    def write_act(self, name: str, start: int, step: int, act) -> None:
        """act: (batch, h, w, c) for images [start, start + batch) at `step`, a numpy array or a torch tensor (CPU or
        CUDA); cast and copied into the batch buffer.

        Steps may come in any order; a new `start` (the next batch) queues the previous batch.
        """
        if start != self._start:
            self.end_batch()
            self._start = start
        arr = self._array(activations(name))
        if name not in self._encodings:  # per array, once: this runs for every hook at every step
            self._encodings[name] = direct_encoding(arr) if self.direct else None
            self._act_dtypes[name] = arr.attrs.get("act_dtype", "float16")
        act_dtype = self._act_dtypes[name]
        if name not in self._buffers:
            # step-major, so each step's slice is contiguous: the target of one device-to-host copy
            self._buffers[name] = self._buffer((arr.shape[1], act.shape[0], *arr.shape[2:]), arr.dtype, act)
            self._filled[name] = set()
            if act_dtype == "float8_e4m3":
                self._scales[name] = np.empty((arr.shape[1], act.shape[0], arr.shape[-1]), np.float32)
        if act_dtype in ("bfloat16", "float8_e4m3"):  # encoded where captured: on the device, before the copy
            act, scale = encode(act, act_dtype)
            if scale is not None:
                self._scales[name][step] = scale.cpu().numpy()
        self._staging.copy(self._buffers[name][1][step], act)
        self._filled[name].add(step)

    def write_images(self, start: int, images: np.ndarray) -> None:
        """images: (batch, H, W, 3) uint8 for images [start, start + batch)."""
        n = images.shape[0]
        self._put(self._zarr_write, self._array(IMAGES), (slice(start, start + n),),
                  np.array(images, dtype=np.uint8, copy=True))

    def end_batch(self) -> None:
        """Queue the buffered batch of activations (every step must be there) for writing."""
        self._staging.wait()
        for name, (key, buf) in self._buffers.items():
            arr = self._array(activations(name))
            if len(self._filled[name]) != arr.shape[1]:
                raise RuntimeError(f"{name}: captured steps {sorted(self._filled[name])} of images from {self._start}; "
                                   f"expected all {arr.shape[1]} steps")
            batch, encoding = arr.shards[0], self._encodings[name]
            if encoding is not None and buf.shape[1] == batch and self._start % batch == 0:
                self._put(write_shard, self._fs, self._store_root, arr, self._start // batch, buf, encoding,
                          recycle=(key, buf))
            else:  # an edge batch, or a layout shardfile does not know
                self._put(self._zarr_write, arr, (slice(self._start, self._start + buf.shape[1]),),
                          buf.swapaxes(0, 1), recycle=(key, buf))
        for name, scales in self._scales.items():  # (step, batch, c) -> the scale array's (batch, step, c)
            self._put(self._zarr_write, self._array(activation_scales(name)),
                      (slice(self._start, self._start + scales.shape[1]),), scales.swapaxes(0, 1))
        # queued buffers now belong to the writer threads, which return them to the pool once written
        self._buffers, self._filled, self._scales, self._start = {}, {}, {}, None

    def flush(self) -> None:
        """Wait until every queued chunk is written; raise (once) the first error since the last flush."""
        self._queue.join()
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def close(self) -> None:
        """Finish every queued write, then stop the writer threads; raises a pending write error. Idempotent."""
        try:
            self.flush()
        finally:
            for _ in self._threads:
                self._queue.put(None)
            for thread in self._threads:
                thread.join()
            self._threads = []

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def complete(self, shard: int, record: dict) -> None:
        """Publish the shard: the completion record is the last thing written, after every chunk."""
        self.end_batch()
        self.flush()
        shard_records(self.output).write(shard_key(shard), record, indent=1)
