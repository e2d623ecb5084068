"""Edits of activations that make a linear probe read a chosen target (pure torch; used by the interventions).

All functions take activations `a (batch, h, w, c)` in any float dtype, work in float32, and return the input dtype.
Targets are `(batch, h, w)` at the layer's resolution, or `(batch, H, W)` at image resolution (then area-averaged to the
layer for the closed form, or compared after nearest upsampling for the optimised edit, as in the paper).

Saliency targets are foreground probabilities. The closed form needs a logit, and a probability of exactly 0 or 1
has none, so probabilities are clipped to [0.02, 0.98] (logits about +-3.9) before taking the logit: the probe then
reads a confident but finite answer, and the edit norm stays bounded.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from probes.adam import Adam
from probes.linear import LinearProbe
from probes.resample import downsample_area_torch, upsample_nearest_torch

TargetKind = Literal["depth", "saliency"]
PROB_CLIP: tuple[float, float] = (0.02, 0.98)


def _vec(x: Any, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device).float()
    # a copy: arrays from Ray's object store are read-only, which torch warns about
    return torch.tensor(np.asarray(x), device=device).float()


def _layer_target(target: Any, a: torch.Tensor) -> torch.Tensor:
    t = _vec(target, a.device)
    h, w = a.shape[1:3]
    return t if t.shape[-2:] == (h, w) else downsample_area_torch(t, h, w)


def closed_form_edit(
    a: torch.Tensor,
    w: Any,
    b: float,
    target: Any,
    *,
    kind: TargetKind = "depth",
    clip: tuple[float, float] = PROB_CLIP,
    scale: Any = None,
) -> torch.Tensor:
    """Smallest (L2, per position) edit making the linear probe `w.a + b` read `target` at every position:
    a' = a + (y* - w.a - b) w / |w|^2, with y* = target (depth) or logit(clip(target)) (saliency).
    `w (c,)`, `b` are the probe's raw-space weight and bias (`LinearProbe.raw_weight`, `.raw_bias`).

    scale `(c,)` (the probe's per-channel `scale`): take the smallest edit in the probe's own standardised units,
    z = (a - mean) / scale, instead: z' = z + gap w_z / |w_z|^2, i.e. a' = a + gap (scale^2 w) / (w . scale^2 w).
    In raw units the minimal edit piles onto the low-variance channels, where `w` is largest and the network looks
    least; in standardised units each channel moves in proportion to its natural spread."""
    x = a.float()
    wv = _vec(w, a.device)
    y = _layer_target(target, a)
    if kind == "saliency":
        y = torch.logit(y.clamp(*clip))
    gap = y - (x @ wv + float(b))  # (batch, h, w)
    d = wv if scale is None else _vec(scale, a.device) ** 2 * wv
    return (x + gap[..., None] * (d / (wv @ d))).to(a.dtype)


def random_edit(a: torch.Tensor, delta_norm_like: torch.Tensor, seed: int, *, shared: bool = False) -> torch.Tensor:
    """Control edit: at each position move `a` by the same L2 norm as a reference edit, in a random direction.

    `delta_norm_like` is either the reference edit `(batch, h, w, c)` (e.g. edited - original) or its norms
    `(batch, h, w)`. Directions are independent Gaussian unit vectors per position, or one for all if `shared`."""
    x = a.float()
    ref = delta_norm_like.float().to(a.device)
    norm = ref.norm(dim=-1) if ref.dim() == a.dim() else ref
    gen = torch.Generator().manual_seed(seed)
    shape = (1, 1, 1, a.shape[-1]) if shared else tuple(a.shape)
    d = torch.randn(shape, generator=gen).to(a.device)
    d = d / d.norm(dim=-1, keepdim=True)
    return (x + norm[..., None] * d).to(a.dtype)


def probe_loss(out: torch.Tensor, target: torch.Tensor, kind: TargetKind) -> torch.Tensor:
    """The paper's edit loss on probe outputs `(batch, h, w)` (logit or depth): predictions are upsampled (nearest)
    to the target's resolution; cross-entropy against a target probability, or Huber (delta 1) against depth."""
    up = upsample_nearest_torch(out, *target.shape[-2:])
    if kind == "saliency":
        return F.binary_cross_entropy_with_logits(up, target)  # == 2-class softmax CE on (0, logit)
    return F.huber_loss(up, target, delta=1.0)


def optimise_edit(
    a: torch.Tensor, probe: LinearProbe, target: Any, *, lr: float = 5e-3, iters: int = 128
) -> torch.Tensor:
    """The paper's intervention: optimise the activation itself with Adam (no penalty on distance) so that `probe`
    reads `target` (`(batch, h, w)` or `(batch, H, W)`); returns the edited activations in `a`'s dtype."""
    w = _vec(probe.raw_weight, a.device)
    b = probe.raw_bias
    t = _vec(target, a.device)
    x = a.detach().float().clone().requires_grad_(True)
    opt = Adam([x], lr=lr)
    for _ in range(iters):
        loss = probe_loss(x @ w + b, t, probe.kind)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return x.detach().to(a.dtype)
