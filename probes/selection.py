"""Choosing what to report, on held-out training images only: the layer (averaged over steps) or the single probe
with the best `val_score`, the headline metric on the validation images of the probe's alpha search predicted by
the solution fit without them. Never the test metric, so a reported test value is not inflated by the choice, and
never `train_score` (the images the probe was fit on), which favours the layers that overfit most.

Rows are probe-grid rows as dicts (`probes/metrics.parquet`): target, variant, hook, step, val_score and metrics.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

SCORE = "val_score"


def _finite(row: dict, key: str) -> bool:
    return row.get(key) is not None and bool(np.isfinite(row[key]))


def _candidates(rows: Iterable[dict], target: str, variant: str, metric: str, exclude: Iterable[str]) -> list[dict]:
    excluded = set(exclude)
    return [r for r in rows if r["target"] == target and r["variant"] == variant and r["step"] >= 0
            and r["hook"] not in excluded and _finite(r, metric) and _finite(r, SCORE)]


def best_layer(rows: Iterable[dict], target: str, variant: str, metric: str,
               exclude: Iterable[str] = ()) -> str | None:
    """The hook of `variant` with the best mean `val_score` over its steps, among rows whose `metric` is finite;
    `exclude`: hooks never chosen (e.g. the capture extras). None when no row qualifies."""
    scores: dict[str, list[float]] = {}
    for r in _candidates(rows, target, variant, metric, exclude):
        scores.setdefault(r["hook"], []).append(float(r[SCORE]))
    return max(scores, key=lambda h: float(np.mean(scores[h]))) if scores else None


def best_probe(rows: Iterable[dict], target: str, variant: str, metric: str,
               exclude: Iterable[str] = ()) -> dict | None:
    """The row (one hook and step) of `variant` with the best `val_score`; None when no row qualifies."""
    found = _candidates(rows, target, variant, metric, exclude)
    return max(found, key=lambda r: r[SCORE]) if found else None
