"""One edited generation: edit functions built from linear probes, the batched edited generate, and its scoring.

`run_edits` renders one prompt and seed once per target, replacing the conditional half of the activation at each
(hook, step) by a `probes.edits` edit towards that target (`ldm.edit.edit`; edits run in forward order, so later layers
see earlier edits). `score` compares re-labelled results with the targets. Used by the interventions stage
(`workflows.stages.interventions`), the moving-object animation and the edit benchmark.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ldm.edit import EditFn, edit
from probes.edits import closed_form_edit, optimise_edit, random_edit
from probes.linear import LinearProbe
from probes.metrics import DepthScaler, dice_iou
from workflows.config import METHODS, EditSettings

METRIC = {"saliency": "dice", "depth": "rmse"}  # what score_before / score_after hold
ProbeTable = Mapping[tuple[str, int], LinearProbe]  # (hook, step) -> probe

# ---------------------------------------------------------------- one edited generation


@dataclass
class EditStats:
    """Filled while a batch generates: per image, the summed mean per-position L2 norm of the edits over all
    (hook, step) pairs, and the seconds spent computing edits (the part the methods differ in)."""

    norm: np.ndarray
    seconds: float = 0.0
    calls: int = 0


def _sync(t: torch.Tensor) -> None:
    if t.is_cuda:  # CUDA runs asynchronously: time only finished work
        torch.cuda.synchronize(t.device)


def edit_seed(seed: int, image: int, hook: str, step: int) -> int:
    """A stable seed per (stage seed, image, hook, step) for the random control's directions."""
    return zlib.crc32(f"{seed}/{image}/{hook}/{step}".encode())


def make_edit_fn(probes: ProbeTable, method: str, targets: np.ndarray, task: str,
                 settings: EditSettings = EditSettings((), ()), image: int = 0,
                 stats: EditStats | None = None) -> EditFn:
    """An `ldm.edit` function applying `method` with the probe of each (hook, step) to reach `targets (batch, H, W)`
    (saliency: 0/1 masks; depth: the probes' standardised units). Targets stay at image resolution: the closed form
    area-averages them to the layer, the optimised edit compares nearest-upsampled probe outputs, as the paper does.
    `settings.strength` scales every edit `a' - a` (1 = exactly what the method computes); the random control copies
    the scaled norm. `settings.units`: the closed form's minimal edit in the probe's "standardised" units (default) or
    in "raw" activation units (`probes.edits.closed_form_edit`). The hooks and steps of `settings` are `run_edits`'."""
    lr, iters, strength, units = settings.lr, settings.iters, settings.strength, settings.units
    if method not in METHODS:
        raise ValueError(f"unknown edit method {method!r}; choose one of {', '.join(METHODS)}")
    on_device: dict[torch.device, torch.Tensor] = {}  # the targets, moved to the activations' device once

    def reference(act: torch.Tensor, probe: LinearProbe, how: str) -> torch.Tensor:
        if act.device not in on_device:
            on_device[act.device] = torch.from_numpy(np.ascontiguousarray(targets, np.float32)).to(act.device)
        t = on_device[act.device]
        if how == "paper":
            new = optimise_edit(act, probe, t, lr=lr, iters=iters)
        else:
            new = closed_form_edit(act, probe.raw_weight, probe.raw_bias, t, kind=task,
                                   scale=probe.scale if units == "standardised" else None)
        if strength == 1.0:
            return new
        return (act.float() + strength * (new.float() - act.float())).to(act.dtype)

    def fn(step: int, name: str, act: torch.Tensor) -> torch.Tensor:
        probe = probes[(name, step)]
        _sync(act)
        start = time.perf_counter()
        with torch.enable_grad():  # generation runs under no_grad; the paper's edit needs autograd
            if method == "random":
                ref = reference(act, probe, settings.random_reference)
                new = random_edit(act, ref.float() - act.float(), edit_seed(settings.seed, image, name, step))
            else:
                new = reference(act, probe, method)
        _sync(new)
        if stats is not None:
            stats.seconds += time.perf_counter() - start
            stats.calls += 1
            stats.norm += (new.float() - act.float()).norm(dim=-1).mean(dim=(1, 2)).cpu().numpy()
        return new

    return fn


def run_edits(model, probes: ProbeTable, method: str, targets: np.ndarray, prompt: str, seed: int, task: str,
              settings: EditSettings, image: int = 0, stats: EditStats | None = None) -> np.ndarray:
    """Generate `prompt` with `seed` once per target `(target, H, W)`, editing `settings.hooks` at `settings.steps` on
    the conditional half; returns uint8 `(target, H, W, 3)`. Every (hook, step) must have a probe."""
    missing = [(h, s) for h in settings.hooks for s in settings.steps if (h, s) not in probes]
    if missing:
        raise KeyError(f"no probe for {', '.join(f'{h}@{s}' for h, s in missing)}")
    n = len(targets)
    fn = make_edit_fn(probes, method, targets, task, settings, image=image, stats=stats)
    with edit(model, fn, hooks=list(settings.hooks), steps=list(settings.steps)):
        return model.generate([prompt] * n, [int(seed)] * n)


# ---------------------------------------------------------------- scoring


def rmse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image RMSE of `(image, H, W)` maps."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return np.sqrt((d * d).reshape(len(d), -1).mean(1))


def score(task: str, new: np.ndarray, original: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """Per target: `score_before` (original label vs target), `score_after` (new label vs target), `gain` (positive =
    moved towards the target) and `score_to_original` (new label vs original label).

    Saliency: Dice of masks (labels > 0.5). Depth: RMSE in the units given (standardise labels first).
    `new`, `targets`: `(target, H, W)`; `original`: `(H, W)`."""
    orig = np.broadcast_to(original, new.shape)
    if task == "saliency":
        t = targets > 0.5
        before = dice_iou(orig > 0.5, t)["dice_fg"]
        after = dice_iou(new > 0.5, t)["dice_fg"]
        return {"score_before": before, "score_after": after, "gain": after - before,
                "score_to_original": dice_iou(new > 0.5, orig > 0.5)["dice_fg"]}
    before, after = rmse(orig, targets), rmse(new, targets)
    return {"score_before": before, "score_after": after, "gain": before - after, "score_to_original": rmse(new, orig)}


def standardise(task: str, labels: np.ndarray, scaler: DepthScaler | None) -> np.ndarray:
    """Labels in the probes' units: depth through the training split's scaler, saliency unchanged."""
    if task == "depth":
        if scaler is None:
            raise ValueError("depth scoring needs the training split's DepthScaler")
        return scaler.transform(labels)
    return np.asarray(labels, np.float32)
