"""Causal localisation by activation patching: which (layer, step) decides where the salient object goes.

One pair is a training image (the *base*: its prompt and seed) and a *counterfactual*: the same prompt drawn with
another seed, whose salient object sits elsewhere. The prompt is the same so that the two generations share their
content (objects, colours, floor: what a toy caption fixes) and differ in the random draw, i.e. in placement; copying
an activation from one into the other then tests placement, not content. The toy world's plan has one seed per
caption, so the counterfactual is made here, never taken from the run.

`run_pair` does one pair, top to bottom:

1. the counterfactual: `candidates` seeds (`counterfactual_seeds`), generated in one batch and labelled by the run's
   labeler; the one whose salient mask overlaps the base's least (Dice) is kept. The pair is usable when both masks
   are non-empty and that Dice is at most `max_overlap`;
2. the counterfactual again, live, recording every patched layer at steps 0..max(steps) for *both* halves of the
   guidance batch (the store holds the conditional half only; the U-Net's two passes must both see the copy, or the
   guidance difference would push back towards the base);
3. the base generated once per cell, `batch` cells per generate call: cell ("cell", layer, s) replaces the layer's
   output at step s by the counterfactual's, ("window", layer, s) at steps 0..s;
4. every patched image re-labelled and scored: Dice to the counterfactual's mask against the unpatched base's Dice
   to it (the movement), and the edit stage's integrity distances (`workflows.stages.edit_units.integrity`, the
   seed-reference redraw as their scale). The stage judges them with the edit stage's `judge`.

Plain functions; the stage (`workflows.stages.patching_stage`) runs pairs in this process or on the actor pool.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import torch

from ldm.hooks import hooked
from probes.metrics import dice_iou
from workflows.config import InterventionConfig
from workflows.stages.edit_units import integrity
from workflows.stages.edits import score
from workflows.store.paths import shard_key

# candidate j of a pair: seed + this + j. Not the seed-reference's offset (edit_units.REFERENCE_SEED_OFFSET, 7919):
# the integrity scale stays an independent redraw, never the counterfactual itself.
COUNTERFACTUAL_SEED_OFFSET = 104_729
HALVES = ("uncond", "cond")  # the guidance batch's two passes, both copied


@dataclass
class Pair:
    """One unit of patching work: a training image and everything its pair is made from. `task`, `prompt`, `seed` and
    `unedited` are what `edit_units.integrity` reads from a unit."""

    image: int
    prompt: str
    seed: int
    label: np.ndarray  # (H, W) the image's stored saliency label
    unedited: np.ndarray  # (H, W, 3) uint8 the image as the run generated it
    task: str = "saliency"

    @property
    def key(self) -> str:
        return shard_key(self.image)


@dataclass(frozen=True)
class Cell:
    """What one patched image copies: `view` "cell" copies (hook, step); "window" copies (hook, 0..step)."""

    view: str
    hook: str
    step: int

    def covers(self, hook: str, step: int) -> bool:
        return hook == self.hook and (step == self.step if self.view == "cell" else step <= self.step)


@dataclass
class PatchWorker:
    """What a pair needs: the model, the saliency labeler, the config and the map's layers and steps. `model`,
    `references` and `colour_check` are what `edit_units.integrity` reads from a worker."""

    model: object
    labeler: Callable[[np.ndarray], np.ndarray]
    cfg: InterventionConfig
    layers: list[str]
    steps: list[int]
    colour_check: Callable[[np.ndarray, np.ndarray, str], np.ndarray] | None = None
    references: dict = field(default_factory=dict, repr=False)  # (prompt, seed) -> the seed-reference, per worker


def counterfactual_seeds(seed: int, n: int) -> list[int]:
    return [int(seed) + COUNTERFACTUAL_SEED_OFFSET + j for j in range(n)]


def make_cells(layers: Sequence[str], steps: Sequence[int], views: Sequence[str]) -> list[Cell]:
    """Every (view, layer, step), in that order: the rows of the map."""
    return [Cell(v, h, s) for v in views for h in layers for s in sorted(steps)]


def record_halves(model, prompt: str, seed: int, layers: Sequence[str],
                  last_step: int) -> tuple[np.ndarray, dict[str, dict]]:
    """Generate `prompt` with `seed`, keeping every layer's output at steps 0..last_step for each guidance half:
    `(image (H, W, 3), {half: {(hook, step): (1, h, w, c)}})`, on the model's device (the toy map: ~4 MB; SD v1.4 at
    16 layers x 15 steps: ~2.5 GB in float16)."""
    kept: dict[str, dict] = {half: {} for half in HALVES}

    def reader(half: str):
        return lambda step, name, act: kept[half].__setitem__((name, step), act.clone())

    with ExitStack() as stack:  # one reader per half: each knows which half it holds
        for half in HALVES:
            stack.enter_context(hooked(model, reader(half), list(layers), steps=range(last_step + 1), half=half))
        image = model.generate([prompt], [int(seed)])[0]
    return image, kept


def patcher(recorded: dict, cells: Sequence[Cell]):
    """A writing hook fn for one half: image i of the batch takes the recorded activation wherever cells[i] covers."""
    def fn(step: int, name: str, act: torch.Tensor) -> torch.Tensor | None:
        rows = [i for i, c in enumerate(cells) if c.covers(name, step)]
        if not rows:
            return None  # this (layer, step) stays the base's own in every image of the batch
        new = act.clone()
        new[rows] = recorded[(name, step)].to(new.dtype)  # (1, h, w, c) broadcast over the rows
        return new

    return fn


def generate_patched(model, prompt: str, seed: int, recorded: dict[str, dict], cells: Sequence[Cell]) -> np.ndarray:
    """The base (`prompt`, `seed`) once per cell, in one generate call: `(cell, H, W, 3)` uint8."""
    hooks = list(dict.fromkeys(c.hook for c in cells))
    steps = sorted({s for c in cells for s in (range(c.step + 1) if c.view == "window" else [c.step])})
    with ExitStack() as stack:  # one writer per half; the second sees the first's output (torch chains forward hooks)
        for half in HALVES:
            stack.enter_context(hooked(model, patcher(recorded[half], cells), hooks, steps=steps, half=half,
                                       write=True))
        return model.generate([prompt] * len(cells), [int(seed)] * len(cells))


def choose_counterfactual(worker: PatchWorker, pair: Pair) -> dict:
    """Step 1: the candidate seed whose mask overlaps the base's least; `usable` says whether the pair can show
    movement (both masks non-empty, Dice at most `max_overlap`)."""
    pcfg = worker.cfg.patching
    seeds = counterfactual_seeds(pair.seed, pcfg.candidates)
    masks = np.asarray(worker.labeler(worker.model.generate([pair.prompt] * len(seeds), seeds))) > 0.5  # (cand, H, W)
    base = np.asarray(pair.label) > 0.5
    overlap = dice_iou(masks, np.broadcast_to(base, masks.shape))["dice_fg"]
    overlap = np.where(masks.reshape(len(masks), -1).any(1), overlap, np.inf)  # an empty candidate is never chosen
    j = int(np.argmin(overlap))
    plain = [float(o) if np.isfinite(o) else None for o in overlap]  # None: an empty mask (JSON has no infinity)
    return {"image": pair.image, "seed": int(pair.seed), "prompt": pair.prompt, "counterfactual_seed": seeds[j],
            "overlap": plain[j], "candidate_overlaps": plain,
            "usable": bool(base.any() and plain[j] is not None and plain[j] <= pcfg.max_overlap)}


def score_patched(worker: PatchWorker, pair: Pair, target: np.ndarray, images: np.ndarray,
                  new: np.ndarray) -> dict[str, np.ndarray]:
    """Step 4, per patched image: `edits.score` against the counterfactual's mask `target (H, W)` (score_before: the
    base's own label) and the edit stage's integrity distances; `new (cell, H, W)` are the images' labels."""
    targets = np.repeat((np.asarray(target) > 0.5).astype(np.float32)[None], len(images), 0)  # (cell, H, W)
    original = np.asarray(pair.label, np.float32)
    return {**score("saliency", new, original, targets), **integrity(worker, pair, images, original, targets, new)}


