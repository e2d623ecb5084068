"""The unit of work of the interventions stage: all targets of one image for one (task, method, strength), and what
it is made from.

For each image and task, `TargetSpec.count` targets (the image's own label translated, `probes.targets`) are rendered
in one batch with the image's prompt and seed. At the chosen (hook, step) pairs the conditional half of the activation
is replaced by an edited one (`workflows.stages.edits`), by one of three methods (`probes.edits`):

* `paper`: Adam on the activation itself (lr 5e-3, 128 iterations) until the probe reads the target;
* `closed-form`: the smallest per-position edit that makes the linear probe read the target exactly;
* `random`: at each position a move of the same L2 norm as the closed-form (or paper) edit, in a random direction.

The edited images are re-labelled with the labeler the probes were trained on and scored: saliency Dice(new mask,
target) against Dice(original mask, target); depth RMSE(new depth, target) against RMSE(original depth, target), in
the probes' standardised depth units. `run_unit` is a plain function: the stage runs it in this process or on an
actor pool (`workflows.ray.interventions`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ldm.errors import UserError
from probes.linear import LinearProbe
from probes.integrity import background_distance, feature_distance, moved_region, object_distance
from probes.metrics import DepthScaler
from probes.targets import draw_translations, make_targets
from workflows.config import CAUSAL, EXTRAS, InterventionConfig, default_hooks
from workflows.stages.edits import METRIC, EditStats, ProbeTable, run_edits, score, standardise
from workflows.stages.grid import load_probe, prepare_grid_data, read_metrics
from workflows.stages.labels import load_labeler
from workflows.store import load_layout, load_plan, load_run_config, open_store, take_images
from workflows.store.paths import CALIBRATION, IMAGES, edited_images, labels

REFERENCE_SEED_OFFSET = 7919  # the seed-reference image of a unit: same prompt, seed + this, no edit


@dataclass
class Unit:
    """All targets of one image for one task, method and strength: one batched generation, one record. Test images
    are the stage's results; training images (`calibration`) only choose the strength, and their images are not kept."""
    task: str
    method: str
    image: int
    prompt: str
    seed: int
    label: np.ndarray  # (H, W) the image's own label in the probes' units (0/1 mask, or standardised depth)
    translations: np.ndarray  # (target, 2) tx, ty in pixels
    unedited: np.ndarray  # (H, W, 3) uint8: the image as the run generated it (same prompt and seed, no edit)
    strength: float = 1.0
    calibration: bool = False

    @property
    def key(self) -> str:
        if self.calibration:
            return f"{CALIBRATION}/{self.task}/{self.method}/x{self.strength:g}/{self.image:06d}"
        return f"{self.task}/{self.method}/{self.image:06d}"


@dataclass
class Worker:
    """What a unit needs: the model, the probes per task, the labelers per task, the depth scaler, the config, and
    where edited images go (`sink(unit, images)`, e.g. the Zarr store)."""

    model: object
    probes: dict[str, ProbeTable]
    labelers: dict[str, Callable[[np.ndarray], np.ndarray]]
    scaler: DepthScaler | None
    cfg: InterventionConfig
    hooks: dict[str, list[str]]
    sink: Callable[[Unit, np.ndarray], None] | None = None
    # (images, masks, caption) -> (n,) 1.0 where the caption's colour is read inside the mask (toy world), else None
    colour_check: Callable[[np.ndarray, np.ndarray, str], np.ndarray] | None = None
    # (prompt, seed) -> `seed_reference`: every unit of an image (each task, method and strength) compares with the
    # same redraw, so it is made once per worker (about 1 MB per image at 512 px)
    references: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict,
                                                                                       repr=False)


def run_unit(worker: Worker, unit: Unit) -> list[dict]:
    """Edit, generate, re-label and score every target of `unit`, and measure whether each edited image stayed
    intact (`integrity`); returns one row per target (docs/CONTRACTS.md, interventions/metrics.parquet)."""
    cfg, task = worker.cfg, unit.task
    original = np.asarray(unit.label, np.float32)
    targets = make_targets(original, unit.translations, task)
    stats = EditStats(norm=np.zeros(len(targets)))
    start = time.perf_counter()
    settings = cfg.edit_settings(task, worker.hooks[task], unit.strength)
    images = run_edits(worker.model, worker.probes[task], unit.method, targets, unit.prompt, unit.seed, task, settings,
                       image=unit.image, stats=stats)
    seconds = time.perf_counter() - start
    new = standardise(task, worker.labelers[task](images), worker.scaler)
    scores = {**score(task, new, original, targets), **integrity(worker, unit, images, original, targets, new)}
    if worker.sink is not None and not unit.calibration:
        worker.sink(unit, images)
    n = len(targets)
    return [{"image": unit.image, "seed": int(unit.seed), "prompt": unit.prompt, "target_index": k, "task": task,
             "method": unit.method, "metric": METRIC[task], "strength": unit.strength,
             "tx": int(unit.translations[k, 0]), "ty": int(unit.translations[k, 1]),
             **{name: float(v[k]) for name, v in scores.items()},
             "edit_norm": float(stats.norm[k]), "edit_seconds": stats.seconds / n, "seconds": seconds / n}
            for k in range(n)]


