"""Image-resolution scores of layer-resolution predictions, from the labels' block sums.

A probe predicts at a layer's `(h, w)`; the paper scores the prediction upsampled (nearest) to the labels' `(H, W)`.
Nearest upsampling by an integer factor gives every image pixel of a block its layer pixel's value, so any sum over
image pixels of f(prediction) g(truth) is a sum over blocks of f(layer value) times the block's sum of g(truth):
`block_truth` computes those sums once per (labels, layer shape), and the functions here score every probe at image
resolution from `(image, h * w)` arrays, equal to scoring the upsampled arrays (tested estimate by estimate) at a
fraction of the memory and time. Also the threshold for Dice chosen on training predictions (`choose_threshold`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

from probes.metrics import THRESHOLDS, ranking_metrics


@dataclass
class BlockTruth:
    """Truth summed within each layer pixel's block of image pixels, to score layer-resolution predictions at image
    resolution without image-resolution arrays (`block_truth`). Nearest upsampling by an integer factor gives every
    image pixel of a block its layer pixel's value, so a sum over image pixels of f(prediction) g(truth) is a sum over
    blocks of f(layer value) times the block's sum of g(truth)."""

    block: int  # image pixels per layer pixel
    pixels: int  # image pixels per image
    sums: dict[str, np.ndarray]  # name -> (image, h * w) block sums
    totals: dict[str, np.ndarray]  # name -> (image,) sums over the image