def run_pair(worker: PatchWorker, pair: Pair) -> dict:
    """One pair, steps 1-4 of the module docstring: `{"pair": what was chosen, "rows": one per patched image}` (no
    rows when the pair is not usable)."""
    start = time.perf_counter()
    pcfg = worker.cfg.patching
    info = choose_counterfactual(worker, pair)  # 1.
    if not info["usable"]:
        return {"pair": info, "rows": []}
    cells = make_cells(worker.layers, worker.steps, pcfg.views)
    cf_image, recorded = record_halves(worker.model, pair.prompt, info["counterfactual_seed"], worker.layers,
                                       max(worker.steps))  # 2.
    target = np.asarray(worker.labeler(cf_image[None]))[0]  # (H, W) the counterfactual's mask, from this very run
    images = np.concatenate([generate_patched(worker.model, pair.prompt, pair.seed, recorded, cells[i:i + pcfg.batch])
                             for i in range(0, len(cells), pcfg.batch)])  # 3. (cell, H, W, 3)
    new = np.asarray(worker.labeler(images), np.float32)  # 4.
    scores = score_patched(worker, pair, target, images, new)
    seconds = time.perf_counter() - start
    info = {**info, "seconds": seconds, "patched_images": len(cells)}
    rows = [{"image": pair.image, "seed": int(pair.seed), "prompt": pair.prompt,
             "counterfactual_seed": info["counterfactual_seed"], "overlap": info["overlap"], "task": "saliency",
             "view": c.view, "hook": c.hook, "step": c.step, **{name: float(v[k]) for name, v in scores.items()},
             "seconds": seconds / len(cells)} for k, c in enumerate(cells)]
    return {"pair": info, "rows": rows}
