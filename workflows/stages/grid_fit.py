"""One probe of the grid, fit and scored: the probe on a group's activations and its positioned twin, their
predictions on the training, validation and test images, and the row of metrics they make (`grid_scores`). A plain
function of arrays and the grid's data (`grid_data.GridData`), so the grid stage, its controls and benchmarks share it.
"""

from __future__ import annotations

import time

import numpy as np

from probes.baselines import fit_control_probe
from probes.chunks import NonFiniteError
from probes.fit import fit_probe
from probes.linear import LinearProbe
from workflows.stages.grid_data import FIT, TEST, TRAIN, VAL, GridData, GroupActs
from workflows.stages.grid_scores import (HEADLINE, alpha_at_edge, constant_prediction, metric_columns,
                                          score_prediction, train_threshold)

# the weights' keys of the positioned probes (position given for free): depth with the mean map as a channel
# (behind r2_pos), saliency with the position basis (behind dev_pos)
POSITIONED = {"depth": "depth_positioned", "saliency": "saliency_positioned"}


def fit_and_score(acts: GroupActs, target: str, data: GridData,
                  shuffled: bool = False) -> tuple[dict, dict[str, LinearProbe]]:
    """Fit one probe on a group's training activations and score it on its test activations.

    Each target also gets a positioned probe that is given position for free, so what it scores beyond position
    (`grid_scores.BEYOND_POSITION`) comes from the activations: depth's sees the training mean depth map as one more
    channel and predicts the depth's deviation from it (regularisation shrinks towards the map, not towards zero);
    saliency's sees the position basis (`probes.positional`) and is scored against the probe on the basis alone.
    Features that already carry the basis (`acts.has_position`: the position and caption controls) are their own
    positioned saliency probe.

    Scores: `train_score`, the headline metric (`grid_scores.HEADLINE`) on the images the probe was fit on;
    `val_score`, the same on the validation images from the solution fit without them (`LinearProbe.val_weight`; the
    paper's trainer, which keeps none, is refit on the other training images): layers are chosen on it. Saliency's
    `threshold` (for `dice_tuned`) is chosen on the probe's own training predictions, the validation score's on the
    held-out solution's predictions of the other training images. Returns the metric columns (with `error` set
    instead when the probe cannot be fit or scored) and the probes by weights key: {target: probe} and
    {POSITIONED[target]: the positioned probe} where one was fit.
    """
    start = time.perf_counter()
    h, w = acts.train.shape[1:3]
    labels = data.fit_labels(target, h, w)
    depth = target == "depth"
    offset = data.mean_map_at("depth", h, w) if depth else 0.0  # the positioned depth probe predicts a deviation

    def fit(x: np.ndarray, y: np.ndarray, positioned: str | None = None, whole: bool = True) -> LinearProbe:
        kw = acts.fit_kwargs(positioned) if whole else {}  # the standardised blocks are of the whole training split
        if shuffled:
            return fit_control_probe(x, y, target, seed=data.seed, mode=data.mode, **kw)
        return fit_probe(x, y, target, mode=data.mode, seed=data.seed, **kw)

    def held_out(probe: LinearProbe, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Training predictions of the solution fit without the validation images."""
        if probe.val_weight is not None:
            return probe.predict(x, held_out=True)
        val = data.val
        return fit(x[~val], y[~val], whole=False).predict(x)

    try:
        # 1. the probe and its positioned twin
        probes = {target: fit(acts.train, labels)}
        pos_probe, pos_x = None, None
        if depth or not acts.has_position:
            pos_x = acts.positioned(target)  # (train, test)
            y = labels - (data.mean_maps["depth"] if depth and labels.shape[1:] != (h, w) else offset)
            pos_probe = probes[POSITIONED[target]] = fit(pos_x[0], y, positioned=target)
        # 2. predictions `(image, h, w)`: training and test, and held out for the validation score
        pred = {split: probes[target].predict(x) for split, x in ((TRAIN, acts.train), (TEST, acts.test))}
        positioned = dict.fromkeys((TRAIN, TEST, VAL))
        if pos_probe is not None:
            positioned[TRAIN], positioned[TEST] = (offset + pos_probe.predict(x) for x in pos_x)
            if depth:  # depth's headline is its positioned probe's, on the validation images too
                positioned[VAL] = (offset + held_out(pos_probe, pos_x[0], y))[data.val]
        else:  # saliency on features that carry the basis: the probe is its own positioned probe
            positioned[TEST] = pred[TEST]
        held = held_out(probes[target], acts.train, labels)
        # 3. scores: training, validation (held out) and test
        threshold = held_threshold = None
        if not depth:
            threshold = train_threshold(pred[TRAIN], data)
            held_threshold = train_threshold(held[~data.val], data, FIT)
        train = score_prediction(target, pred[TRAIN], data, positioned[TRAIN], TRAIN, threshold)
        val = score_prediction(target, held[data.val], data, positioned[VAL], VAL, held_threshold)
        row = metric_columns(score_prediction(target, pred[TEST], data, positioned[TEST], TEST, threshold), target)
    except NonFiniteError as err:
        return {"error": f"non-finite values: {err}", "fit_seconds": time.perf_counter() - start}, {}
    key = f"image/{HEADLINE[target]}"
    row.update(train_score=train.estimates[key].mean, val_score=val.estimates[key].mean,
               threshold=np.nan if threshold is None else threshold, alpha=probes[target].alpha,
               alpha_at_edge=alpha_at_edge(probes[target]),
               alpha_positioned=np.nan if pos_probe is None else pos_probe.alpha,
               alpha_positioned_at_edge=alpha_at_edge(pos_probe),
               constant_prediction=constant_prediction(target, pred[TEST], data, positioned[TEST] if depth else None,
                                                       threshold),
               fit_seconds=time.perf_counter() - start, error=None)
    return row, probes
