"""The run's output location: a Zarr v3 activation store, completion records and a Parquet manifest.

Layout of `<output>` (a local path or an fsspec URL; see docs/store.md):

    store.zarr/               Zarr v3 group; attrs["sceneprobe"] holds the run config and the hook shapes
      images                  (image, y, x, rgb) uint8
      prompt, seed, split     (image,) the plan; `shard` (image,) int32 says which work shard made the image
      acts/<name>/act         (image, step, h, w, c) float16 per hook point; float32 for the "latent" and "x0" extras
    shards/<shard>.json       completion record, written last: the shard's data is valid only if this exists
    shards/<shard>.failed.json  written when a shard failed all its attempts; removed when it later completes
    manifest.parquet          one row per image: image, prompt, seed, split, shard, status
    config.yaml               the run config, written last when the store is created

Activations use Zarr sharding: one Zarr shard (one object) per batch of `batch_size` images holds every step, as inner
chunks `(batch_size, 1, h, w, c)`. One (hook, step) for all images is one contiguous byte range per batch; a batch is
written whole, once. `batch_size` divides `shard_size`, so no Zarr shard is ever shared by two work shards: each work
shard has exactly one writer.
"""

from __future__ import annotations

import json
import os
import posixpath
import queue
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
import zarr

from ldm.errors import UserError
from workflows.config import RunConfig, data_differences, dump_config, flatten, from_dict, to_dict
from workflows.prompts import Plan
from workflows.shardfile import direct_compressor, write_shard
from workflows.staging import HostStaging, is_cuda

STORE = "store.zarr"  # the Zarr group inside the output location; records and manifest sit beside it
FLOAT32_EXTRAS = ("latent", "x0")  # small and used for exact comparisons; attention outputs are stored as float16


class RunExistsError(UserError):
    """The output location already holds a run (the same one without --resume, or a different one), or is a file."""


class NoRunError(UserError):
    """The location holds no sceneprobe run (no config.yaml)."""


@dataclass
class Layout:
    """Shapes of what one image produces: `acts[name] = (h, w, c)` per step, and the image's (height, width)."""

    acts: dict[str, tuple[int, int, int]]
    image: tuple[int, int]
    steps: int

    def to_json(self) -> dict:
        return {"acts": {k: list(v) for k, v in self.acts.items()}, "image": list(self.image), "steps": self.steps}

    @staticmethod
    def from_json(d: dict) -> Layout:
        return Layout({k: tuple(v) for k, v in d["acts"].items()}, tuple(d["image"]), d["steps"])


