"""Position-only baselines for the toy world: how much do depth, salient masks, surface normals and the light
direction follow from pixel position alone?

Predict every held-out render's depth with the mean training depth map, and its salient mask with the mean training
salient mask thresholded at the level that maximises mean Dice on the training renders; its normals with the
training renders' spherical-mean normal map and its light with their mean light direction (`probes.baselines_vectors`,
scored by `probes.angular` over surface pixels). A world where these score high lets a probe "succeed" without
reading the image. Targets: depth Spearman <= 0.7, mask Dice <= 0.3.

    python benchmarks/toy_baselines.py [--n-train 2000] [--n-test 500] [--size 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import rankdata

from ldm.toy.render import HELD_OUT_SEED, render_batch
from probes.angular import score_directions, score_normals
from probes.baselines_vectors import (
    direction_position_prediction,
    mean_direction,
    mean_normal_map,
    normal_position_prediction,
)


def spearman_per_image(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Spearman rank correlation per image between pred `(image, h, w)` (or one `(h, w)` map) and target."""
    pred = np.broadcast_to(pred, target.shape).reshape(len(target), -1)
    rp = rankdata(pred, axis=1)
    rt = rankdata(target.reshape(len(target), -1), axis=1)
    rp, rt = rp - rp.mean(1, keepdims=True), rt - rt.mean(1, keepdims=True)
    denom = np.sqrt((rp**2).sum(1) * (rt**2).sum(1))
    return np.where(denom > 0, (rp * rt).sum(1) / np.maximum(denom, 1e-12), 0.0)


def dice_per_image(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Dice per image of boolean masks `(image, h, w)`; two empty masks count as a perfect match."""
    pred = np.broadcast_to(pred, target.shape).reshape(len(target), -1)
    target = target.reshape(len(target), -1)
    inter, total = (pred & target).sum(1), pred.sum(1) + target.sum(1)
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def position_baselines(n_train: int, n_test: int, size: int) -> dict[str, tuple[float, float, float]]:
    """{metric: (mean, ci_low, ci_high)} of the position-only predictors on held-out renders."""
    # Depth and masks do not depend on antialiasing, so render with one ray per pixel.
    train = render_batch(np.arange(n_train), size=size, antialias=1)
    test = render_batch(np.arange(HELD_OUT_SEED, HELD_OUT_SEED + n_test), size=size, antialias=1)
    mean_depth = train.depth.mean(0)
    mean_mask = train.salient.mean(0)
    thresholds = np.unique(np.quantile(mean_mask, np.linspace(0.0, 0.995, 200)))
    train_dice = [dice_per_image(mean_mask >= th, train.salient).mean() for th in thresholds]
    best = float(thresholds[int(np.argmax(train_dice))])

    results = {}
    for name, values in {
        "depth_spearman": spearman_per_image(mean_depth, test.depth),
        "mask_dice": dice_per_image(mean_mask >= best, test.salient),
        "salient_area_fraction": test.salient.mean((1, 2)),
    }.items():
        results[name] = (float(values.mean()), *bootstrap_ci(values))
    results["mask_threshold"] = (best, best, best)

    normal_map = mean_normal_map(train.normals, train.surface)
    pred = normal_position_prediction(normal_map, n_test, size, size)
    normals = score_normals(pred, test.normals, test.surface, resolutions=("image",)).estimates
    light = score_directions(direction_position_prediction(mean_direction(train.light_direction), n_test),
                             test.light_direction).estimates
    for name, est in [(f"normals_{k.split('/')[1]}", v) for k, v in normals.items()] + [
            (f"light_{k}", v) for k, v in light.items()]:
        results[name] = (est.mean, est.lo, est.hi)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    start = time.perf_counter()
    results = position_baselines(args.n_train, args.n_test, args.size)
    print(f"position-only baselines, {args.n_train} train / {args.n_test} held-out renders at {args.size}px")
    for name, (mean, lo, hi) in results.items():
        print(f"  {name:24s} {mean:.3f}  [95% CI {lo:.3f}, {hi:.3f}]")
    print(f"  ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