def integrity(worker: Worker, unit: Unit, images: np.ndarray, original: np.ndarray, targets: np.ndarray,
              new: np.ndarray) -> dict[str, np.ndarray]:
    """Per target, how much of the picture the edit kept (`probes.integrity`), next to its scale: the same background
    distances for an unedited image of the same prompt with another seed (`REFERENCE_SEED_OFFSET`), generated here.
    The object is compared where it is: inside the original mask before, inside the edited image's own (re-labelled)
    mask `new > 0.5` after, so a kept-but-unmoved object counts as kept, and a blob in its place does not."""
    n = len(targets)
    region = moved_region(original, targets, unit.task)
    redrawn, redrawn_latent, unedited_latent = seed_reference(worker, unit)
    latents = worker.model.encode(images)  # (n, h, w, c)
    out = {"background_rmse": background_distance(images, unit.unedited, region),
           "background_rmse_seed": background_distance(np.repeat(redrawn[None], n, 0), unit.unedited, region),
           "background_latent": feature_distance(latents, unedited_latent, region),
           "background_latent_seed": feature_distance(np.repeat(redrawn_latent[None], n, 0), unedited_latent, region),
           "object_distance": np.full(n, np.nan), "colour_kept": np.full(n, np.nan)}
    if unit.task == "saliency":  # the object: the salient mask before, the edited image's own mask after
        masks = np.asarray(new) > 0.5
        out["object_distance"] = object_distance(unit.unedited, original > 0.5, images, masks)
        if worker.colour_check is not None:
            out["colour_kept"] = worker.colour_check(images, masks, unit.prompt)
    return out