def shard_ranges(n_images: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) image ranges of the work shards, in order; the last one may be short."""
    return [(a, min(a + shard_size, n_images)) for a in range(0, n_images, shard_size)]


def _fs(output: str):
    fs, root = fsspec.core.url_to_fs(output)
    return fs, root


def _is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _zarr_store(output: str):
    fs, root = _fs(output)
    if _is_local(fs):
        return zarr.storage.LocalStore(posixpath.join(root, STORE))
    return zarr.storage.FsspecStore.from_url(output.rstrip("/") + "/" + STORE)


def write_atomic(output: str, relpath: str, data: bytes) -> None:
    """Write a small file so that readers see the old content or the new one, never a torn one.

    Local: write a temporary file next to it, then rename (atomic on POSIX); object stores: a single PUT is atomic.
    A failed write (disk full) leaves the previous file untouched.
    """
    fs, root = _fs(output)
    path = posixpath.join(root, relpath)
    if _is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:
        fs.pipe_file(path, data)


def read_file(output: str, relpath: str) -> bytes | None:
    fs, root = _fs(output)
    path = posixpath.join(root, relpath)
    try:
        return fs.cat_file(path)
    except (FileNotFoundError, NotADirectoryError):  # NotADirectoryError: the output location is a file
        return None


def stored_config(output: str) -> dict | None:
    data = read_file(output, "config.yaml")
    return None if data is None else yaml.safe_load(data)


# ---------------------------------------------------------------- creation and resume checks


def require_run(cfg: RunConfig, stage: str) -> None:
    """Later stages need a generated run at cfg.output; say which stage makes one."""
    if stored_config(cfg.output) is None:
        raise NoRunError(f"no generated run at {cfg.output!r} for the {stage} stage; "
                         "run `sceneprobe generate CONFIG` (or `sceneprobe run CONFIG`) first")


def check_output(cfg: RunConfig, resume: bool) -> bool:
    """Decide whether `cfg.output` can be used; return True when an existing run is to be continued.

    Refuses (RunExistsError) a location holding a different run (naming the fields that differ), the same run without
    `resume`, or unrelated files.
    """
    stored = stored_config(cfg.output)
    if stored is not None:
        diff = data_differences(stored, cfg)
        if diff:
            old, new = flatten(stored), flatten(to_dict(cfg))
            detail = "; ".join(f"{k}: stored {old.get(k)!r}, given {new.get(k)!r}" for k in diff)
            raise RunExistsError(f"output {cfg.output!r} holds a different run; fields that differ: {detail}. "
                                 "Use another output location, or the stored config to resume it.")
        if not resume:
            done = len(completion_records(cfg.output))
            total = len(shard_ranges(_manifest_rows(cfg.output), cfg.shard_size))
            raise RunExistsError(f"output {cfg.output!r} already holds this run ({done} of {total} shards complete); "
                                 "pass --resume to continue it")
        return True
    fs, root = _fs(cfg.output)
    if fs.isfile(root):
        raise RunExistsError(f"output {cfg.output!r} is a file; give a folder (new or holding a run) instead")
    if fs.exists(root) and fs.ls(root, detail=False):
        attrs = read_file(cfg.output, f"{STORE}/zarr.json")
        # A store whose creation was interrupted (no config.yaml yet) is ours to recreate; anything else is not.
        if attrs is None or "sceneprobe" not in json.loads(attrs).get("attributes", {}):
            raise RunExistsError(f"output {cfg.output!r} exists and is not a sceneprobe run; refusing to write there")
    return False


def create_store(cfg: RunConfig, plan: Plan, layout: Layout) -> None:
    """Create every array (filled lazily: unwritten chunks read as NaN/0), the manifest, then config.yaml last."""
    n, b, steps = len(plan), cfg.batch_size, layout.steps
    compressors = zarr.codecs.ZstdCodec(level=1) if cfg.compression == "zstd" else None
    meta = {"config": to_dict(cfg), "layout": layout.to_json(), "format": 1}
    root = zarr.open_group(_zarr_store(cfg.output), mode="w", attributes={"sceneprobe": meta})
    h, w = layout.image
    root.create_array("images", shape=(n, h, w, 3), chunks=(b, h, w, 3), dtype="uint8", fill_value=0,
                      dimension_names=("image", "y", "x", "rgb"), compressors=compressors)
    for name, (ah, aw, ac) in layout.acts.items():
        dtype = "float32" if name in FLOAT32_EXTRAS else "float16"
        # Zarr shard = one batch, all steps (one file, written once); inner chunk = one step (one contiguous read).
        root.create_array(f"acts/{name}/act", shape=(n, steps, ah, aw, ac), shards=(b, steps, ah, aw, ac),
                          chunks=(b, 1, ah, aw, ac), dtype=dtype, fill_value=np.nan,
                          dimension_names=("image", "step", "h", "w", "c"), compressors=compressors,
                          attributes={"hook": name})
    shard = np.arange(n, dtype=np.int32) // cfg.shard_size
    for name, values, dtype in (("prompt", np.array(plan.prompts, dtype=object), str),
                                ("seed", np.array(plan.seeds, dtype=np.int64), "int64"),
                                ("split", np.array(plan.splits, dtype=object), str),
                                ("shard", shard, "int32")):
        arr = root.create_array(name, shape=(n,), chunks=(n,), dtype=dtype, dimension_names=("image",))
        arr[:] = values
    write_manifest(cfg.output, plan, cfg.shard_size, {}, set())
    write_atomic(cfg.output, "config.yaml", dump_config(cfg).encode())


def open_store(output: str, mode: str = "r") -> zarr.Group:
    """The run's Zarr group, read-only by default. Only images of complete shards are valid (see `complete_images`).

    Later stages open it with mode="r+" to add their arrays (labels) beside the activations."""
    return zarr.open_group(_zarr_store(output), mode=mode)


def take_images(array: zarr.Array, images: np.ndarray, *index: Any) -> np.ndarray:
    """`array[images, *index]` for integer image indices along the first axis: one contiguous read of the range they
    span when they fill at least half of it, Zarr's orthogonal selection otherwise (with an index array it read the
    toy grid's activations 3x slower than a slice of the same chunks)."""
    images = np.asarray(images, np.int64)
    if len(images) == 0:
        return array.get_orthogonal_selection((images, *index))
    lo, hi = int(images.min()), int(images.max()) + 1
    if hi - lo > 2 * len(images):
        return array.get_orthogonal_selection((images, *index))
    block = np.asarray(array[(slice(lo, hi), *index)])
    return block if np.array_equal(images, np.arange(lo, hi)) else block[images - lo]


