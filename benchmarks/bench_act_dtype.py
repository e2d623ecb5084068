"""What the activation storage dtype does to the probes: a probed run's stored float16 activations at each target's
chosen layer (held-out choice, `probes.selection`), at every step, stored again as bfloat16 and as float8 e4m3 with
its per-(image, step, channel) scales (`workflows.store.act_dtype`, the writer's own encoding), then fit and scored
exactly as the grid does, side by side with float16 in one run.

    .venv/bin/python benchmarks/bench_act_dtype.py runs/toy      # a run whose probe stage is done
    .venv/bin/python benchmarks/bench_act_dtype.py --planted     # a planted signal at SD v1.4's layer shapes

`--planted` needs no run: at one layer of each of SD v1.4's (h, w, channels) shapes it makes activations with a
planted linear depth and object signal under heavy-tailed per-channel scales (lognormal, 1% outlier channels 30x: the
outliers are what an 8-bit float with one scale per tensor would crush), then fits a ridge depth probe and a logistic
object probe on the training images for each dtype and scores them on the held-out ones (R2, Dice at 0.5).

The target (issue #22): every headline metric within 0.01 of float16's. The comparison is paired: same images, same
split, same probes; only the stored values differ.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ldm.architecture import describe_hook_points  # noqa: E402
from probes import dice_iou, fit_logistic, fit_ridge  # noqa: E402
from probes.resample import downsample_area  # noqa: E402
from probes.selection import best_layer  # noqa: E402
from workflows.config import ACT_DTYPES, EXTRAS  # noqa: E402
from workflows.stages.grid import ProbeGroup, read_activations, read_metrics  # noqa: E402
from workflows.stages.grid_data import GroupActs, prepare_grid_data  # noqa: E402
from workflows.stages.grid_fit import fit_and_score  # noqa: E402
from workflows.stages.grid_scores import HEADLINE, METRIC_NAMES  # noqa: E402
from workflows.store.act_dtype import decode, encode  # noqa: E402

BYTES = {"float16": 2, "bfloat16": 2, "float8_e4m3": 1}


def stored_as(acts: np.ndarray, dtype: str) -> np.ndarray:
    """`acts (image, h, w, c)` after a round trip through `dtype`'s encoding."""
    values, scale = encode(acts, dtype)
    return decode(values.numpy(), dtype, None if scale is None else scale.numpy()).astype(np.float32)


def planted_layer(rng: np.random.Generator, images: int, h: int, w: int, c: int) -> tuple[np.ndarray, ...]:
    """(activations (image, h, w, c) float32, depth (image, 64, 64), object masks (image, 64, 64)) with a planted
    linear signal: each channel is scale_c * (a_c depth + b_c object + noise) at the layer's resolution."""
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 64), np.linspace(0, 1, 64), indexing="ij"), -1)  # (64, 64, 2)
    freq, phase = rng.uniform(0.5, 3, (images, 6, 2)), rng.uniform(0, 2 * np.pi, (images, 6))
    depth = np.cos(2 * np.pi * np.einsum("yxk,ifk->iyxf", grid, freq) + phase[:, None, None]).sum(-1)  # (image, 64, 64)
    depth = ((depth - depth.mean((1, 2), keepdims=True)) / depth.std((1, 2), keepdims=True)).astype(np.float32)
    masks = (depth > 0.5).astype(np.float32)
    at_layer = downsample_area(np.stack([depth, masks], 1).reshape(-1, 64, 64), h, w).reshape(images, 2, h, w)
    strength = 0.07 * np.sqrt(320 / c)  # the same probe quality at every width
    a, b = rng.normal(0, strength, (2, c)).astype(np.float32)
    scale = np.exp(rng.normal(0, 1, c)) * np.where(rng.random(c) < 0.01, 30, 1)  # heavy-tailed channels
    noise = rng.standard_normal((images, h, w, c), np.float32)
    acts = (at_layer[:, 0, ..., None] * a + at_layer[:, 1, ..., None] * b + noise) * scale.astype(np.float32)
    return acts, depth, masks


