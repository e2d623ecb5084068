"""The label stage: pseudo-labels for every finished image, stored beside the activations.

Labels live in the run's Zarr store as `labels/<target>` float32 with the labeler's name and version as attributes:
`(image, y, x)` at image resolution for saliency and depth; `(image, y, x, 3)` unit normals (zero where the labeler
sees no surface) for normals, with `labels/normals_valid` `(image, y, x)` bool, the pixels that have one; `(image, 3)`
unit directions for the light. On the toy model the stage also scores each labeler against exact truth
(`workflows.stages.ceilings`). Work goes shard by shard (a shard's images exist only once its completion
record does); `label_records/<target>/<shard>.json` is written after each shard's labels, so a killed stage resumes
where it stopped and parallel tasks never write the same file. A store labelled by one labeler version is never silently mixed with another.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TextIO

import numpy as np
from zarr.errors import ContainsArrayError

from ldm.errors import UserError
from ldm.labelers import LOADERS, Labeler
from workflows.config import TARGETS, RunConfig
from workflows.stages.ceilings import ceiling_run
from workflows.stages.image_source import TruthLabeler, label_sources
from workflows.store import (Records, completion_records, load_run_config, open_store, require_run, shard_ranges,
                             take_images)
from workflows.store.paths import label_mask, label_records, labels, shard_key
from workflows.store.run_store import checksummed

MASKED = ("normals",)  # targets stored with a valid-pixel mask (`label_mask`)


def load_labeler(target: str, kind: str = "toy", checkpoint: str | None = None, device: str = "cpu",
                 trust_remote_code: bool = False) -> Labeler:
    """The labeler for `target` (one of TARGETS)."""
    if target not in TARGETS:
        raise UserError(f"unknown label target {target!r}; choose one of {', '.join(TARGETS)}")
    return LOADERS[target](kind, checkpoint=checkpoint, device=device, trust_remote_code=trust_remote_code)


def check_run_labelers(cfg: RunConfig) -> dict[str, str]:
    """Every probe target has the truth of an image source or a labeler that can label this model's images
    (`image_source.label_sources`, `ldm.labelers.check_labelers`): one `error:` line before any work starts.
    Returns {target: "truth" or "labeler"}."""
    return label_sources(cfg)


def labelled_shards(output: str, target: str) -> set[int]:
    return {int(key) for key in Records(output, label_records(target)).done()}


def label_shape(target: str, n: int, height: int, width: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The shape and dimension names of `labels/<target>` for n images of (height, width)."""
    if target == "normals":
        return (n, height, width, 3), ("image", "y", "x", "xyz")
    if target == "light":
        return (n, 3), ("image", "xyz")
    return (n, height, width), ("image", "y", "x")


def _label_array(root, target: str, labeler: Labeler, n: int, height: int, width: int, chunk: int, compression: str):
    """`labels/<target>` (and its mask), created by whichever of the stage's parallel tasks comes first: creation is
    never an exists-then-create check, which two tasks can both pass (the second then failed, or wiped the first's
    mask); a task that finds the array made checks it came from the same labeler."""
    shape, dims = label_shape(target, n, height, width)
    attrs = {"labeler": labeler.name, "version": labeler.version}
    if target in MASKED:  # first: the labels array's existence says both exist (one left by a crash is reused)
        _create_or_open(root, label_mask(target), shape=(n, height, width), chunks=(chunk, height, width),
                        dtype="bool", fill_value=False, dimension_names=("image", "y", "x"), attributes=attrs,
                        compressors=checksummed(compression))
    arr = _create_or_open(root, labels(target), shape=shape, chunks=(chunk, *shape[1:]), dtype="float32",
                          fill_value=np.nan, dimension_names=dims, attributes=attrs,
                          compressors=checksummed(compression))
    stored = arr.attrs.get("version")
    if stored != labeler.version:
        raise UserError(
            f"labels/{target} was made by {arr.attrs.get('labeler')} {stored}, not {labeler.name} "
            f"{labeler.version}; use the same labeler, or a new run to relabel"
        )
    return arr


