"""Image sources: the run's inputs under the noised-image protocol (`prompts.source: toy-renders | images`).

Instead of generating, the model is run on given images (`ldm.noised`): toy-world renders with their exact truth,
or a user's images with optional label files (`workflows.stages.image_files`). Everything else is the generate
stage's: the plan (`source_plan`: one item per image, train first; seeds `first_seed + i`, noise seeds of the
protocol), shards, actors, resume, the manifest. What differs:

* `check_source` reads and validates every image and label file before anything starts (one `error:` line each);
* `stage_inputs` writes the images to `inputs/images` and the truth to `inputs/truth/<target>` once the store
  exists, then `input_records/staged.json` (a resumed run whose staging was cut short stages again); a shard reads
  its images from there (`shard_images`), runs the protocol and writes them to `images` like generated ones, so
  readers see an image only once its shard is complete;
* the label stage copies the truth into `labels/<target>` (`TruthLabeler`) for the targets `label_sources` assigns
  to the truth; the others get the labelers, which on toy renders are the toy-world labelers whatever the model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ldm.errors import UserError
from ldm.labelers import check_labelers
from workflows.config import IMAGE_SOURCES, TARGETS, ConfigError, RunConfig
from workflows.stages.image_files import Item, image_size, list_items, read_image, read_label
from workflows.stages.prompts import PromptsError, build_plan, check_prompts, hash_split
from workflows.store import Plan, Records, open_store
from workflows.store.paths import INPUT_IMAGES, INPUT_RECORDS, truth
from workflows.store.run_store import checksummed

STAGED = "staged"  # the key of the staging record
TOY_TRUTH = TARGETS  # the renderer's exact truth covers every target
RENDER_VERSION = "toy-render@1"  # the truth labels' version on toy renders (the renderer is deterministic per seed)


def is_image_source(cfg: RunConfig) -> bool:
    return cfg.prompts.source in IMAGE_SOURCES


def run_size(cfg: RunConfig) -> tuple[int, int]:
    """(height, width) the model runs at, from its configs alone (no weights)."""
    if cfg.backend == "ldm":
        from ldm.architecture import image_size as model_image_size

        return tuple(model_image_size(cfg.model, cfg.height, cfg.width)[:2])
    if cfg.height is None or cfg.width is None:
        raise ConfigError(f"backend {cfg.backend}: an image source needs height and width")
    return cfg.height, cfg.width


def _toy_seeds(cfg: RunConfig) -> tuple[list[int], list[str]]:
    from ldm.toy.render import HELD_OUT_SEED  # the toy plan's convention: scene seeds >= 1e6 are held out

    n = cfg.num_images
    n_test = round(n * cfg.test_fraction)
    first = cfg.prompts.first_seed
    seeds = [first + i for i in range(n - n_test)] + [HELD_OUT_SEED + first + i for i in range(n_test)]
    return seeds, ["train"] * (n - n_test) + ["test"] * n_test


def _renders(seeds: list[int], size: tuple[int, int]):
    from ldm.toy.render import MAX_SIZE, MIN_SIZE, render_batch

    if size[0] != size[1] or not MIN_SIZE <= size[0] <= MAX_SIZE:
        raise ConfigError(f"toy renders are square, {MIN_SIZE} to {MAX_SIZE} px; the model runs at "
                          f"{size[0]}x{size[1]}: set height and width to one size in that range")
    return render_batch(seeds, size=size[0])


def _ordered_items(cfg: RunConfig) -> list[tuple[Item, int, str]]:
    """The user's items as (item, seed, split), train first, each in name order; a `num_images` cap keeps the
    split proportions. Seeds come from the name order, so an image's seed does not depend on the split."""
    items = list_items(cfg)
    tagged = [(it, cfg.prompts.first_seed + i, it.split or hash_split(it.name, 0, cfg.test_fraction))
              for i, it in enumerate(items)]
    by_split = {s: [t for t in tagged if t[2] == s] for s in ("train", "test")}
    if cfg.num_images is not None and cfg.num_images < len(tagged):
        n_test = round(cfg.num_images * len(by_split["test"]) / len(tagged))
        by_split = {"train": by_split["train"][:cfg.num_images - n_test], "test": by_split["test"][:n_test]}
    return by_split["train"] + by_split["test"]


