"""Linear probes for unit-vector targets: per-pixel surface normals and per-image directions (the light).

Both are multi-output ridge regressions on standardised features, solved exactly like `linear.fit_ridge`: sufficient
statistics in one pass, every alpha of the grid from one eigendecomposition of the c x c covariance (the k = 3
outputs share it: `linear._ridge_solutions`), the alpha with the least validation squared error (summed over the
outputs) on a seeded by-image split of the *training* images, then a refit on all of them. Predictions are
unit-normalised: a probe predicts a direction, and the scores (`probes.angular`) are angles.

* Per-pixel (`fit_normal_ridge`): activations `(image, h, w, c)`, normals `(image, H, W, 3)` at image or layer
  resolution with a mask of the pixels that have one (`(image, H, W)` bool: the toy renderer's `surface`, False on
  sky). Targets go to the layer's resolution by an area average of the valid normals, renormalised, and every layer
  pixel is weighted by the share of its area that is valid (`normal_targets`), so sky never enters the fit and a cell
  half on sky counts half. Objective (x standardised, w_i the valid share, N = sum_i w_i, bias b unpenalised):
      sum_i w_i |y_i - W^T x_i - b|^2 / N + alpha |W|_F^2,   W (c, 3)
  Memory: O(c^2 + c k) statistics in float64, the layer-resolution targets (image, h, w, 3) and weights in float32,
  one block of activations (`chunk_bytes`), or all of them as float32 when they fit in `cache_bytes` (then a single
  read); time: one float32 GEMM (pixels x c x c) per block plus one c x c eigendecomposition.
* Per-image (`fit_direction_ridge`): features `(image, d)`, typically `pool_activations`: each channel's mean over
  the image, or over each cell of a grid x grid partition (d = c grid^2, so the probe can weigh where in the image the
  evidence is: shading on one side of the objects). Objective: the same with one row per image and w_i = 1.
  Memory O(d^2) float64 (d = 5120 for c = 1280, grid 2: 200 MB) and O(d^3) time for the eigendecomposition; the
  pooling streams blocks of images in O(chunk_bytes + image x d).

Each probe keeps the chosen alpha's solution fit without the validation images (`val_weight`, `val_bias`), whose
predictions on those images are held out (`predict(held_out=True)`), to choose a layer without test images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from probes.chunks import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_CHUNK_BYTES,
    StandardisedBlocks,
    check_finite,
    iter_blocks,
)
from probes.linear import RIDGE_ALPHAS, _mse, _ridge_solutions, validation_split
from probes.resample import _area_matrix, downsample_area

UNIT_TOLERANCE = 1e-3  # |1 - |n|| allowed for a valid normal (float16 storage rounds to ~5e-4)


@dataclass
class VectorProbe:
    """A fitted vector probe. `weight (c, k)` / `bias (k,)` act on standardised features (a - mean) / scale; the
    output direction is normalise(a . raw_weight + raw_bias)."""

    weight: np.ndarray  # (c, k) float64
    bias: np.ndarray  # (k,)
    mean: np.ndarray  # (c,)
    scale: np.ndarray  # (c,)
    alpha: float = 0.0
    alpha_grid: np.ndarray = field(default_factory=lambda: np.zeros(0))
    val_losses: np.ndarray = field(default_factory=lambda: np.zeros(0))  # validation squared error per alpha
    val_weight: np.ndarray | None = None  # (c, k): the chosen alpha fit without the validation images
    val_bias: np.ndarray | None = None  # (k,)

    @property
    def raw_weight(self) -> np.ndarray:
        return self.weight / self.scale[:, None]

    @property
    def raw_bias(self) -> np.ndarray:
        return self.bias - (self.mean / self.scale) @ self.weight

    def decision(self, feats: Any, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES, held_out: bool = False) -> np.ndarray:
        """Unnormalised outputs, streamed: `(image, h, w, c)` -> `(image, h, w, k)`, or `(image, c)` -> `(image, k)`
        float32. held_out: with the solution fit without the validation images, for validation scores."""
        weight, bias = (self.val_weight, self.val_bias) if held_out else (self.weight, self.bias)
        if weight is None or bias is None:
            raise ValueError("this probe was fit without a validation split: it has no held-out solution")
        w = torch.from_numpy((weight / self.scale[:, None]).astype(np.float32))
        b = torch.from_numpy((bias - (self.mean / self.scale) @ weight).astype(np.float32))
        out = np.empty((*feats.shape[:-1], weight.shape[1]), np.float32)
        for idx, x in iter_blocks(feats, chunk_bytes=chunk_bytes):
            out[idx] = (x @ w + b).numpy()
        return out

    def predict(self, feats: Any, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES, held_out: bool = False) -> np.ndarray:
        """Unit directions, `decision` normalised along the last axis (a zero output stays zero: 90 degrees from
        any truth)."""
        return unit(self.decision(feats, chunk_bytes=chunk_bytes, held_out=held_out))

    def to_dict(self) -> dict[str, np.ndarray]:
        """Arrays only, for `safetensors.numpy.save_file`."""
        out = {"weight": self.weight, "bias": self.bias, "mean": self.mean, "scale": self.scale,
               "alpha": np.asarray([self.alpha]), "alpha_grid": self.alpha_grid, "val_losses": self.val_losses}
        if self.val_weight is not None and self.val_bias is not None:
            out |= {"val_weight": self.val_weight, "val_bias": self.val_bias}
        return {k: np.ascontiguousarray(v, np.float64) for k, v in out.items()}

    @classmethod
    def from_dict(cls, d: dict[str, np.ndarray]) -> VectorProbe:
        get = lambda k: np.asarray(d[k], np.float64) if k in d else None  # noqa: E731
        return cls(weight=get("weight"), bias=get("bias"), mean=get("mean"), scale=get("scale"),
                   alpha=float(d["alpha"][0]), alpha_grid=get("alpha_grid"), val_losses=get("val_losses"),
                   val_weight=get("val_weight"), val_bias=get("val_bias"))


def unit(v: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """`v / |v|` along the last axis, in v's dtype; vectors shorter than eps become zero."""
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.where(norm > eps, v / np.maximum(norm, eps), 0.0).astype(v.dtype)


