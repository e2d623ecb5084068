"""One vector probe of the grid, fit and scored: surface normals per pixel and the light direction per image
(`probes.vectors`), the twins of `grid_fit.fit_and_score` for the targets of `VECTOR_TARGETS`.

Features (`GroupActs.positioned`): normals, the activations `(image, h, w, c)` with the training split's mean normal
map appended as three channels (position for free, as for depth); the light, each channel's mean over a 2 x 2
partition of the frame `(image, 4 c)` (the probe's bias carries the mean light). Both are multi-output ridge on
standardised features, alpha chosen on the validation images of the training split, predictions unit-normalised.

Scores (`probes.angular`, test split, 95% bootstrap intervals over images): angular error (mean and, for normals,
median over valid pixels) and the share within 11.25 / 22.5 / 30 degrees, at image resolution and (normals) at the
layer's; the headline `angle_pos`, per image the error of the position-only prediction (the mean normal map, the
mean light) minus the probe's: degrees gained over position, 0 for position alone. `train_score` / `val_score` are
`angle_pos` on the training images / on the validation images from the solution fit without them (layers are
chosen on it). `baseline=True` scores the position-only prediction itself (the position control's row, nothing
fit); `shuffled=True` fits the shuffled-label control (each training image's labels another's).
"""

from __future__ import annotations

import time

import numpy as np

from probes.angular import score_directions, score_normals
from probes.baselines_vectors import (direction_position_prediction, fit_direction_control, fit_normal_control,
                                      normal_position_prediction)
from probes.chunks import NonFiniteError
from probes.metrics import bootstrap_many, is_constant
from probes.vectors import VectorProbe, fit_direction_ridge, fit_normal_ridge
from workflows.stages.grid_data import TEST, TRAIN, VAL, GridData, GroupActs
from workflows.stages.grid_scores import METRIC_NAMES, alpha_at_edge

GAIN = "angle_beyond_position"


def _errors(target: str, pred: np.ndarray, data: GridData, split: int, test: bool) -> dict[str, np.ndarray]:
    """Per-image angular scores `{"image/angular_mean": (image,), ...}` of predictions on `split`'s images (image and
    layer resolution on the test split, image resolution elsewhere)."""
    truth = data.split_labels(target, split)
    if target == "normals":
        return score_normals(pred, truth, data.split_mask(target, split), n_boot=1,
                             resolutions=("image", "layer") if test else ("image",)).per_image
    return {f"image/{k}": v for k, v in score_directions(pred, truth, n_boot=1).per_image.items()}


def _baseline(target: str, data: GridData, n: int, h: int, w: int) -> np.ndarray:
    """The position-only prediction for n images at a layer's (h, w): `(image, h, w, 3)` or `(image, 3)`."""
    if target == "normals":
        return normal_position_prediction(data.mean_maps["normals"], n, h, w)
    return direction_position_prediction(data.mean_maps["light"], n)


def _mean_error(per_image: dict[str, np.ndarray]) -> np.ndarray:
    return per_image["image/angular_mean" if "image/angular_mean" in per_image else "image/angular_error"]


def score_vector(target: str, pred: np.ndarray, data: GridData, split: int, h: int, w: int) -> dict[str, np.ndarray]:
    """Per-image scores of predictions on `split` with the headline `image/angle_beyond_position` (the baseline's
    mean angular error minus the prediction's, the baseline scored once per split and shape)."""
    test = split == TEST
    own = _errors(target, pred, data, split, test)
    base = data._once(("vector_baseline", target, split, h, w), lambda: _mean_error(
        _errors(target, _baseline(target, data, len(pred), h, w), data, split, False)))
    return own | {f"image/{GAIN}": base - _mean_error(own)}


def vector_columns(per_image: dict[str, np.ndarray], target: str, n_boot: int, seed: int) -> dict:
    """metrics.parquet columns of per-image scores: every estimate as `name, name_lo, name_hi` (layer-resolution ones
    prefixed `layer_`), and `per_image` / `per_image_beyond`, the headline per test image."""
    estimates = bootstrap_many(per_image, n_boot=n_boot, seed=seed)
    gain = [float(v) for v in per_image[f"image/{GAIN}"]]
    row: dict = {"per_image": gain, "per_image_beyond": gain}
    for key, est in estimates.items():
        resolution, metric = key.split("/")
        name = ("" if resolution == "image" else "layer_") + METRIC_NAMES[metric]
        row.update({name: est.mean, f"{name}_lo": est.lo, f"{name}_hi": est.hi})
    return row


def fit_and_score_vector(acts: GroupActs, target: str, data: GridData, shuffled: bool = False,
                         baseline: bool = False) -> tuple[dict, dict[str, VectorProbe]]:
    """Fit one vector probe on a group's training features and score it on its test features (module docstring).
    Returns the metric columns (with `error` set instead when the probe cannot be fit or scored) and {target: probe}
    (empty for the baseline)."""
    start = time.perf_counter()
    h, w = acts.train.shape[1:3]
    n_train, n_test = len(data.train), len(data.test)
    try:
        # 1. the probe (none for the position-only baseline)
        probes: dict[str, VectorProbe] = {}
        if baseline:
            pred = {TRAIN: _baseline(target, data, n_train, h, w), TEST: _baseline(target, data, n_test, h, w)}
            pred[VAL] = pred[TRAIN][data.val]
        else:
            x_train, x_test = acts.positioned(target)  # (image, h, w, c + 3) or (image, 4 c)
            labels = data.split_labels(target, TRAIN)
            if target == "normals":
                mask = data.split_mask(target, TRAIN)
                kw = acts.fit_kwargs("normals")
                fit = fit_normal_control if shuffled else fit_normal_ridge
                probe = fit(x_train, labels, mask, seed=data.seed, **kw)
            else:
                probe = (fit_direction_control if shuffled else fit_direction_ridge)(x_train, labels, seed=data.seed)
            probes[target] = probe
            # 2. predictions: training, test, and the validation images from the solution fit without them
            pred = {TRAIN: probe.predict(x_train), TEST: probe.predict(x_test),
                    VAL: probe.predict(x_train[data.val], held_out=True)}
        # 3. scores
        train, val = (score_vector(target, pred[s], data, s, h, w)[f"image/{GAIN}"] for s in (TRAIN, VAL))
        row = vector_columns(score_vector(target, pred[TEST], data, TEST, h, w), target, data.n_boot, data.seed)
    except NonFiniteError as err:
        return {"error": f"non-finite values: {err}", "fit_seconds": time.perf_counter() - start}, {}
    probe = probes.get(target)
    row.update(train_score=float(np.nanmean(train)), val_score=float(np.nanmean(val)), threshold=np.nan,
               alpha=np.nan if probe is None else probe.alpha, alpha_at_edge=alpha_at_edge(probe),
               alpha_positioned=np.nan, alpha_positioned_at_edge=None,
               # one direction everywhere (a probe collapsed onto its bias); the position-only prediction is the
               # reference every gain is measured from, never flagged
               constant_prediction=False if baseline else is_constant(pred[TEST]),
               fit_seconds=time.perf_counter() - start, error=None)
    return row, probes
