"""Angular scores of direction predictions: per-pixel surface normals and per-image directions (the light).

The error of a predicted direction p against a true unit direction t is the angle between them,
    e = arccos(clip(p.t / (|p| |t|), -1, 1))   in degrees, in [0, 180];
a zero prediction (no direction) counts as 90 degrees, the error of a direction picked at random on average.

Normals, per image, over its valid pixels only (the toy renderer's `surface`; sky has no normal), each pixel weighted
by its valid share q (1 at image resolution; the valid share of the cell at layer resolution, `vectors.normal_targets`):
    angular_mean   = sum q e / sum q
    angular_median = the smallest e with at least half of the weight at or below it
    within_T       = sum q [e < T] / sum q,   T = 11.25, 22.5, 30 degrees (the usual thresholds of normal estimation)
then, as every score here (`probes.metrics`), the mean over images with a seeded 95% percentile-bootstrap interval
over images; an image without any valid pixel is undefined (NaN), excluded and counted. Images weigh equally, so
the scores are means of per-image scores, not the pooled pixel shares some benchmarks report.

Resolutions as for depth: "image" upsamples the `(image, h, w, 3)` prediction (nearest) to the normals' `(H, W)`;
"layer" compares it with the normals area-averaged to `(h, w)` (`vectors.normal_targets`).

Directions, per image: `angular_error` = e, and `within_T` = [e < T], whose mean over images is the share of images
within T. Memory: one chunk of `images_per_chunk` images at image resolution in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from probes.metrics import OnNonFinite, Resolution, Scores, _nonfinite, _summarise
from probes.resample import upsample_nearest
from probes.vectors import check_normals, normal_targets

ANGLE_THRESHOLDS: tuple[float, ...] = (11.25, 22.5, 30.0)
NORMAL_KEYS = ("angular_mean", "angular_median") + tuple(f"within_{t:g}" for t in ANGLE_THRESHOLDS)
DIRECTION_KEYS = ("angular_error",) + tuple(f"within_{t:g}" for t in ANGLE_THRESHOLDS)


def angular_error(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Degrees between directions along the last axis of broadcastable arrays (float64); 90 where either is zero."""
    p, t = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    den = np.linalg.norm(p, axis=-1) * np.linalg.norm(t, axis=-1)
    cos = np.where(den > 0, (p * t).sum(-1) / np.where(den > 0, den, 1.0), 0.0)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def weighted_angular_metrics(errors: np.ndarray, weights: np.ndarray,
                             thresholds: tuple[float, ...] = ANGLE_THRESHOLDS) -> dict[str, np.ndarray]:
    """Per-image metrics (NORMAL_KEYS) of errors `(image, pixels)` in degrees with weights `(image, pixels)` >= 0
    (0 = not a valid pixel); NaN for an image whose weights sum to 0."""
    e = np.asarray(errors, np.float64)
    q = np.asarray(weights, np.float64)
    total = q.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"angular_mean": (q * e).sum(1) / total}
        for t in thresholds:
            out[f"within_{t:g}"] = (q * (e < t)).sum(1) / total
    order = np.argsort(e, axis=1, kind="stable")
    cum = np.cumsum(np.take_along_axis(q, order, 1), axis=1)  # (image, pixels) weight at or below each sorted error
    first = np.argmax(cum >= 0.5 * total[:, None] - 1e-12 * total[:, None], axis=1)
    out["angular_median"] = np.take_along_axis(np.take_along_axis(e, order, 1), first[:, None], 1)[:, 0]
    undefined = total <= 0
    return {k: np.where(undefined, np.nan, v) for k, v in out.items()} | {"no_surface": undefined}


def score_normals(
    pred: np.ndarray,
    normals: Any,
    valid: Any,
    *,
    resolutions: tuple[Resolution, ...] = ("image", "layer"),
    on_nonfinite: OnNonFinite = "raise",
    n_boot: int = 2000,
    seed: int = 0,
    images_per_chunk: int = 16,
) -> Scores:
    """Score normal predictions `(image, h, w, 3)` (any length: only their direction counts) against unit normals
    `(image, H, W, 3)` on the pixels of `valid (image, H, W)`. Keys f"{res}/{key}" for key in NORMAL_KEYS.
    Flags: n_nonfinite (predictions; "flag" scores those images NaN, "raise" raises NonFiniteError), n_no_surface
    (images without a valid pixel). Non-finite or non-unit valid normals raise (`vectors.check_normals`)."""
    n, h, w, _ = pred.shape
    if tuple(valid.shape[:1]) != (n,) or tuple(normals.shape[:1]) != (n,):
        raise ValueError(f"{n} predictions but normals for {normals.shape[0]} and a mask for {valid.shape[0]} images")
    per: dict[str, list[np.ndarray]] = {}
    flags = {"n_nonfinite": 0, "n_no_surface": 0}
    for s in range(0, n, images_per_chunk):
        pr = np.asarray(pred[s : s + images_per_chunk], np.float64)
        bad = _nonfinite(pr, on_nonfinite, s)
        flags["n_nonfinite"] += int(bad.sum())
        pr = np.where(bad[:, None, None, None], 0.0, pr)
        tr = np.asarray(normals[s : s + images_per_chunk], np.float32)
        va = np.asarray(valid[s : s + images_per_chunk], bool)
        check_normals(tr, va, first_image=s)
        m = len(pr)
        for res in resolutions:
            if res == "image":
                H, W = va.shape[1:]
                up = upsample_nearest(pr.transpose(0, 3, 1, 2), H, W).transpose(0, 2, 3, 1)  # (image, H, W, 3)
                err, q = angular_error(up, tr).reshape(m, -1), va.reshape(m, -1)
            else:
                t_layer, q_layer = normal_targets(tr, va, h, w)
                err, q = angular_error(pr, t_layer).reshape(m, -1), q_layer.reshape(m, -1)
            d = weighted_angular_metrics(err, q)
            if res == resolutions[0]:
                flags["n_no_surface"] += int(d["no_surface"].sum())
            for k in NORMAL_KEYS:
                per.setdefault(f"{res}/{k}", []).append(np.where(bad, np.nan, d[k]))
    return _summarise(per, flags, n_boot, seed)


def score_directions(pred: np.ndarray, truth: Any, *, on_nonfinite: OnNonFinite = "raise", n_boot: int = 2000,
                     seed: int = 0) -> Scores:
    """Score one predicted direction per image, `(image, k)`, against unit directions `(image, k)`. Keys
    DIRECTION_KEYS; flag n_nonfinite as in `score_normals`."""
    p = np.asarray(pred, np.float64)
    t = np.asarray(truth, np.float32)
    if p.ndim != 2 or p.shape != t.shape:
        raise ValueError(f"predictions and directions must both be (image, k), got {p.shape} and {t.shape}")
    check_normals(t[:, None, None], np.ones((len(t), 1, 1), bool), "directions")
    bad = _nonfinite(p, on_nonfinite, 0)
    err = np.where(bad, np.nan, angular_error(np.where(bad[:, None], 0.0, p), t))
    per = {"angular_error": [err]}
    for th in ANGLE_THRESHOLDS:
        per[f"within_{th:g}"] = [np.where(bad, np.nan, (err < th).astype(np.float64))]
    return _summarise(per, {"n_nonfinite": int(bad.sum())}, n_boot, seed)
