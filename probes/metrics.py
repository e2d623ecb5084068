"""Per-image metrics, bootstrap intervals, and scoring of layer-resolution predictions at two resolutions.

Every metric is computed per test image and summarised as the mean over images with a seeded 95% percentile-bootstrap
interval (images resampled with replacement). Images where a metric is undefined (NaN: e.g. Spearman of a constant
depth map) are excluded from that metric's mean and counted in `Estimate.n_undefined`, never silently averaged.

Resolutions: "image" upsamples the `(image, h, w)` prediction (nearest) to the labels' `(H, W)`, as the paper does;
"layer" area-averages the labels down to `(h, w)` instead (masks become fractions, binarised at 0.5 for Dice/IoU).

Saliency is scored at a threshold (Dice and IoU of `prob > 0.5`, the paper's; Dice at a threshold chosen on the
training images, `choose_threshold`) and without one: pixel-level AUROC and average precision per image
(`ranking_metrics`), so a control whose probabilities never cross 0.5 still gets a score that can differ from 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.stats import rankdata

from probes.chunks import NonFiniteError
from probes.resample import downsample_area, upsample_nearest

Resolution = Literal["image", "layer"]
OnNonFinite = Literal["raise", "flag"]
# candidate thresholds for Dice at a threshold chosen on the training images (`choose_threshold`)
THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2).tolist())
SALIENCY_KEYS = ("dice_fg", "dice_bg", "iou", "auroc", "ap", "dice_tuned")  # the per-image saliency metrics


@dataclass
class Estimate:
    """Mean over images with a bootstrap interval [lo, hi]; n images used, n_undefined excluded as NaN."""

    mean: float
    lo: float
    hi: float
    n: int
    n_undefined: int = 0


@dataclass
class Scores:
    """`estimates["image/dice_fg"]` etc.; `per_image` holds the raw per-image arrays under the same keys; `flags`
    counts images needing attention (n_nonfinite, n_empty_mask, n_constant_depth)."""

    estimates: dict[str, Estimate]
    per_image: dict[str, np.ndarray]
    flags: dict[str, int] = field(default_factory=dict)


def bootstrap_many(values: dict[str, Any], *, n_boot: int = 2000, level: float = 0.95,
                   seed: int = 0) -> dict[str, Estimate]:
    """`bootstrap_ci` of several per-image metrics at once. Each metric keeps only its finite values; metrics with the
    same number of them share one resample matrix (the one `bootstrap_ci` would draw with this seed), applied to all
    of them in one matrix product: scoring a probe draws once instead of once per metric."""
    kept = {k: np.asarray(v, np.float64).ravel() for k, v in values.items()}
    n_bad = {k: int((~np.isfinite(v)).sum()) for k, v in kept.items()}
    kept = {k: v[np.isfinite(v)] for k, v in kept.items()}
    out = {k: Estimate(float("nan"), float("nan"), float("nan"), 0, n_bad[k]) for k, v in kept.items() if not len(v)}
    tail = (1 - level) / 2 * 100
    for n in sorted({len(v) for v in kept.values()} - {0}):
        keys = [k for k, v in kept.items() if len(v) == n]
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        counts = np.bincount((idx + n * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * n)
        means = counts.reshape(n_boot, n) @ np.stack([kept[k] for k in keys], axis=1) / n  # (n_boot, metric)
        lo, hi = np.percentile(means, [tail, 100 - tail], axis=0)
        for j, k in enumerate(keys):
            out[k] = Estimate(float(kept[k].mean()), float(lo[j]), float(hi[j]), n, n_bad[k])
    return {k: out[k] for k in values}


def bootstrap_ci(values: Any, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Estimate:
    """Mean of the finite `values` with a percentile-bootstrap interval; NaNs are excluded and counted."""
    return bootstrap_many({"v": values}, n_boot=n_boot, level=level, seed=seed)["v"]


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image Dice (foreground and background) and foreground IoU of boolean masks `(image, H, W)`.

    When both masks are empty Dice and IoU are 1 (perfect agreement); an empty truth with a non-empty prediction gives
    0. `empty_truth` marks images without foreground so callers can count or drop them."""
    p = pred.reshape(len(pred), -1).astype(bool)
    t = truth.reshape(len(truth), -1).astype(bool)

    def dice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        inter, total = (a & b).sum(1), a.sum(1) + b.sum(1)
        return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)

    inter, union = (p & t).sum(1), (p | t).sum(1)
    return {
        "dice_fg": dice(p, t),
        "dice_bg": dice(~p, ~t),
        "iou": np.where(union > 0, inter / np.maximum(union, 1), 1.0),
        "empty_truth": ~t.any(1),
    }