def block_truth(truth: Any, h: int, w: int, mean_map: np.ndarray | None = None) -> BlockTruth:
    """Block sums of masks `(image, H, W)` (foreground = > 0.5: "t"), or with `mean_map (H, W)` of depth: the depth
    "t", its average ranks "r" and its deviation from the map "e", with image totals of each and of their squares."""
    t = np.asarray(truth, np.float64)
    n, H, W = t.shape
    if H % h or W % w:
        raise ValueError(f"image {H}x{W} is not a multiple of the layer {h}x{w}")
    block = (H // h) * (W // w)

    def sums(x: np.ndarray) -> np.ndarray:
        return x.reshape(n, h, H // h, w, W // w).sum((2, 4)).reshape(n, -1)

    if mean_map is None:
        m = (t > 0.5).astype(np.float64)
        return BlockTruth(block, H * W, {"t": sums(m)}, {"t": m.sum((1, 2))})
    parts = {"t": t, "r": rankdata(t.reshape(n, -1), axis=1).reshape(t.shape), "e": t - mean_map}
    totals = {k: v.sum((1, 2)) for k, v in parts.items()} | {k + k: (v * v).sum((1, 2)) for k, v in parts.items()}
    totals["constant"] = (np.ptp(t.reshape(n, -1), axis=1) == 0).astype(np.float64)
    return BlockTruth(block, H * W, {k: sums(v) for k, v in parts.items()}, totals)


def upsampled_saliency_metrics(prob: np.ndarray, truth: BlockTruth, threshold: float = 0.5,
                               tuned: float | None = None, ranking: bool = True) -> dict[str, np.ndarray]:
    """`saliency_metrics(upsample_nearest(prob, H, W), masks, ...)` (dice_fg, dice_bg, iou at `threshold`; auroc, ap
    unless ranking=False; dice_tuned at `tuned` when given) for layer-resolution probabilities `(image, h, w)`, from
    the masks' `block_truth`: each layer pixel ranks as its block, weighted by the block's fg and bg counts."""
    n, k, N = len(prob), truth.block, truth.pixels
    fg = (prob > threshold).reshape(n, -1).astype(np.float64)
    inter, p, t = (fg * truth.sums["t"]).sum(1), fg.sum(1) * k, truth.totals["t"]
    union = p + t - inter

    def dice(i: np.ndarray, total: np.ndarray) -> np.ndarray:
        return np.where(total > 0.5, 2 * i / np.maximum(total, 1.0), 1.0)  # totals are whole pixel counts

    out = {"dice_fg": dice(inter, p + t), "dice_bg": dice(N - union, 2 * N - p - t),
           "iou": np.where(union > 0.5, inter / np.maximum(union, 1.0), 1.0)}
    if ranking:
        out |= ranking_metrics(prob.reshape(n, -1), truth.sums["t"], k - truth.sums["t"])
    if tuned is not None:
        out["dice_tuned"] = dice_by_threshold(prob, truth, (tuned,))[0]
    return out


def upsampled_depth_metrics(pred: np.ndarray, truth: BlockTruth, deviation: np.ndarray | None = None,
                            ranks: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """`depth_metrics` at image resolution (rmse, pearson, spearman, r2_beyond_position) of layer-resolution
    predictions `(image, h, w)` upsampled by nearest neighbour, from the depth's `block_truth`. `deviation (image, h,
    w)`: the positioned prediction minus the layer-resolution mean map, for R2 beyond position (the map's finer detail
    counts as predicted, as in `score_depth(positioned=...)`); without it, R2 of `pred` itself. `ranks`: the
    prediction's average ranks at layer resolution (an affine map of the upsampled prediction's ranks, which no
    correlation sees); without them Spearman is NaN."""
    n, k, N = len(pred), truth.block, truth.pixels
    s, tot = truth.sums, truth.totals
    p = np.asarray(pred, np.float64).reshape(n, -1)

    def pearson(x: np.ndarray, name: str) -> np.ndarray:  # Pearson of up(x) with the truth part `name`
        sx, sxx, sxy = k * x.sum(1), k * (x * x).sum(1), (x * s[name]).sum(1)
        cov, vx, vy = sxy - sx * tot[name] / N, sxx - sx * sx / N, tot[name + name] - tot[name] ** 2 / N
        den = np.sqrt(np.maximum(vx, 0) * np.maximum(vy, 0))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 1e-12 * N, cov / den, np.nan)

    sse = np.maximum(tot["tt"] - 2 * (p * s["t"]).sum(1) + k * (p * p).sum(1), 0)
    if deviation is not None:
        d = np.asarray(deviation, np.float64).reshape(n, -1)
        sse_pos = np.maximum(tot["ee"] - 2 * (d * s["e"]).sum(1) + k * (d * d).sum(1), 0)
    else:  # R2 of pred itself: t - up(pred) has the same sum of squares as for the rmse
        sse_pos = sse
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(tot["ee"] > 0, 1 - sse_pos / tot["ee"], np.nan)
    return {"rmse": np.sqrt(sse / N), "pearson": pearson(p, "t"),
            "spearman": pearson(np.asarray(ranks, np.float64).reshape(n, -1), "r") if ranks is not None
            else np.full(n, np.nan),
            "r2_beyond_position": r2, "constant_truth": tot["constant"] > 0}


def upsampled_cross_entropy(prob: np.ndarray, truth: BlockTruth, eps: float = 1e-6) -> np.ndarray:
    """`(image,)` mean binary cross-entropy, in nats per image pixel, of `upsample_nearest(prob)` against the masks,
    for layer-resolution probabilities `(image, h, w)` (clipped to [eps, 1 - eps]), from the masks' `block_truth`."""
    n, k = len(prob), truth.block
    p = np.clip(np.asarray(prob, np.float64).reshape(n, -1), eps, 1 - eps)
    fg = truth.sums["t"]
    return -(fg * np.log(p) + (k - fg) * np.log1p(-p)).sum(1) / truth.pixels


def dice_by_threshold(prob: np.ndarray, truth: BlockTruth, thresholds: Any = THRESHOLDS) -> np.ndarray:
    """`(threshold, image)` foreground Dice of `upsample_nearest(prob) > t` for layer-resolution probabilities
    `(image, h, w)`, every candidate at once, from the masks' `block_truth`."""
    n, k = len(prob), truth.block
    fg = np.asarray(prob, np.float64).reshape(1, n, -1) > np.asarray(thresholds, np.float64)[:, None, None]
    inter = np.einsum("tnp,np->tn", fg.astype(np.float64), truth.sums["t"])
    total = fg.sum(-1) * k + truth.totals["t"][None]
    return np.where(total > 0.5, 2 * inter / np.maximum(total, 1.0), 1.0)


def choose_threshold(prob: np.ndarray, truth: BlockTruth, thresholds: Any = THRESHOLDS) -> float:
    """The candidate threshold with the highest mean foreground Dice over images (the smallest among equals), for
    *training* predictions `(image, h, w)` and the training masks' `block_truth`; never given test images."""
    mean = np.nanmean(dice_by_threshold(prob, truth, thresholds), axis=1)
    return float(np.asarray(thresholds, np.float64)[int(np.argmax(mean))])