def check_normals(normals: np.ndarray, valid: np.ndarray, what: str = "normals", first_image: int = 0) -> None:
    """Raise if `normals (image, H, W, 3)` are non-finite anywhere (NonFiniteError) or not unit length within
    UNIT_TOLERANCE on a `valid (image, H, W)` pixel (ValueError naming the images); `valid` must match in shape."""
    if normals.ndim != 4 or normals.shape[-1] != 3:
        raise ValueError(f"{what} must be (image, H, W, 3), got shape {normals.shape}")
    if tuple(valid.shape) != tuple(normals.shape[:3]):
        raise ValueError(f"the valid-pixel mask of {what} must be (image, H, W) = {normals.shape[:3]}, "
                         f"got {tuple(valid.shape)}")
    check_finite(normals, what, first_image)
    off = np.abs(np.linalg.norm(normals.astype(np.float64), axis=-1) - 1) > UNIT_TOLERANCE
    bad = np.flatnonzero((off & np.asarray(valid, bool)).any((1, 2)))
    if len(bad):
        shown = [first_image + int(i) for i in bad[:10]]
        raise ValueError(f"{what} are not unit vectors on valid pixels of images {shown}"
                         f"{f' (+{len(bad) - 10} more)' if len(bad) > 10 else ''}")


def normal_targets(normals: Any, valid: Any, h: int, w: int, *,
                   images_per_chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Normals `(image, H, W, 3)` and their valid mask `(image, H, W)` -> layer targets `(image, h, w, 3)` float32
    (the area mean of the cell's valid normals, renormalised; zero where none is valid) and weights `(image, h, w)`
    float32 (the valid share of the cell's area). Checked with `check_normals`, a chunk of images at a time."""
    n, H, W = valid.shape
    targets, weights = np.empty((n, h, w, 3), np.float32), np.empty((n, h, w), np.float32)
    for s in range(0, n, images_per_chunk):
        nb = np.asarray(normals[s : s + images_per_chunk], np.float32)
        vb = np.asarray(valid[s : s + images_per_chunk], bool)
        check_normals(nb, vb, first_image=s)
        m = len(nb)
        masked = np.where(vb[..., None], nb, 0.0).transpose(0, 3, 1, 2).reshape(m * 3, H, W)  # (image * 3, H, W)
        summed = downsample_area(masked, h, w).reshape(m, 3, h, w).transpose(0, 2, 3, 1)
        targets[s : s + m] = unit(summed, 1e-6)
        share = downsample_area(vb.astype(np.float32), h, w)
        weights[s : s + m] = np.where(np.linalg.norm(summed, axis=-1) > 1e-6, share, 0.0)  # cancelling normals: none
    return targets, weights


def _weighted_sums(blocks: Any, y: np.ndarray, weights: np.ndarray, val: np.ndarray, c: int,
                   device: str) -> tuple[dict, dict]:
    """Weighted sufficient statistics of standardised x `(rows, c)` and vector targets for training (~val) and
    validation images in one pass: xx = X^T D X, x = X^T d, n = sum d, xy = X^T D Y, y = Y^T d, yy = sum d |y|^2
    (d the row weights). float32 GEMMs per block, float64 across blocks; training = totals - validation."""
    k = y.shape[-1]
    zeros = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=device)  # noqa: E731
    acc = [{"xx": zeros(c, c), "x": zeros(c), "n": zeros(), "xy": zeros(c, k), "y": zeros(k), "yy": zeros()}
           for _ in range(2)]

    def add(a: dict, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor) -> None:
        xd = x * d[:, None]
        a["xx"] += (x.T @ xd).double()
        a["x"] += xd.sum(0).double()
        a["n"] += d.double().sum()
        a["xy"] += (xd.T @ t).double()
        a["y"] += (t * d[:, None]).sum(0).double()
        a["yy"] += (d.double() * (t.double() ** 2).sum(1)).sum()

    for idx, x in blocks:
        t = torch.from_numpy(y[idx].reshape(-1, k)).to(device)
        d = torch.from_numpy(weights[idx].reshape(-1)).to(device)
        add(acc[0], x, t, d)
        in_val = torch.from_numpy(np.repeat(val[idx], x.shape[0] // len(idx))).to(device)
        if bool(in_val.any()):
            add(acc[1], x[in_val], t[in_val], d[in_val])
    tot, va = ({key: v.cpu().numpy() for key, v in a.items()} for a in acc)
    return {key: tot[key] - va[key] for key in tot}, va


def _solve(blocks: Any, y: np.ndarray, weights: np.ndarray, n_images: int, c: int, alphas: tuple[float, ...],
           val_fraction: float, seed: int, device: str) -> dict[str, Any]:
    """The alpha search and final fit shared by both probes: VectorProbe fields except the channel statistics."""
    val = validation_split(n_images, val_fraction, seed)
    s_tr, s_va = _weighted_sums(blocks, y, weights, val, c, device)
    if s_tr["n"] <= 0 or s_va["n"] <= 0:
        raise ValueError("no valid pixels in the training or validation images: nothing to fit or to choose alpha on")
    grid = np.asarray(alphas, np.float64)
    ws_tr, bs_tr = _ridge_solutions(s_tr, grid)
    losses = _mse(s_va, ws_tr, bs_tr)
    best = int(np.argmin(losses))
    ws, bs = _ridge_solutions({key: s_tr[key] + s_va[key] for key in s_tr}, grid[best : best + 1])
    return {"weight": ws[0], "bias": bs[0], "alpha": float(grid[best]), "alpha_grid": grid, "val_losses": losses,
            "val_weight": ws_tr[best], "val_bias": bs_tr[best]}


def fit_normal_ridge(
    acts: Any,
    normals: Any,
    valid: Any,
    *,
    alphas: tuple[float, ...] = RIDGE_ALPHAS,
    val_fraction: float = 0.2,
    seed: int = 0,
    device: str = "cpu",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    blocks: StandardisedBlocks | None = None,
) -> VectorProbe:
    """Per-pixel normal probe on `(image, h, w, c)` activations for normals `(image, H, W, 3)` with their valid mask
    `(image, H, W)` (image or layer resolution; see the module docstring for the objective and memory).
    `blocks`: `StandardisedBlocks.with_stats(acts)` when several probes are fit on the same activations."""
    n, h, w, c = acts.shape
    if valid.shape[0] != n or normals.shape[0] != n:
        raise ValueError(f"activations hold {n} images but normals {normals.shape[0]} and mask {valid.shape[0]}")
    y, weights = normal_targets(normals, valid, h, w)
    if blocks is None:
        blocks = StandardisedBlocks.with_stats(acts, chunk_bytes=chunk_bytes, cache_bytes=cache_bytes, device=device)
    fit = _solve(blocks, y, weights, n, c, alphas, val_fraction, seed, device)
    return VectorProbe(mean=blocks.stats.mean, scale=blocks.stats.scale, **fit)


def pool_activations(acts: Any, grid: int = 1, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> np.ndarray:
    """Per-image features `(image, grid * grid * c)` float32 from `(image, h, w, c)` activations: each channel's area
    mean over every cell of a grid x grid partition of the frame (grid 1: the global mean), cells in row-major order,
    channels fastest. Streamed a block of images at a time."""
    n, h, w, c = acts.shape
    if not 1 <= grid <= min(h, w):
        raise ValueError(f"grid must be in [1, {min(h, w)}] for a {h}x{w} layer, got {grid}")
    ry = torch.from_numpy(_area_matrix(grid, h).astype(np.float32))  # (grid, h) rows of cell weights
    rx = torch.from_numpy(_area_matrix(grid, w).astype(np.float32))
    out = np.empty((n, grid * grid * c), np.float32)
    for idx, x in iter_blocks(acts, chunk_bytes=chunk_bytes):
        out[idx] = torch.einsum("iy,nyxc,jx->nijc", ry, x, rx).reshape(len(idx), -1).numpy()
    return out


def fit_direction_ridge(
    features: Any,
    directions: Any,
    *,
    alphas: tuple[float, ...] = RIDGE_ALPHAS,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> VectorProbe:
    """Per-image direction probe: features `(image, d)` (e.g. `pool_activations`) -> unit directions `(image, k)`
    (the light, k = 3), every image weighted 1. Checked: finite, unit directions."""
    x = np.asarray(features, np.float32)
    y = np.asarray(directions, np.float32)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features must be (image, d) and directions (image, k) for the same images, got "
                         f"{x.shape} and {y.shape}")
    check_finite(torch.from_numpy(x), "features")
    check_normals(y[:, None, None], np.ones((len(y), 1, 1), bool), "directions")
    mean = x.astype(np.float64).mean(0)
    scale = x.astype(np.float64).std(0)
    scale[scale < 1e-6] = 1.0
    z = torch.from_numpy(((x - mean) / scale).astype(np.float32))
    blocks = [(np.arange(len(x)), z)]  # one block: the image rows are small
    fit = _solve(blocks, y, np.ones(len(y), np.float32), len(y), x.shape[1], alphas, val_fraction, seed, "cpu")
    return VectorProbe(mean=mean, scale=scale, **fit)
