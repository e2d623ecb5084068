"""Choosing what to report, on the training split only: the layer (averaged over steps) or the single probe with the
best `train_score`, never the test metric, so a reported test value is not inflated by the choice.

Rows are probe-grid rows as dicts (`probes/metrics.parquet`): target, variant, hook, step, train_score and metrics.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def _finite(row: dict, key: str) -> bool:
    return row.get(key) is not None and bool(np.isfinite(row[key]))


def _candidates(rows: Iterable[dict], target: str, variant: str, metric: str, exclude: Iterable[str]) -> list[dict]:
    excluded = set(exclude)
    return [r for r in rows if r["target"] == target and r["variant"] == variant and r["step"] >= 0
            and r["hook"] not in excluded and _finite(r, metric) and _finite(r, "train_score")]


def best_layer(rows: Iterable[dict], target: str, variant: str, metric: str,
               exclude: Iterable[str] = ()) -> str | None:
    """The hook of `variant` with the best mean `train_score` over its steps, among rows whose `metric` is finite;
    `exclude`: hooks never chosen (e.g. the capture extras). None when no row qualifies."""
    scores: dict[str, list[float]] = {}
    for r in _candidates(rows, target, variant, metric, exclude):
        scores.setdefault(r["hook"], []).append(float(r["train_score"]))
    return max(scores, key=lambda h: float(np.mean(scores[h]))) if scores else None


def best_probe(rows: Iterable[dict], target: str, variant: str, metric: str,
               exclude: Iterable[str] = ()) -> dict | None:
    """The row (one hook and step) of `variant` with the best `train_score`; None when no row qualifies."""
    found = _candidates(rows, target, variant, metric, exclude)
    return max(found, key=lambda r: r["train_score"]) if found else None