def source_plan(cfg: RunConfig) -> Plan:
    """The run's (prompt, seed, split) items: the prompt is the caption the denoiser is conditioned on ("" under
    `prompts.caption: empty`), the seed the image's noise seed."""
    empty = cfg.prompts.caption == "empty"
    if cfg.prompts.source == "toy-renders":
        seeds, splits = _toy_seeds(cfg)
        captions = [] if empty else [c for i in range(0, len(seeds), 256)
                                     for c in _renders(seeds[i:i + 256], run_size(cfg)).captions]
        return Plan([""] * len(seeds) if empty else captions, seeds, splits)
    chosen = _ordered_items(cfg)
    return Plan(["" if empty else it.caption for it, _, _ in chosen], [s for _, s, _ in chosen],
                [sp for _, _, sp in chosen])


def run_plan(cfg: RunConfig) -> Plan:
    """The plan of any run: an image source's (`source_plan`) or the prompts' (`prompts.build_plan`)."""
    return source_plan(cfg) if is_image_source(cfg) else build_plan(cfg)


def check_run_inputs(cfg: RunConfig) -> None:
    """A new run's prompts or image set, read and checked before anything starts."""
    check_prompts(cfg)
    check_source(cfg)


def truth_targets(cfg: RunConfig, items: list[Item] | None = None) -> tuple[str, ...]:
    """The targets the source has exact labels for: every one on toy renders; on a user's images those with a
    label file for every image (some but not all: refused, naming the images without)."""
    if cfg.prompts.source == "toy-renders":
        return TOY_TRUTH
    items = [it for it, _, _ in _ordered_items(cfg)] if items is None else items
    found = []
    for target in TARGETS:
        missing = [it.name for it in items if target not in it.labels]
        if len(missing) == len(items):
            continue
        if missing:
            raise PromptsError(f"{target} labels are given for {len(items) - len(missing)} of {len(items)} images; "
                               f"missing for {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}: give one "
                               "for every image, or none")
        found.append(target)
    return tuple(found)


def label_sources(cfg: RunConfig) -> dict[str, str]:
    """{probe target: "truth" or "labeler"} by `labels.source`; refuses a target with neither, and checks the
    labelers (toy renders are toy-world images: the toy labelers read them whatever the model)."""
    source = cfg.labels.source
    have: tuple[str, ...] | list[str] = ()
    if is_image_source(cfg) and source != "labelers":
        record = staged(cfg.output)  # a run's staged truth, once it exists; before, what the source has
        have = record["truth"] if record is not None else truth_targets(cfg)
    if source == "truth":
        lacking = [t for t in cfg.probes.targets if t not in have]
        if lacking:
            raise UserError(f"labels.source: truth, but prompts.source {cfg.prompts.source} has no {', '.join(lacking)} "
                            f"truth (it has: {', '.join(have) or 'none'}); give label files for them, use "
                            "labels.source auto, or drop them from probes.targets")
    chosen = {t: "truth" if t in have else "labeler" for t in cfg.probes.targets}
    check_labelers(cfg.model, {t: getattr(cfg.labels, t).kind for t, how in chosen.items() if how == "labeler"},
                   toy_world=cfg.prompts.source == "toy-renders")
    return chosen


def check_source(cfg: RunConfig) -> None:
    """Read and check every image and label file of a user's image set (a toy render set has nothing to refuse):
    sizes equal to each other (the first that differs is named: images are never resized) and to the run's, labels
    shaped like their images, finite, unit normals and light."""
    if cfg.prompts.source != "images":
        return
    items = [it for it, _, _ in _ordered_items(cfg)]
    size = image_size(items[0])
    for it in items[1:]:
        if image_size(it) != size:
            raise PromptsError(f"image {it.name} is {image_size(it)[0]}x{image_size(it)[1]} (height x width), but "
                               f"{items[0].name} is {size[0]}x{size[1]}: images are not resized; give one size")
    want = run_size(cfg)
    if size != want:
        raise PromptsError(f"the images are {size[0]}x{size[1]} but {cfg.model!r} runs at {want[0]}x{want[1]}: set "
                           f"height: {size[0]} and width: {size[1]} (multiples of 8), or resize the images")
    for target in truth_targets(cfg, items):
        for it in items:
            read_label(target, it, *size, cfg.prompts.depth_files)