def complete_images(output: str) -> np.ndarray:
    """Boolean mask over images: True where the image's shard has its completion record."""
    shard_of = np.arange(_manifest_rows(output)) // load_run_config(output).shard_size
    return np.isin(shard_of, list(completion_records(output)))


def load_plan(output: str) -> Plan:
    """The stored plan (from manifest.parquet): a resumed run uses exactly these items and splits."""
    t = read_manifest(output)
    return Plan(t["prompt"].to_pylist(), t["seed"].to_pylist(), t["split"].to_pylist())


def load_layout(output: str) -> Layout:
    return Layout.from_json(open_store(output).attrs["sceneprobe"]["layout"])


def load_run_config(output: str) -> RunConfig:
    stored = stored_config(output)
    if stored is None:
        raise NoRunError(f"{output!r} holds no sceneprobe run (no config.yaml); make one with "
                         "`sceneprobe run CONFIG`, or give the output location of a run")
    return from_dict(stored)


# ---------------------------------------------------------------- writing one shard


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
        self.root = zarr.open_group(_zarr_store(output), mode="r+")
        self.arrays: dict[str, zarr.Array] = {}
        # the current batch: name -> (pool key, buffer (step, batch, h, w, c))
        self._buffers: dict[str, tuple[tuple, np.ndarray]] = {}
        self._filled: dict[str, set[int]] = {}
        self._start: int | None = None
        self._staging = HostStaging()
        self._compressors: dict[str, Any] = {}  # name -> shardfile.direct_compressor (False: through Zarr)
        self._fs, root = _fs(output)
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
        self._buffers, self._filled, self._start = {}, {}, None

    def write_act(self, name: str, start: int, step: int, act) -> None:
        """act: (batch, h, w, c) for images [start, start + batch) at `step`, a numpy array or a torch tensor (CPU or
        CUDA); cast and copied into the batch buffer.

        Steps may come in any order; a new `start` (the next batch) queues the previous batch.
        """
        if start != self._start:
            self.end_batch()
            self._start = start
        if name not in self._buffers:
            arr = self._array(f"acts/{name}/act")
            # step-major, so each step's slice is contiguous: the target of one device-to-host copy
            self._buffers[name] = self._buffer((arr.shape[1], act.shape[0], *arr.shape[2:]), arr.dtype, act)
            self._filled[name] = set()
            if name not in self._compressors:
                self._compressors[name] = direct_compressor(arr) if self.direct else False
        self._staging.copy(self._buffers[name][1][step], act)
        self._filled[name].add(step)

    def write_images(self, start: int, images: np.ndarray) -> None:
        """images: (batch, H, W, 3) uint8 for images [start, start + batch)."""
        n = images.shape[0]
        self._put(self._zarr_write, self._array("images"), (slice(start, start + n),),
                  np.array(images, dtype=np.uint8, copy=True))

    def end_batch(self) -> None:
        """Queue the buffered batch of activations (every step must be there) for writing."""
        self._staging.wait()
        for name, (key, buf) in self._buffers.items():
            arr = self._array(f"acts/{name}/act")
            if len(self._filled[name]) != arr.shape[1]:
                raise RuntimeError(f"{name}: captured steps {sorted(self._filled[name])} of images from {self._start}; "
                                   f"expected all {arr.shape[1]} steps")
            batch, compressor = arr.shards[0], self._compressors[name]
            if compressor is not False and buf.shape[1] == batch and self._start % batch == 0:
                self._put(write_shard, self._fs, self._store_root, arr, self._start // batch, buf, compressor,
                          recycle=(key, buf))
            else:  # an edge batch, or a layout shardfile does not know
                self._put(self._zarr_write, arr, (slice(self._start, self._start + buf.shape[1]),),
                          buf.swapaxes(0, 1), recycle=(key, buf))
        # queued buffers now belong to the writer threads, which return them to the pool once written
        self._buffers, self._filled, self._start = {}, {}, None

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
        write_atomic(self.output, f"shards/{shard:06d}.json", json.dumps(record, indent=1).encode())
        fs, root = _fs(self.output)
        failed = posixpath.join(root, f"shards/{shard:06d}.failed.json")
        if fs.exists(failed):
            fs.rm_file(failed)


