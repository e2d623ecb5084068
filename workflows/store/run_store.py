"""A run's store: creating it, the resume checks, reading what generation stored (plan, layout, config, shard
states, the manifest). The layout on disk is described in `workflows.store` (the package docstring)."""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
import zarr

from ldm.errors import UserError
from workflows.config import RunConfig, data_differences, dump_config, flatten, from_dict, to_dict
from workflows.store.files import filesystem, is_local, read_file, read_table, write_atomic, write_table
from workflows.store.act_dtype import STORED, decode
from workflows.store.paths import (CONFIG, IMAGES, LEASE, MANIFEST, SHARD_RECORDS, STORE, activation_scales, activations,
                                   shard_key)
from workflows.store.records import Records

FORMAT = 1  # the store format this code writes and reads (attrs["sceneprobe"]["format"])
FLOAT32_EXTRAS = ("latent", "x0")  # small and used for exact comparisons; attention outputs are stored as float16


class RunExistsError(UserError):
    """The output location already holds a run (the same one without --resume, or a different one), or is a file."""


class NoRunError(UserError):
    """The location holds no sceneprobe run (no config.yaml)."""


@dataclass
class Plan:
    """The run's items, in image-id order: image i is (prompts[i], seeds[i], splits[i]) (`workflows.stages.prompts`
    makes it; the store keeps it)."""

    prompts: list[str]
    seeds: list[int]
    splits: list[str]

    def __len__(self) -> int:
        return len(self.seeds)

    def count(self, split: str) -> int:
        return sum(s == split for s in self.splits)


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


def _zarr_store(output: str):
    fs, root = filesystem(output)
    if is_local(fs):
        return zarr.storage.LocalStore(posixpath.join(root, STORE))
    return zarr.storage.FsspecStore.from_url(output.rstrip("/") + "/" + STORE)