def ranking_metrics(score: np.ndarray, pos: np.ndarray, neg: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-image AUROC and average precision of scores `(image, pixels)` ranking foreground above background.

    `pos (image, pixels)`: each pixel's foreground weight, `neg` its background weight (default `1 - pos`): 0/1 for
    masks, or, for a layer pixel standing for its block of image pixels (nearest upsampling repeats its score), the
    block's foreground and background pixel counts, which gives exactly the metrics of the upsampled prediction.
    auroc: P(score_fg > score_bg) + P(score_fg == score_bg) / 2 over all (fg, bg) pixel pairs (Mann-Whitney U, ties
    half: a constant prediction scores 0.5); NaN when the image has no foreground or no background (`degenerate`).
    ap: sum over the distinct scores t, from high to low, of (recall(t) - recall(previous t)) * precision(t), with
    `score >= t` predicted foreground (tied pixels enter together, as scikit-learn's `average_precision_score`); NaN
    without foreground, 1 when every pixel is foreground."""
    s = np.asarray(score, np.float64)
    n, m = s.shape
    pos = np.asarray(pos, np.float64).reshape(n, m)
    neg = 1.0 - pos if neg is None else np.asarray(neg, np.float64).reshape(n, m)
    order = np.argsort(s, axis=1, kind="stable")
    s = np.take_along_axis(s, order, 1)
    p, q = np.take_along_axis(pos, order, 1), np.take_along_axis(neg, order, 1)
    # tie groups: runs of equal scores within an image (ascending); each image starts a new run
    new = np.ones((n, m), bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    starts = np.flatnonzero(new)
    row = starts // m
    pg, qg = np.add.reduceat(p.ravel(), starts), np.add.reduceat(q.ravel(), starts)
    p_below = (np.cumsum(p, 1) - p).ravel()[starts]  # weight strictly below each run, within its image
    q_below = (np.cumsum(q, 1) - q).ravel()[starts]
    p_tot, q_tot = p.sum(1), q.sum(1)
    u = np.bincount(row, pg * (q_below + 0.5 * qg), minlength=n)
    tp, fp = p_tot[row] - p_below, q_tot[row] - q_below  # foreground at threshold = this run's score
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.bincount(row, np.where(pg > 0, pg * tp / np.maximum(tp + fp, 1e-300), 0.0), minlength=n) / p_tot
        auroc = u / (p_tot * q_tot)
    degenerate = (p_tot <= 0) | (q_tot <= 0)
    return {"auroc": np.where(degenerate, np.nan, auroc), "ap": np.where(p_tot > 0, ap, np.nan),
            "degenerate": degenerate}


def saliency_metrics(prob: np.ndarray, truth: np.ndarray, threshold: float = 0.5, tuned: float | None = None,
                     ranking: bool = True) -> dict[str, np.ndarray]:
    """Per-image saliency metrics of probabilities `(image, H, W)` against masks (foreground = > 0.5) at the same
    resolution: `dice_iou` of `prob > threshold`, `ranking_metrics` (auroc, ap; ranking=False skips them, the costly
    part), and with `tuned` also `dice_tuned`, the foreground Dice of `prob > tuned`."""
    t = truth > 0.5
    n = len(prob)
    out = dice_iou(prob > threshold, t)
    if ranking:
        out |= ranking_metrics(prob.reshape(n, -1), t.reshape(n, -1))
    if tuned is not None:
        out["dice_tuned"] = dice_iou(prob > tuned, t)["dice_fg"]
    return out


def is_constant(pred: np.ndarray, threshold: float | None = None, rtol: float = 1e-6) -> bool:
    """Whether predictions carry no information: their std over all pixels is at most `rtol * max(1, |mean|)`, or,
    with `threshold`, every pixel lies on the same side of it (the thresholded mask is constant)."""
    x = np.asarray(pred, np.float64)
    if threshold is not None:
        above = x > threshold
        return bool(above.all() or not above.any())
    return bool(x.std() <= rtol * max(1.0, abs(float(x.mean()))))


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of (image, pixels) arrays; NaN where either row is constant."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(1) / den
    return np.where(den > 1e-12 * a.shape[1], r, np.nan)


def r2_beyond_position(pred: np.ndarray, truth: np.ndarray, mean_map: np.ndarray) -> np.ndarray:
    """Per-image `1 - sum (truth - pred)^2 / sum (truth - mean_map)^2` for `(image, pixels)` float64 arrays and a
    `(1, pixels)` map: the R2 of the depth's deviation from the mean map explained by the prediction's deviation from
    it (no refitting). The mean map scores 0, the truth 1, worse than the mean map is negative; NaN when truth == map."""
    sse = ((truth - pred) ** 2).sum(1)
    sst = ((truth - mean_map) ** 2).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sst > 0, 1 - sse / sst, np.nan)


def deviance_beyond_position(cross_entropy: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Saliency's analogue of R2 beyond position, per image: 1 - CE(probe) / CE(position-only probe), the share of
    the position-only probe's cross-entropy the probe removes (McFadden's pseudo-R2 with the position probe as the
    null model). 0 for the position probe itself, negative for a probe worse than position alone, 1 for a perfect
    one. NaN where the reference is 0."""
    ref = np.asarray(reference, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ref > 0, 1 - np.asarray(cross_entropy, np.float64) / ref, np.nan)


def depth_metrics(pred: np.ndarray, truth: np.ndarray, mean_map: np.ndarray,
                  positioned: np.ndarray | None = None,
                  ranks: bool | tuple[np.ndarray, np.ndarray] = True) -> dict[str, np.ndarray]:
    """Per-image depth metrics for `(image, H, W)` predictions and truth in standardised units, `mean_map (H, W)`.

    rmse: sqrt(mean (truth - pred)^2). pearson / spearman (Pearson of average ranks): NaN when either map is constant.
    r2_beyond_position: `r2_beyond_position` of `pred`, or of `positioned (image, H, W)` when given: the prediction of
    a probe that also sees the mean map as an input channel (`baselines.with_position`). ranks=False skips Spearman
    (NaN), the costly part (two sorts per image), where only the other metrics are needed; a pair of `(image, pixels)`
    arrays is taken as the ranks of (pred, truth), or any positive linear transform of them per image."""
    n = len(pred)
    p = pred.reshape(n, -1).astype(np.float64)
    t = truth.reshape(n, -1).astype(np.float64)
    m = mean_map.reshape(1, -1).astype(np.float64)
    q = p if positioned is None else positioned.reshape(n, -1).astype(np.float64)
    if ranks is True:
        ranks = (rankdata(p, axis=1), rankdata(t, axis=1))
    return {
        "rmse": np.sqrt(((t - p) ** 2).mean(1)),
        "pearson": _pearson_rows(p, t),
        "spearman": _pearson_rows(*ranks) if ranks is not False else np.full(n, np.nan),
        "r2_beyond_position": r2_beyond_position(q, t, m),
        "constant_truth": np.ptp(t, axis=1) == 0,
    }


def depth_truth_ranks(depth: Any, h: int, w: int) -> dict[str, np.ndarray]:
    """Average ranks `(image, pixels)` of depth `(image, H, W)` per resolution ("image", and "layer" at (h, w)), for
    `score_depth(truth_ranks=...)`: every probe scored on the same images shares them."""
    d = np.asarray(depth, np.float32)
    return {"image": rankdata(d.reshape(len(d), -1), axis=1),
            "layer": rankdata(downsample_area(d, h, w).reshape(len(d), -1), axis=1)}


def _pred_ranks(pred: np.ndarray, H: int, W: int) -> dict[str, np.ndarray]:
    """Ranks of layer-resolution predictions `(image, h, w)` at both resolutions. Nearest upsampling by an integer
    factor k repeats every value k times, which maps each average rank r to k r - (k - 1) / 2, so the image-resolution
    ranks (up to that transform, which no correlation sees) are the layer ranks upsampled: one small sort, not a
    sort of every image pixel."""
    n, h, w = pred.shape
    layer = rankdata(pred.reshape(n, -1), axis=1)
    if H % h or W % w:
        return {"layer": layer, "image": rankdata(upsample_nearest(pred, H, W).reshape(n, -1), axis=1)}
    return {"layer": layer, "image": upsample_nearest(layer.reshape(n, h, w), H, W).reshape(n, -1)}


def _nonfinite(pred: np.ndarray, on_nonfinite: OnNonFinite, first: int) -> np.ndarray:
    bad = ~np.isfinite(pred.reshape(len(pred), -1)).all(1)
    if bad.any() and on_nonfinite == "raise":
        raise NonFiniteError("predictions", [first + int(i) for i in np.flatnonzero(bad)])
    return bad


def _summarise(per_image: dict[str, list[np.ndarray]], flags: dict[str, int], n_boot: int, seed: int) -> Scores:
    arrays = {k: np.concatenate(v) for k, v in per_image.items()}
    return Scores(estimates=bootstrap_many(arrays, n_boot=n_boot, seed=seed), per_image=arrays, flags=flags)


def _layer_and_image(pred: np.ndarray, truth: np.ndarray, res: Resolution) -> tuple[np.ndarray, np.ndarray]:
    h, w = pred.shape[-2:]
    H, W = truth.shape[-2:]
    if res == "image":
        return upsample_nearest(pred, H, W), np.asarray(truth, np.float32)
    return pred, downsample_area(truth, h, w)


def score_saliency(
    prob: np.ndarray,
    masks: Any,
    *,
    threshold: float = 0.5,
    tuned_threshold: float | None = None,
    ranking: bool = True,
    resolutions: tuple[Resolution, ...] = ("image", "layer"),
    on_nonfinite: OnNonFinite = "raise",
    n_boot: int = 2000,
    seed: int = 0,
    images_per_chunk: int = 16,
) -> Scores:
    """Score foreground probabilities `(image, h, w)` against masks `(image, H, W)` (values in [0, 1]).

    Prediction foreground = prob > threshold (0.5 = the paper's argmax of two classes); truth foreground = mask > 0.5.
    Keys: f"{res}/dice_fg", f"{res}/dice_bg", f"{res}/iou", f"{res}/auroc", f"{res}/ap" (`ranking_metrics`), and
    with `tuned_threshold` (chosen on training images: `choose_threshold`) f"{res}/dice_tuned"; ranking=False skips
    auroc and ap. Flags: n_nonfinite, n_empty_mask, n_degenerate_mask (no foreground or no background: AUROC
    undefined)."""
    per: dict[str, list[np.ndarray]] = {}
    flags = {"n_nonfinite": 0, "n_empty_mask": 0, "n_degenerate_mask": 0}
    for s in range(0, len(prob), images_per_chunk):
        pr = np.asarray(prob[s : s + images_per_chunk], np.float32)
        bad = _nonfinite(pr, on_nonfinite, s)
        flags["n_nonfinite"] += int(bad.sum())
        pr = np.where(bad[:, None, None], 0.0, pr).astype(np.float32)
        tr = np.asarray(masks[s : s + images_per_chunk], np.float32)
        if not np.isfinite(tr).all():
            raise NonFiniteError("masks", [s + int(i) for i in np.flatnonzero(~np.isfinite(tr).all((1, 2)))])
        for res in resolutions:
            d = saliency_metrics(*_layer_and_image(pr, tr, res), threshold, tuned_threshold, ranking)
            if res == resolutions[0]:
                flags["n_empty_mask"] += int(d["empty_truth"].sum())
                fg = (tr > 0.5).reshape(len(tr), -1).mean(1)  # as `ranking_metrics`' degenerate, without ranking
                flags["n_degenerate_mask"] += int(((fg == 0) | (fg == 1)).sum())
            for k in SALIENCY_KEYS:
                if k in d:
                    per.setdefault(f"{res}/{k}", []).append(np.where(bad, np.nan, d[k]))
    return _summarise(per, flags, n_boot, seed)


def score_depth(
    pred: np.ndarray,
    depth: Any,
    mean_map: np.ndarray,
    *,
    resolutions: tuple[Resolution, ...] = ("image", "layer"),
    on_nonfinite: OnNonFinite = "raise",
    n_boot: int = 2000,
    seed: int = 0,
    images_per_chunk: int = 16,
    positioned: np.ndarray | None = None,
    ranks: bool = True,
    truth_ranks: dict[str, np.ndarray] | None = None,
) -> Scores:
    """Score depth predictions `(image, h, w)` against depth `(image, H, W)`, both standardised with the training
    split's mean and std (`DepthScaler`); `mean_map (H, W)` is the training split's mean standardised depth map
    (`baselines.position_map`), area-averaged to (h, w) for the layer resolution.
    Keys: f"{res}/rmse", f"{res}/pearson", f"{res}/spearman", f"{res}/r2_beyond_position".
    positioned: layer-resolution predictions `(image, h, w)` of a probe that also sees the mean map as an input
    channel (`baselines.with_position`); when given, R2 beyond position scores it instead of `pred`, at image
    resolution with the map's detail finer than the layer added back (position is free at every resolution, so a
    probe that only reproduces the layer-resolution map scores 0 at both).
    ranks=False skips Spearman (NaN estimates); `truth_ranks`: `depth_truth_ranks(depth, h, w)`, when many
    predictions are scored against the same depth.
    Flags: n_nonfinite, n_constant_depth (Spearman/Pearson undefined there, excluded and counted)."""
    h, w = pred.shape[-2:]
    maps = {"image": np.asarray(mean_map, np.float32),
            "layer": downsample_area(np.asarray(mean_map, np.float32)[None], h, w)[0]}
    # The positioned probe sees the map at layer resolution; its finer detail is free too, so it is added back.
    detail = {"image": maps["image"] - upsample_nearest(maps["layer"][None], *maps["image"].shape)[0], "layer": 0.0}
    per: dict[str, list[np.ndarray]] = {}
    flags = {"n_nonfinite": 0, "n_constant_depth": 0}
    for s in range(0, len(pred), images_per_chunk):
        pr = np.asarray(pred[s : s + images_per_chunk], np.float32)
        bad = _nonfinite(pr, on_nonfinite, s)
        if positioned is not None:
            rr = np.asarray(positioned[s : s + images_per_chunk], np.float32)
            bad |= _nonfinite(rr, on_nonfinite, s)
        flags["n_nonfinite"] += int(bad.sum())
        tr = np.asarray(depth[s : s + images_per_chunk], np.float32)
        if not np.isfinite(tr).all():
            raise NonFiniteError("depth", [s + int(i) for i in np.flatnonzero(~np.isfinite(tr).all((1, 2)))])
        pr = np.where(bad[:, None, None], 0.0, pr).astype(np.float32)
        if ranks:
            p_ranks = _pred_ranks(pr, *tr.shape[1:])
            t_ranks = truth_ranks or depth_truth_ranks(tr, h, w)
            chunk = slice(s, s + len(pr)) if truth_ranks else slice(None)
        for res in resolutions:
            p, t = _layer_and_image(pr, tr, res)
            q = None if positioned is None else (
                _layer_and_image(np.where(bad[:, None, None], 0.0, rr), tr, res)[0] + detail[res])
            d = depth_metrics(p, t, maps[res], q, (p_ranks[res], t_ranks[res][chunk]) if ranks else False)
            if res == resolutions[0]:
                flags["n_constant_depth"] += int(d["constant_truth"].sum())
            for k in ("rmse", "pearson", "spearman", "r2_beyond_position"):
                per.setdefault(f"{res}/{k}", []).append(np.where(bad, np.nan, d[k]))
    return _summarise(per, flags, n_boot, seed)


@dataclass
class DepthScaler:
    """Global depth standardisation with the training split's mean and std (scalars), as the paper standardises with
    global constants; fit on training images only so test scores never see test statistics."""

    mean: float
    std: float

    @classmethod
    def fit(cls, depth: Any, *, images_per_chunk: int = 16) -> DepthScaler:
        """Streaming float64 mean/std over all pixels of `(image, H, W)` training depth."""
        n, s1, s2 = 0, 0.0, 0.0
        for s in range(0, depth.shape[0], images_per_chunk):
            d = np.asarray(depth[s : s + images_per_chunk], np.float64)
            n, s1, s2 = n + d.size, s1 + d.sum(), s2 + (d * d).sum()
        mean = s1 / n
        return cls(mean=float(mean), std=float(np.sqrt(max(s2 / n - mean * mean, 0.0))) or 1.0)

    def transform(self, depth: np.ndarray) -> np.ndarray:
        return ((np.asarray(depth, np.float32) - self.mean) / self.std).astype(np.float32)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, np.float32) * self.std + self.mean).astype(np.float32)