def _truth_arrays(cfg: RunConfig, plan: Plan, start: int, stop: int, size: tuple[int, int],
                  chosen: list[tuple[Item, int, str]] | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Images uint8 `(image, H, W, 3)` and truth {target: array} of plan items [start, stop)."""
    if chosen is None:  # toy renders
        r = _renders(plan.seeds[start:stop], size)
        inverse = 1.0 / r.depth.astype(np.float64)  # (image, H, W): the labelers' relative inverse depth convention
        flat = inverse.reshape(len(inverse), -1)
        depth = (inverse - flat.mean(1)[:, None, None]) / np.maximum(flat.std(1), 1e-12)[:, None, None]
        return r.rgb, {"depth": depth.astype(np.float32), "saliency": r.salient.astype(np.float32),
                       "normals": r.normals, "light": r.light_direction}
    items = [it for it, _, _ in chosen[start:stop]]
    images = np.stack([read_image(it) for it in items])
    targets = truth_targets(cfg, [it for it, _, _ in chosen])
    return images, {t: np.stack([read_label(t, it, *size, cfg.prompts.depth_files) for it in items]) for t in targets}


def staged(output: str) -> dict | None:
    return Records(output, INPUT_RECORDS).done().get(STAGED)


def stage_inputs(cfg: RunConfig, plan: Plan, image: tuple[int, int]) -> dict:
    """Write the inputs and their truth into the run's store (the module docstring); returns the staging record.
    Truth is left out of a control variant's store (its activations are probed against the run's labels)."""
    root = open_store(cfg.output, mode="r+")
    n, (h, w), chunk = len(plan), image, cfg.batch_size
    comp = checksummed(cfg.compression)
    chosen = _ordered_items(cfg) if cfg.prompts.source == "images" else None
    arrays = {}
    digest = hashlib.sha256()
    for start in range(0, n, cfg.shard_size):
        stop = min(start + cfg.shard_size, n)
        images, truths = _truth_arrays(cfg, plan, start, stop, (h, w), chosen)
        if images.shape[1:3] != (h, w):
            raise PromptsError(f"the images are {images.shape[1]}x{images.shape[2]}, the model runs at {h}x{w}: set "
                               f"height and width to the images' size")
        if not arrays:
            arrays["images"] = root.create_array(INPUT_IMAGES, shape=(n, h, w, 3), chunks=(chunk, h, w, 3),
                                                 dtype="uint8", fill_value=0, compressors=comp, overwrite=True,
                                                 dimension_names=("image", "y", "x", "rgb"))
            for target in ([] if cfg.permute_seed is not None else truths):
                shape = (n, *truths[target].shape[1:])  # like labels/<target> (`labels.label_shape`)
                dims = {2: ("image", "xyz"), 4: ("image", "y", "x", "xyz")}.get(len(shape), ("image", "y", "x"))
                arrays[target] = root.create_array(truth(target), shape=shape, chunks=(chunk, *shape[1:]),
                                                   dtype="float32", fill_value=np.nan, compressors=comp,
                                                   dimension_names=dims, overwrite=True)
        arrays["images"][start:stop] = images
        digest.update(np.ascontiguousarray(images).tobytes())
        for target, values in truths.items():
            if target in arrays:
                arrays[target][start:stop] = values
                digest.update(np.ascontiguousarray(values).tobytes())
    names = ([f"render {s}" for s in plan.seeds] if chosen is None else [it.name for it, _, _ in chosen])
    record = {"source": cfg.prompts.source, "images": n, "names": names, "truth": [t for t in arrays if t != "images"],
              "sha256": digest.hexdigest()}
    Records(cfg.output, INPUT_RECORDS).write(STAGED, record)
    return record


def shard_images(output: str, start: int, stop: int) -> np.ndarray:
    """The staged input images [start, stop): uint8 `(image, H, W, 3)`."""
    return open_store(output)[INPUT_IMAGES][start:stop]


@dataclass
class TruthLabeler:
    """The label stage's stand-in for a labeler on an image-source run: copies the staged truth. `name` and `version`
    are stored with the labels like a labeler's (a store is never labelled by two sources)."""

    output: str
    target: str
    name: str = "truth"
    version: str = ""

    def __post_init__(self) -> None:
        record = staged(self.output)
        if record is None or self.target not in record["truth"]:
            raise UserError(f"{self.output} holds no {self.target} truth; run the generate stage first")
        self.version = RENDER_VERSION if record["source"] == "toy-renders" else f"images@{record['sha256'][:12]}"

    def label_range(self, start: int, stop: int) -> np.ndarray:
        return open_store(self.output)[truth(self.target)][start:stop]


def refuse_edits(cfg: RunConfig, command: str) -> None:
    """`intervene` and `patch` edit a generation and regenerate it: an image-source run has none."""
    if is_image_source(cfg):
        raise ConfigError(f"{command} needs images the model generated (it edits a generation and regenerates it), "
                          f"but prompts.source is {cfg.prompts.source}; run it on a generated run (prompts.source toy "
                          "or file)")


__all__ = ["TruthLabeler", "check_run_inputs", "check_source", "run_plan", "is_image_source", "label_sources", "refuse_edits", "shard_images",
           "source_plan", "stage_inputs", "staged"]