def shard_ranges(n_images: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) image ranges of the work shards, in order; the last one may be short."""
    return [(a, min(a + shard_size, n_images)) for a in range(0, n_images, shard_size)]


def stored_config(output: str) -> dict | None:
    data = read_file(output, CONFIG)
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
    fs, root = filesystem(cfg.output)
    if fs.isfile(root):
        raise RunExistsError(f"output {cfg.output!r} is a file; give a folder (new or holding a run) instead")
    if fs.exists(root) and [p for p in fs.ls(root, detail=False) if posixpath.basename(p) != LEASE]:
        attrs = read_file(cfg.output, f"{STORE}/zarr.json")
        # A store whose creation was interrupted (no config.yaml yet) is ours to recreate; anything else is not.
        if attrs is None or "sceneprobe" not in json.loads(attrs).get("attributes", {}):
            raise RunExistsError(f"output {cfg.output!r} exists and is not a sceneprobe run; refusing to write there")
    return False


# `compression` -> the codec of every image and activation chunk (docs/store.md, "Compression": lz4 with bit-shuffle
# stores the toy run's fp16 activations at 0.88 of raw at 1.1 GB/s per core, zstd-1 at 0.92 and 0.9 GB/s)
COMPRESSORS = {
    "lz4": lambda: (zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),),
    "zstd": lambda: (zarr.codecs.ZstdCodec(level=1),),
    "none": lambda: (),
}


def checksummed(compression: str) -> tuple:
    """The byte codecs of a chunk: the run's compression, then a CRC32C of the stored bytes (a flipped byte is a
    checksum error naming the array and images, never data: `take_images`)."""
    return (*COMPRESSORS[compression](), zarr.codecs.Crc32cCodec())


def create_store(cfg: RunConfig, plan: Plan, layout: Layout) -> None:
    """Create every array (filled lazily: unwritten chunks read as NaN/0), the manifest, then config.yaml last."""
    n, b, steps = len(plan), cfg.batch_size, layout.steps
    compressors = checksummed(cfg.compression)
    meta = {"config": to_dict(cfg), "layout": layout.to_json(), "format": FORMAT}
    root = zarr.open_group(_zarr_store(cfg.output), mode="w", attributes={"sceneprobe": meta})
    h, w = layout.image
    root.create_array(IMAGES, shape=(n, h, w, 3), chunks=(b, h, w, 3), dtype="uint8", fill_value=0,
                      dimension_names=("image", "y", "x", "rgb"), compressors=compressors)
    for name, (ah, aw, ac) in layout.acts.items():
        act_dtype = "float32" if name in FLOAT32_EXTRAS else cfg.act_dtype  # the extras stay float32
        dtype = STORED.get(act_dtype, act_dtype)
        # Zarr shard = one batch, all steps (one file, written once); inner chunk = one step (one contiguous read).
        root.create_array(activations(name), shape=(n, steps, ah, aw, ac), shards=(b, steps, ah, aw, ac),
                          chunks=(b, 1, ah, aw, ac), dtype=dtype, fill_value=np.nan if dtype.startswith("float") else 0,
                          dimension_names=("image", "step", "h", "w", "c"), compressors=compressors,
                          attributes={"hook": name, "act_dtype": act_dtype})
        if act_dtype == "float8_e4m3":
            root.create_array(activation_scales(name), shape=(n, steps, ac), chunks=(b, steps, ac), dtype="float32",
                              fill_value=np.nan, dimension_names=("image", "step", "c"), compressors=compressors)
    shard = np.arange(n, dtype=np.int32) // cfg.shard_size
    for name, values, dtype in (("prompt", np.array(plan.prompts, dtype=object), str),
                                ("seed", np.array(plan.seeds, dtype=np.int64), "int64"),
                                ("split", np.array(plan.splits, dtype=object), str),
                                ("shard", shard, "int32")):
        arr = root.create_array(name, shape=(n,), chunks=(n,), dtype=dtype, dimension_names=("image",))
        arr[:] = values
    write_manifest(cfg.output, plan, cfg.shard_size, {}, set())
    write_atomic(cfg.output, CONFIG, dump_config(cfg).encode())


def open_store(output: str, mode: str = "r") -> zarr.Group:
    """The run's Zarr group, read-only by default. Only images of complete shards are valid (see `complete_images`).

    Later stages open it with mode="r+" to add their arrays (labels) beside the activations."""
    return zarr.open_group(_zarr_store(output), mode=mode)


class DamagedChunkError(UserError):
    """A stored chunk failed its CRC32C: its bytes changed after they were written."""


def is_checksum_error(err: Exception) -> bool:
    return isinstance(err, ValueError) and "checksum do not match" in str(err)


def take_images(array: zarr.Array, images: np.ndarray, *index: Any) -> np.ndarray:
    """`array[images, *index]` for integer image indices along the first axis: one contiguous read of the range they
    span when they fill at least half of it, Zarr's orthogonal selection otherwise (with an index array it read the
    toy grid's activations 3x slower than a slice of the same chunks). A chunk whose checksum fails is a
    `DamagedChunkError` naming the array and the images, never data."""
    images = np.asarray(images, np.int64)
    try:
        if len(images) == 0:
            return array.get_orthogonal_selection((images, *index))
        lo, hi = int(images.min()), int(images.max()) + 1
        if hi - lo > 2 * len(images):
            return array.get_orthogonal_selection((images, *index))
        block = np.asarray(array[(slice(lo, hi), *index)])
    except ValueError as err:
        if not is_checksum_error(err):
            raise
        raise DamagedChunkError(f"{array.path}: a stored chunk of images {int(images.min())}-{int(images.max())} is "
                                "damaged (its checksum does not match); run `sceneprobe verify RUN` to find every "
                                "damaged shard, then `--resume` to regenerate them") from None
    return block if np.array_equal(images, np.arange(lo, hi)) else block[images - lo]


def read_acts(root: zarr.Group, hook: str, images: np.ndarray, step: int) -> np.ndarray:
    """Activations `(image, h, w, c)` of `hook` at `step` for the given images, whatever the run's `act_dtype`
    (`act_dtype.decode`: float16 for float16 runs, float32 otherwise and for the float32 extras)."""
    array = root[activations(hook)]
    stored = take_images(array, images, step)
    dtype = array.attrs.get("act_dtype", str(array.dtype))
    if dtype not in STORED or dtype == "float16":
        return stored
    scale = take_images(root[activation_scales(hook)], images, step) if dtype == "float8_e4m3" else None
    return decode(stored, dtype, scale)


def complete_images(output: str) -> np.ndarray:
    """Boolean mask over images: True where the image's shard has its completion record."""
    shard_of = np.arange(_manifest_rows(output)) // load_run_config(output).shard_size
    return np.isin(shard_of, list(completion_records(output)))


