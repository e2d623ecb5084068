"""One entry point for fitting a probe: our regularised closed-form/Newton probes or the paper's trainer."""

from __future__ import annotations

from typing import Any, Literal

from probes.linear import Kind, LinearProbe, fit_logistic, fit_ridge
from probes.paper import train_paper_probe

Mode = Literal["ours", "paper"]


def fit_probe(acts: Any, labels: Any, kind: Kind, *, mode: Mode = "ours", seed: int = 0, **kwargs: Any) -> LinearProbe:
    """Fit a probe of `kind` on `(image, h, w, c)` activations and `(image, H, W)` labels.

    mode "ours": saliency -> `fit_logistic`, depth -> `fit_ridge` (alpha chosen on a seeded by-image validation split
    of these training images). mode "paper": `train_paper_probe`. Extra keyword arguments go to the chosen trainer."""
    if kind not in ("saliency", "depth"):
        raise ValueError(f"unknown probe kind {kind!r}")
    if mode == "paper":
        return train_paper_probe(acts, labels, kind=kind, seed=seed, **kwargs)
    if mode != "ours":
        raise ValueError(f"unknown mode {mode!r}")
    fit = fit_logistic if kind == "saliency" else fit_ridge
    return fit(acts, labels, kind=kind, seed=seed, **kwargs)