def _create_or_open(root, path: str, **spec):
    try:
        return root.create_array(path, **spec)
    except ContainsArrayError:  # another task made it
        return root[path]


def label_shards(output: str, target: str, labeler: Labeler | TruthLabeler, shards: Sequence[int] | None = None,
                 on_shard: Callable[[int, int], None] | None = None) -> list[int]:
    """Label the complete, not yet labelled shards (or just `shards`); returns the shards labelled now.

    on_shard(shard, n_images) is called after each shard is stored (progress).
    """
    cfg = load_run_config(output)
    root = open_store(output, mode="r+")
    images = root["images"]
    n, height, width = images.shape[:3]
    array = _label_array(root, target, labeler, n, height, width, cfg.shard_size, cfg.compression)
    ranges = shard_ranges(n, cfg.shard_size)
    ready = set(completion_records(output)) - labelled_shards(output, target)
    todo = sorted(ready if shards is None else ready & set(shards))
    for shard in todo:
        start, stop = ranges[shard]
        # an image source's truth is read by image index; a labeler reads the pixels
        out = labeler.label_range(start, stop) if isinstance(labeler, TruthLabeler) else labeler(images[start:stop])
        if target in MASKED:  # the pixels with a label: a labeler marks the others with the zero vector
            root[label_mask(target)][start:stop] = np.linalg.norm(out, axis=-1) > 0
        array[start:stop] = out
        record = {"shard": shard, "labeler": labeler.name, "version": labeler.version}
        Records(output, label_records(target)).write(shard_key(shard), record)
        if on_shard:
            on_shard(shard, stop - start)
    return todo


def read_labels(output: str, target: str, images: np.ndarray | None = None, mask: bool = False) -> np.ndarray:
    """Labels float32 for `images` (indices; default all), of the target's shape (`label_shape`); `mask`: the
    valid-pixel mask `(image, H, W)` bool of a MASKED target instead. Raises naming any image without labels."""
    root = open_store(output)
    if labels(target) not in root:
        raise UserError(f"no {target} labels in {output}; run the label stage first (`sceneprobe label CONFIG`)")
    array = root[label_mask(target) if mask else labels(target)]
    index = np.arange(array.shape[0]) if images is None else np.asarray(images)
    cfg = load_run_config(output)
    done = labelled_shards(output, target)
    missing = [int(i) for i in index if int(i) // cfg.shard_size not in done]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise UserError(f"{len(missing)} images have no {target} labels (images {shown}); run the label stage")
    return take_images(array, index)


# label_many(target, todo) -> iterable of the shards labelled, batch by batch as they finish
LabelRunner = Callable[[str, list[int]], Iterable[list[int]]]


def labeler_spec(cfg: RunConfig, target: str) -> dict:
    """`load_labeler` arguments for `target` from the run config."""
    return {**dataclasses.asdict(getattr(cfg.labels, target)), "device": cfg.labels.device}


def label_run(cfg: RunConfig, label_many: LabelRunner | None = None, stream: TextIO | None = None) -> dict[str, int]:
    """Label every complete, unlabelled shard for each probe target; returns the shards labelled now per target.
    `label_many` executes the labelling (`workflows.ray.tasks.label_runner`); default: this process."""
    require_run(cfg, "label")
    sources = check_run_labelers(cfg)
    stream = stream or sys.stderr
    counts = {}
    for target in cfg.probes.targets:
        todo = sorted(set(completion_records(cfg.output)) - labelled_shards(cfg.output, target))
        start = time.monotonic()
        if sources[target] == "truth":  # a copy of the staged truth: cheap, in this process
            done = label_shards(cfg.output, target, TruthLabeler(cfg.output, target), todo)
        elif label_many is not None and todo:
            done = [s for batch in label_many(target, todo) for s in batch]
        else:
            done = label_shards(cfg.output, target, load_labeler(target, **labeler_spec(cfg, target)), todo)
        counts[target] = len(done)
        print(f"labels {target}: {len(done)} shards labelled in {time.monotonic() - start:.1f}s", file=stream, flush=True)
    ceiling_run(cfg, lambda target: load_labeler(target, **labeler_spec(cfg, target)), stream)
    return counts