def mark_failed(output: str, shard: int, record: dict) -> None:
    write_atomic(output, f"shards/{shard:06d}.failed.json", json.dumps(record, indent=1).encode())


def _shard_records(output: str, suffix: str) -> dict[int, dict]:
    fs, root = _fs(output)
    base = posixpath.join(root, "shards")
    try:
        names = fs.ls(base, detail=False)
    except FileNotFoundError:
        return {}
    out = {}
    for path in names:
        name = posixpath.basename(path)
        stem = name[:-len(suffix)]
        if name.endswith(suffix) and stem.isdigit():
            out[int(stem)] = json.loads(fs.cat_file(path))
    return out


def completion_records(output: str) -> dict[int, dict]:
    """{shard: record} for the shards whose data is complete and may be read."""
    return _shard_records(output, ".json")


def failure_records(output: str) -> dict[int, dict]:
    return _shard_records(output, ".failed.json")


def shard_states(output: str) -> list[str]:
    """State per shard: "complete", "failed" (all attempts failed) or "pending" (not done, possibly partly written)."""
    n = _manifest_rows(output)
    cfg = load_run_config(output)
    done, failed = completion_records(output), failure_records(output)
    return [_state(s, done, failed) for s in range(len(shard_ranges(n, cfg.shard_size)))]


def _state(shard: int, done, failed) -> str:
    return "complete" if shard in done else "failed" if shard in failed else "pending"


# ---------------------------------------------------------------- manifest


def _manifest_path(output: str) -> str:
    return posixpath.join(_fs(output)[1], "manifest.parquet")


def _manifest_rows(output: str) -> int:
    return pq.read_metadata(_manifest_path(output), filesystem=_fs(output)[0]).num_rows


def write_manifest(output: str, plan: Plan, shard_size: int, done: dict[int, dict] | set[int], failed: set[int]) -> None:
    """Rewrite manifest.parquet atomically: image, prompt, seed, split, shard, status (complete/failed/pending)."""
    shard = [i // shard_size for i in range(len(plan))]
    status = [_state(s, done, failed) for s in shard]
    table = pa.table({
        "image": pa.array(range(len(plan)), pa.int64()),
        "prompt": pa.array(plan.prompts, pa.string()),
        "seed": pa.array(plan.seeds, pa.int64()),
        "split": pa.array(plan.splits, pa.string()),
        "shard": pa.array(shard, pa.int32()),
        "status": pa.array(status, pa.string()),
    })
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_atomic(output, "manifest.parquet", sink.getvalue().to_pybytes())


def bytes_on_disk(output: str) -> int:
    fs, root = _fs(output)
    return int(fs.du(root, total=True))


def read_manifest(output: str) -> pa.Table:
    return pq.read_table(_manifest_path(output), filesystem=_fs(output)[0])