def seed_reference(worker: Worker, unit: Unit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(redrawn `(H, W, 3)`, its VAE latent `(h, w, c)`, the unedited image's latent) for `unit.image`: its prompt
    drawn with seed + `REFERENCE_SEED_OFFSET` and no edit. Made on the first unit of the (prompt, seed) that makes the
    image, then kept."""
    key = (unit.prompt, int(unit.seed))
    if key not in worker.references:
        redrawn = worker.model.generate([unit.prompt], [unit.seed + REFERENCE_SEED_OFFSET])[0]
        latents = worker.model.encode(np.stack([redrawn, unit.unedited]))
        worker.references[key] = (redrawn, latents[0], latents[1])
    return worker.references[key]


@dataclass
class StageInputs:
    """Everything the units of a stage are made from; labels are in the probes' units (`workflows.stages.grid_data.GridData`)."""
    test: np.ndarray  # (image,) test image ids
    prompts: list[str]
    seeds: list[int]
    labels: dict[str, np.ndarray]  # task -> (image, H, W) for the test images, in order
    train: np.ndarray  # (image,) the first `calibrate_images` training image ids (calibration only)
    train_prompts: list[str]
    train_seeds: list[int]
    train_labels: dict[str, np.ndarray]  # task -> (image, H, W) for `train`
    probes: dict[str, dict[tuple[str, int], LinearProbe]]
    hooks: dict[str, list[str]]
    scaler: DepthScaler | None
    n_images: int  # images in the run (the store arrays are indexed by run image id)
    size: tuple[int, int]


def check_probes(output: str, cfg: InterventionConfig, task: str, hooks: list[str]) -> None:
    """Fail early, naming the stage to run or the missing (hook, step) pairs and what exists."""
    table = read_metrics(output).to_pylist()  # raises naming the probe stage when there are none
    ok = {(r["hook"], r["step"]) for r in table
          if r["variant"] == cfg.variant and r["target"] == task and r["error"] is None}
    missing = [f"{h}@{s}" for h in hooks for s in cfg.steps(task) if (h, s) not in ok]
    if missing:
        have = sorted({s for _, s in ok})
        raise UserError(f"no fitted {cfg.variant} {task} probe for {', '.join(missing)} (hook@step); probed steps: "
                        f"{have or 'none'}. Fit them with the probe stage, or choose other {task}_hooks/_steps")


def gather_inputs(output: str, cfg: InterventionConfig) -> StageInputs:
    """Test images, their labels, the probes and hooks per task, from a run that has been labelled and probed."""
    run_cfg = load_run_config(output)
    plan = load_plan(output)
    if "test" not in plan.splits:
        raise UserError(f"{output!r} has an empty test split: interventions edit test images only; make a run with "
                        "test images (test_fraction > 0, or a test prompts file)")
    if CAUSAL in (cfg.hooks(t) for t in cfg.tasks):  # the map's layers and steps: workflows.stages.causal
        raise ValueError("hooks: causal must be resolved (workflows.stages.causal.resolve_causal) before the units")
    layout = load_layout(output)
    unet = [h for h in layout.acts if h not in EXTRAS]
    hooks = {t: list(unet if cfg.hooks(t) == "all" else cfg.hooks(t) or default_hooks(t, unet)) for t in cfg.tasks}
    for task in cfg.tasks:
        bad = [s for s in cfg.steps(task) if not 0 <= s < run_cfg.steps]
        if bad or not cfg.steps(task) or not hooks[task]:
            raise UserError(f"{task}: need hooks and steps within 0..{run_cfg.steps - 1}; got hooks "
                            f"{hooks[task]}, steps {cfg.steps(task)}")
        check_probes(output, cfg, task, hooks[task])
    data = prepare_grid_data(output, targets=tuple(cfg.tasks))
    test = data.test if cfg.max_images is None else data.test[: cfg.max_images]
    if len(test) == 0:
        raise UserError(f"{output!r} has no labelled test images to edit (max_images={cfg.max_images})")
    probes = {t: {(h, s): load_probe(output, cfg.variant, t, h, s) for h in hooks[t] for s in cfg.steps(t)}
              for t in cfg.tasks}
    train = data.train[: cfg.calibrate_images] if cfg.calibrate else data.train[:0]
    return StageInputs(test=test, prompts=[plan.prompts[i] for i in test], seeds=[plan.seeds[i] for i in test],
                       labels={t: data.labels[t][1][: len(test)] for t in cfg.tasks},
                       train=train, train_prompts=[plan.prompts[i] for i in train],
                       train_seeds=[plan.seeds[i] for i in train],
                       train_labels={t: data.labels[t][0][: len(train)] for t in cfg.tasks}, probes=probes,
                       hooks=hooks, scaler=data.depth_scaler, n_images=len(plan), size=tuple(layout.image))


def read_unedited(output: str, images: np.ndarray) -> np.ndarray:
    """The run's own images `(image, H, W, 3)` uint8 for run image ids `images`: what each unit's edits are compared
    with. Read by the driver, once, where the units are made (actors and the animation never need them)."""
    return take_images(open_store(output)[IMAGES], np.asarray(images, np.int64))


def make_units(inputs: StageInputs, cfg: InterventionConfig, unedited: np.ndarray) -> list[Unit]:
    """Every (task, method, test image) unit, with the image's seeded translations and the method's strength;
    `unedited`: `read_unedited` of `inputs.test`."""
    moves = draw_translations(inputs.test, cfg.targets, inputs.size)
    return [Unit(task, method, int(image), inputs.prompts[k], int(inputs.seeds[k]), inputs.labels[task][k], moves[k],
                 unedited[k], strength=cfg.strength_of(task, method))
            for task in cfg.tasks for method in cfg.methods for k, image in enumerate(inputs.test)]


def calibration_units(inputs: StageInputs, cfg: InterventionConfig, unedited: np.ndarray) -> list[Unit]:
    """Every (task, calibrated method, candidate strength, training image) unit: targets drawn as for test images;
    `unedited`: `read_unedited` of `inputs.train`."""
    moves = draw_translations(inputs.train, cfg.targets, inputs.size)
    return [Unit(task, method, int(image), inputs.train_prompts[k], int(inputs.train_seeds[k]),
                 inputs.train_labels[task][k], moves[k], unedited[k], strength=float(strength), calibration=True)
            for task in cfg.tasks for method in cfg.calibrated_methods(task) for strength in cfg.calibrate[task]
            for k, image in enumerate(inputs.train)]


def labeler_spec(output: str, task: str) -> dict:
    """The `workflows.stages.labels.load_labeler` arguments that re-create the labeler the run's labels came from."""
    attrs = dict(open_store(output)[labels(task)].attrs)
    name, version = attrs.get("labeler", ""), attrs.get("version", "")
    if name.startswith("toy-"):
        return {"kind": "toy"}
    kind = "hf" if name == "hf-saliency" else name
    return {"kind": kind, "checkpoint": version.rsplit("@", 1)[0] or None}


def load_labelers(output: str, tasks: Sequence[str], specs: Mapping[str, dict] | None = None,
                  device: str = "cpu") -> dict:
    """The labelers the run's labels were made with (checked by version), so edits are scored like the probes."""
    out = {}
    for task in tasks:
        spec = dict((specs or {}).get(task) or labeler_spec(output, task))
        labeler = load_labeler(task, device=device, **spec)
        stored = open_store(output)[labels(task)].attrs.get("version")
        if stored != labeler.version:
            raise UserError(f"labels/{task} were made by {stored}, but {labeler.version} was loaded; the edited images "
                            "must be re-labelled by the same labeler as the probes were trained on")
        out[task] = labeler
    return out


def colour_check_for(model) -> Callable[[np.ndarray, np.ndarray, str], np.ndarray] | None:
    """The toy world's colour reader for `Worker.colour_check` (its captions name each object's colour); None for
    other models."""
    if getattr(model, "name", None) != "toy":
        return None
    from ldm.toy.quality import colour_check

    return colour_check()


def store_sink(output: str) -> Callable[[Unit, np.ndarray], None]:
    """Write a unit's edited images into its store chunk (one chunk per unit: one writer each)."""
    root = open_store(output, mode="r+")
    return lambda unit, images: root[edited_images(unit.task, unit.method)].__setitem__(unit.image, images)
