"""The paper's probe trainer, kept as a selectable mode for faithful reproduction (see docs/paper-method.md).

A bias-free linear layer C -> 2 classes (saliency, cross-entropy) or C -> 1 (depth, Huber with delta 1) applied at every
position; Adam lr 1e-3, 30 epochs, batches of 4 images, no regularisation, no channel standardisation. Predictions are
upsampled (nearest) to the labels' resolution before the loss, exactly as the paper scores them. Unlike the paper we
return the final weights (no checkpoint selection, least of all by test loss).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from probes.adam import Adam
from probes.chunks import check_finite, to_tensor
from probes.linear import Kind, LinearProbe
from probes.resample import upsample_nearest_torch


def _images(array: Any, idx: np.ndarray) -> torch.Tensor:
    """Read images one by one (works for numpy, memmap, zarr, torch and lazy array-likes), stacked as float32."""
    return torch.stack([to_tensor(array[int(i)]).float() for i in idx])


def paper_loss(out: torch.Tensor, labels: torch.Tensor, kind: Kind) -> torch.Tensor:
    """Mean loss of layer outputs `(batch, h, w, k)` against labels `(batch, H, W)` after nearest upsampling.

    Saliency: k = 2 logits, cross-entropy against the foreground fraction (for 0/1 masks this is the class-index
    cross-entropy of the paper). Depth: k = 1, Huber with delta 1."""
    H, W = labels.shape[-2:]
    up = upsample_nearest_torch(out.permute(0, 3, 1, 2), H, W)  # (batch, k, H, W)
    if kind == "saliency":
        target = torch.stack([1 - labels, labels], dim=1)
        return F.cross_entropy(up, target)
    return F.huber_loss(up[:, 0], labels, delta=1.0)


def train_paper_probe(
    acts: Any,
    labels: Any,
    *,
    kind: Kind,
    epochs: int = 30,
    batch_images: int = 4,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
) -> LinearProbe:
    """Train the paper's probe on `(image, h, w, c)` activations and `(image, H, W)` labels (usually H = 8 h).

    Returns a LinearProbe with method "paper": its raw weight is W[1] - W[0] for saliency (the logit of class 1 over
    class 0, equivalent to the 2-way softmax) or W[0] for depth; bias 0, identity standardisation."""
    n, h, w, c = acts.shape
    gen = torch.Generator().manual_seed(seed)
    k = 2 if kind == "saliency" else 1
    layer = torch.nn.Linear(c, k, bias=False)
    with torch.no_grad():  # nn.Linear's default init, drawn from our generator so runs are reproducible
        bound = 1.0 / np.sqrt(c)
        layer.weight.copy_(torch.empty(k, c).uniform_(-bound, bound, generator=gen))
    layer = layer.to(device)
    opt = Adam(list(layer.parameters()), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).numpy()
        for s in range(0, n, batch_images):
            idx = np.sort(order[s : s + batch_images])
            x = _images(acts, idx).to(device)
            y = _images(labels, idx).to(device)
            check_finite(x, "activations", 0)
            loss = paper_loss(layer(x), y, kind)
            opt.zero_grad()
            loss.backward()
            opt.step()
    wt = layer.weight.detach().double().cpu().numpy()
    raw = wt[1] - wt[0] if kind == "saliency" else wt[0]
    return LinearProbe(kind=kind, method="paper", weight=raw, bias=0.0, mean=np.zeros(c), scale=np.ones(c))