def planted(images: int, seed: int) -> None:
    """The `--planted` table (module docstring)."""
    rng = np.random.default_rng(seed)
    points = describe_hook_points("CompVis/stable-diffusion-v1-4")
    shapes = {(p.height, p.width, p.channels): p.name for p in points if p.kind != "extra"}
    train = images * 3 // 4
    print("| layer | h x w x c | dtype | depth R2 | diff | object Dice | diff |\n|---|---|---|---|---|---|---|")
    for (h, w, c), name in sorted(shapes.items(), reverse=True):
        acts, depth, masks = planted_layer(rng, images, h, w, c)
        captured = acts.astype(np.float16).astype(np.float32)  # as the hooks hand it to the writer
        truth = downsample_area(depth[train:], h, w)  # held-out targets at the layer's resolution: one per layer
        total = ((truth - depth[:train].mean()) ** 2).sum()
        objects = downsample_area(masks[train:], h, w) > 0.5
        base = None
        for dtype in ACT_DTYPES:
            x = stored_as(captured, dtype)
            pred = fit_ridge(x[:train], depth[:train], kind="depth").predict(x[train:])
            r2 = 1 - ((pred - truth) ** 2).sum() / total
            found = fit_logistic(x[:train], masks[:train]).predict(x[train:]) > 0.5
            dice = float(dice_iou(found, objects)["dice_fg"].mean())
            base = base or (r2, dice)
            print(f"| {name} | {h}x{w}x{c} | {dtype} | {r2:.4f} | {r2 - base[0]:+.4f} | {dice:.4f} | "
                  f"{dice - base[1]:+.4f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", help="a run whose probe stage is done")
    parser.add_argument("--steps", type=int, nargs="*", default=None, help="default: every step")
    parser.add_argument("--planted", action="store_true", help="a planted signal at SD v1.4's shapes (no run)")
    parser.add_argument("--images", type=int, default=64, help="--planted: images, 3/4 of them train")
    parser.add_argument("--seed", type=int, default=0, help="--planted: the planted signal's seed")
    args = parser.parse_args()
    if args.planted:
        return planted(args.images, args.seed)
    if args.run is None:
        parser.error("give a run, or --planted")
    rows = read_metrics(args.run).to_pylist()
    data = prepare_grid_data(args.run, n_boot=200)
    every = np.concatenate([data.train, data.test])
    print("| target | layer | metric | dtype | bytes / value | mean over steps | max abs diff from float16 | "
          "fit s |\n|---|---|---|---|---|---|---|---|")
    for target in data.labels:
        metric = METRIC_NAMES[HEADLINE[target]]
        hook = best_layer(rows, target, "ldm", metric, exclude=EXTRAS)
        steps = args.steps if args.steps is not None else sorted({r["step"] for r in rows if r["hook"] == hook})
        scores = {d: [] for d in ACT_DTYPES}
        seconds = dict.fromkeys(ACT_DTYPES, 0.0)
        for step in steps:
            raw = read_activations(args.run, ProbeGroup("ldm", hook, step), every).astype(np.float32)
            for dtype in ACT_DTYPES:
                x = stored_as(raw, dtype)
                start = time.perf_counter()
                row, _ = fit_and_score(GroupActs(x[: len(data.train)], x[len(data.train):], data), target, data)
                seconds[dtype] += time.perf_counter() - start
                scores[dtype].append(row[metric])
        base = np.array(scores["float16"])
        for dtype in ACT_DTYPES:
            values = np.array(scores[dtype])
            print(f"| {target} | {hook} | {metric} | {dtype} | {BYTES[dtype]} | {values.mean():.4f} | "
                  f"{np.abs(values - base).max():.4f} | {seconds[dtype]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