def load_plan(output: str) -> Plan:
    """The stored plan (from manifest.parquet): a resumed run uses exactly these items and splits."""
    t = read_manifest(output)
    return Plan(t["prompt"].to_pylist(), t["seed"].to_pylist(), t["split"].to_pylist())


def load_layout(output: str) -> Layout:
    meta = open_store(output).attrs["sceneprobe"]
    if meta.get("format") != FORMAT:
        raise UserError(f"{output!r} was written in store format {meta.get('format')!r}; this sceneprobe reads format "
                        f"{FORMAT} only: regenerate the run with this version")
    return Layout.from_json(meta["layout"])


def load_run_config(output: str) -> RunConfig:
    stored = stored_config(output)
    if stored is None:
        raise NoRunError(f"{output!r} holds no sceneprobe run (no config.yaml); make one with "
                         "`sceneprobe run CONFIG`, or give the output location of a run")
    return from_dict(stored)


def shard_records(output: str) -> Records:
    return Records(output, SHARD_RECORDS)


def mark_failed(output: str, shard: int, record: dict) -> None:
    shard_records(output).fail(shard_key(shard), record)


def completion_records(output: str) -> dict[int, dict]:
    """{shard: record} for the shards whose data is complete and may be read."""
    return {int(k): v for k, v in shard_records(output).done().items()}


def failure_records(output: str) -> dict[int, dict]:
    return {int(k): v for k, v in shard_records(output).failed().items()}


def shard_states(output: str) -> list[str]:
    """State per shard: "complete", "failed" (all attempts failed) or "pending" (not done, possibly partly written)."""
    n = _manifest_rows(output)
    cfg = load_run_config(output)
    done, failed = completion_records(output), failure_records(output)
    return [_state(s, done, failed) for s in range(len(shard_ranges(n, cfg.shard_size)))]


def _state(shard: int, done, failed) -> str:
    return "complete" if shard in done else "failed" if shard in failed else "pending"


# ---------------------------------------------------------------- manifest


def _manifest_rows(output: str) -> int:
    fs, root = filesystem(output)
    return pq.read_metadata(posixpath.join(root, MANIFEST), filesystem=fs).num_rows


def write_manifest(output: str, plan: Plan, shard_size: int, done: dict[int, dict] | set[int], failed: set[int]) -> None:
    """Rewrite manifest.parquet atomically: image, prompt, seed, split, shard, status (complete/failed/pending)."""
    shard = [i // shard_size for i in range(len(plan))]
    status = [_state(s, done, failed) for s in shard]
    write_table(output, MANIFEST, pa.table({
        "image": pa.array(range(len(plan)), pa.int64()),
        "prompt": pa.array(plan.prompts, pa.string()),
        "seed": pa.array(plan.seeds, pa.int64()),
        "split": pa.array(plan.splits, pa.string()),
        "shard": pa.array(shard, pa.int32()),
        "status": pa.array(status, pa.string()),
    }))


def read_manifest(output: str) -> pa.Table:
    table = read_table(output, MANIFEST)
    if table is None:
        raise NoRunError(f"{output!r} holds no manifest.parquet; it is not a generated run")
    return table
