"""Linear probes shared across positions: one weight per channel, applied at every pixel of a layer.

Depth uses ridge regression, saliency logistic regression (targets may be fractions in [0, 1], as area-averaged masks
are). Both fit on standardised channels and pick the L2 strength on a validation split of the *training* images
(by image, seeded); the final probe is refit on all training images with the chosen strength. Everything streams over
blocks of images, so memory is O(c^2 + a few blocks + cache_bytes) whatever the number of pixels:

* ridge: one pass for channel stats, one pass for sufficient statistics (X^T X is c x c; a single read when the
  activations fit in `cache_bytes`); every alpha is then solved from an eigendecomposition and scored on the
  validation statistics exactly;
* logistic: Newton/IRLS with a lagged Hessian, each iteration one pass accumulating the gradient (and, when the
  quadratic model stops predicting well, the (c+1) x (c+1) Hessian, from a strided subset of pixels) in float64 from
  float32 blocks; alphas are walked strong-to-weak with warm starts, each starting from the previous solution's pass,
  the validation loss accumulated in the same passes. Beyond `cache_bytes` the path
  runs on a resident pixel sample of every training image and only the final fit streams (see fit_logistic).

Each probe also keeps the solution at the chosen alpha fit *before* the validation images were pooled back in
(`val_weight`, `val_bias`: free, it is the alpha search's own): its predictions on the validation images are
held-out predictions, so a layer can be chosen on a validation score without refitting and without test images.

Objectives (x standardised, n pixels, bias unpenalised):
  ridge:    mean_i (y_i - x_i.w - b)^2                       + alpha |w|^2
  logistic: mean_i [softplus(z_i) - y_i z_i] + alpha |w|^2,   z_i = x_i.w + b
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.special import expit
import torch

from probes.chunks import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_CHUNK_BYTES,
    StandardisedBlocks,
    check_finite,
    iter_blocks,
    sample_pixels,
)
from probes.resample import downsample_area

Blocks = Iterable[tuple[np.ndarray, torch.Tensor]]  # (image indices, standardised x (pixels, c)), re-iterable
Kind = Literal["saliency", "depth"]
KINDS: tuple[str, ...] = ("saliency", "depth")
METHODS: tuple[str, ...] = ("ridge", "logistic", "paper")
RIDGE_ALPHAS: tuple[float, ...] = tuple(10.0 ** np.arange(-6, 3))
LOGISTIC_ALPHAS: tuple[float, ...] = tuple(10.0 ** np.arange(-1, -7, -1))  # strong -> weak, for warm starts


@dataclass
class LinearProbe:
    """A fitted probe. `weight`/`bias` act on standardised channels (a - mean) / scale; `raw_weight`/`raw_bias` are the
    same map on raw activations: output = a . raw_weight + raw_bias (a logit for saliency, a value for depth)."""

    kind: Kind
    method: str
    weight: np.ndarray  # (c,) float64
    bias: float
    mean: np.ndarray  # (c,)
    scale: np.ndarray  # (c,)
    alpha: float = 0.0
    alpha_grid: np.ndarray = field(default_factory=lambda: np.zeros(0))
    val_losses: np.ndarray = field(default_factory=lambda: np.zeros(0))  # validation loss per alpha in alpha_grid
    # the chosen alpha's solution on the training images outside the validation split (`validation_split`), before
    # the final refit; None without a validation split (a single alpha, the paper's trainer)
    val_weight: np.ndarray | None = None  # (c,) on standardised channels, like `weight`
    val_bias: float = float("nan")

    @property
    def raw_weight(self) -> np.ndarray:
        return self.weight / self.scale

    @property
    def raw_bias(self) -> float:
        return float(self.bias - np.dot(self.mean / self.scale, self.weight))

    def decision(self, acts: Any, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES, held_out: bool = False) -> np.ndarray:
        """Logit (saliency) or value (depth) per pixel: `(image, h, w, c)` -> `(image, h, w)` float32, streamed.
        held_out: with the solution fit without the validation images (`val_weight`), for validation scores."""
        weight, bias = (self.val_weight, self.val_bias) if held_out else (self.weight, self.bias)
        if weight is None:
            raise ValueError("this probe was fit without a validation split: it has no held-out solution")
        w = torch.from_numpy((weight / self.scale).astype(np.float32))
        b = float(bias - np.dot(self.mean / self.scale, weight))
        out = np.empty(tuple(acts.shape[:-1]), np.float32)
        for idx, x in iter_blocks(acts, chunk_bytes=chunk_bytes):
            out[idx] = (x @ w + b).numpy()
        return out

    def predict(self, acts: Any, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES, held_out: bool = False) -> np.ndarray:
        """Foreground probability (saliency) or depth (depth) per pixel, `(image, h, w)` float32; `held_out` as
        for `decision`."""
        z = self.decision(acts, chunk_bytes=chunk_bytes, held_out=held_out)
        return expit(z).astype(np.float32) if self.kind == "saliency" else z

    def to_dict(self) -> dict[str, np.ndarray]:
        """Arrays only, for `safetensors.numpy.save_file`. Strings are stored as codes into KINDS / METHODS."""
        return {
            "weight": np.asarray(self.weight, np.float64),
            "bias": np.asarray([self.bias], np.float64),
            "mean": np.asarray(self.mean, np.float64),
            "scale": np.asarray(self.scale, np.float64),
            "alpha": np.asarray([self.alpha], np.float64),
            "alpha_grid": np.asarray(self.alpha_grid, np.float64),
            "val_losses": np.asarray(self.val_losses, np.float64),
            "kind_code": np.asarray([KINDS.index(self.kind)], np.int64),
            "method_code": np.asarray([METHODS.index(self.method)], np.int64),
        } | ({} if self.val_weight is None else {"val_weight": np.asarray(self.val_weight, np.float64),
                                                  "val_bias": np.asarray([self.val_bias], np.float64)})

    @classmethod
    def from_dict(cls, d: dict[str, np.ndarray]) -> LinearProbe:
        return cls(
            kind=KINDS[int(d["kind_code"][0])],  # type: ignore[arg-type]
            method=METHODS[int(d["method_code"][0])],
            weight=np.asarray(d["weight"], np.float64),
            bias=float(d["bias"][0]),
            mean=np.asarray(d["mean"], np.float64),
            scale=np.asarray(d["scale"], np.float64),
            alpha=float(d["alpha"][0]),
            alpha_grid=np.asarray(d["alpha_grid"], np.float64),
            val_losses=np.asarray(d["val_losses"], np.float64),
            val_weight=np.asarray(d["val_weight"], np.float64) if "val_weight" in d else None,
            val_bias=float(d["val_bias"][0]) if "val_bias" in d else float("nan"),
        )


def validation_split(n_images: int, val_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Boolean mask over training images, True = held out for choosing alpha. Whole images, never pixels, so
    neighbouring (correlated) pixels never straddle the split. At least one image on each side when n_images >= 2."""
    if n_images < 2:
        raise ValueError("need at least 2 training images to carve a validation split")
    n_val = int(np.clip(round(val_fraction * n_images), 1, n_images - 1))
    val = np.zeros(n_images, bool)
    val[np.random.default_rng(seed).permutation(n_images)[:n_val]] = True
    return val


def layer_targets(labels: Any, h: int, w: int) -> np.ndarray:
    """Labels `(image, H, W)` at image or layer resolution -> `(image, h, w)` float32 by area average, checked
    finite (NonFiniteError otherwise)."""
    y = downsample_area(labels, h, w)
    check_finite(torch.from_numpy(y), "labels")
    return y


def _sums(blocks: StandardisedBlocks, y: np.ndarray, val: np.ndarray, c: int, device: str) -> tuple[dict, dict]:
    """Sufficient statistics of standardised x and y for training (~val) and validation images, in one pass
    (float32 GEMM per block, float64 across blocks). Totals come from the whole block and validation from its rows
    only, training = totals - validation, so the larger share is never copied. The statistics of x alone (x'x, the
    sum of x, the count), the costly part, are kept on `blocks` per validation split: a second probe on the same
    activations (a shuffled-label control) only adds those that involve y."""
    memo = blocks.memo.setdefault(("ridge_x", val.tobytes()), {})
    need_x = not memo
    acc = [{"xy": torch.zeros(c, dtype=torch.float64, device=device),
            "y": torch.zeros((), dtype=torch.float64, device=device),
            "yy": torch.zeros((), dtype=torch.float64, device=device)} for _ in range(2)]
    x_acc = [{"xx": torch.zeros(c, c, dtype=torch.float64, device=device),
              "x": torch.zeros(c, dtype=torch.float64, device=device),
              "n": torch.zeros((), dtype=torch.float64, device=device)} for _ in range(2)] if need_x else []

    def add_y(a: dict, x: torch.Tensor, t: torch.Tensor) -> None:
        a["xy"] += (x.T @ t).double()
        a["y"] += t.double().sum()
        a["yy"] += (t.double() ** 2).sum()

    def add_x(xa: dict, x: torch.Tensor) -> None:
        xa["xx"] += (x.T @ x).double()
        xa["x"] += x.sum(0).double()
        xa["n"] += x.shape[0]

    for idx, x in blocks:
        t = torch.from_numpy(y[idx].reshape(-1)).to(device)
        in_val = torch.from_numpy(np.repeat(val[idx], x.shape[0] // len(idx))).to(device)
        add_y(acc[0], x, t)
        add_y(acc[1], x, t * in_val)  # validation rows only, without copying them
        if need_x:
            add_x(x_acc[0], x)
            if bool(in_val.any()):
                add_x(x_acc[1], x[in_val])
    if need_x:
        memo.update(zip(("total", "val"), ({k: v.cpu().numpy() for k, v in a.items()} for a in x_acc)))
    tot, va = ({**{k: v.cpu().numpy() for k, v in a.items()}, **memo[part]} for a, part in zip(acc, ("total", "val")))
    return {k: tot[k] - va[k] for k in tot}, va


def _ridge_solutions(s: dict, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge weights (alpha, c) and biases (alpha,) for every alpha from one eigendecomposition of the covariance.
    Vector targets (`s["xy"]` of shape (c, k), `s["y"]` (k,)): weights (alpha, c, k) and biases (alpha, k), the k
    outputs' ridge solutions, which share the covariance and its eigendecomposition (`probes.vectors`)."""
    n = s["n"]
    mx, my = s["x"] / n, s["y"] / n
    cov = s["xx"] / n - np.outer(mx, mx)
    evals, evecs = np.linalg.eigh(cov)
    if np.ndim(s["xy"]) == 2:
        cxy = s["xy"] / n - np.outer(mx, my)  # (c, k)
        ws = evecs @ ((evecs.T @ cxy)[None] / (evals[None, :, None] + alphas[:, None, None]))  # (alpha, c, k)
        return ws, my - mx @ ws
    cxy = s["xy"] / n - mx * my
    proj = evecs.T @ cxy
    ws = (proj[None, :] / (evals[None, :] + alphas[:, None])) @ evecs.T
    return ws, my - ws @ mx


def _mse(s: dict, ws: np.ndarray, bs: np.ndarray) -> np.ndarray:
    """Mean squared error of each (w, b) on the pixels summarised by `s`, from sufficient statistics alone. Vector
    targets (ws (alpha, c, k), bs (alpha, k), `s["yy"]` the sum of squared norms): the squared error summed over the
    k outputs."""
    n = s["n"]
    if ws.ndim == 3:
        quad = np.einsum("ack,cd,adk->a", ws, s["xx"], ws)
        cross = np.einsum("ack,ck->a", ws, s["xy"]) + bs @ s["y"]
        sse = s["yy"] - 2 * cross + quad + 2 * np.einsum("ak,ack,c->a", bs, ws, s["x"]) + n * (bs**2).sum(1)
        return sse / n
    quad = np.einsum("ac,cd,ad->a", ws, s["xx"], ws)
    sse = s["yy"] - 2 * (ws @ s["xy"] + bs * s["y"]) + quad + 2 * bs * (ws @ s["x"]) + n * bs**2
    return sse / n


def fit_ridge(
    acts: Any,
    labels: Any,
    *,
    kind: Kind = "depth",
    alphas: tuple[float, ...] = RIDGE_ALPHAS,
    val_fraction: float = 0.2,
    seed: int = 0,
    device: str = "cpu",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    blocks: StandardisedBlocks | None = None,
) -> LinearProbe:
    """Ridge probe on `(image, h, w, c)` activations for `(image, H, W)` labels (image or layer resolution).

    One pass for the sufficient statistics (two when the activations do not fit in `cache_bytes`: channel
    statistics first); alpha minimises validation MSE; the final fit pools train+validation statistics.
    `blocks`: `StandardisedBlocks.with_stats(acts)` when several probes are fit on the same activations."""
    n, h, w, _ = acts.shape
    y = layer_targets(labels, h, w)
    if blocks is None:
        blocks = StandardisedBlocks.with_stats(acts, chunk_bytes=chunk_bytes, cache_bytes=cache_bytes, device=device)
    st = blocks.stats
    val = validation_split(n, val_fraction, seed)
    s_tr, s_va = _sums(blocks, y, val, acts.shape[-1], device)
    grid = np.asarray(alphas, np.float64)
    ws_tr, bs_tr = _ridge_solutions(s_tr, grid)
    losses = _mse(s_va, ws_tr, bs_tr)
    best = int(np.argmin(losses))
    s_all = {k: s_tr[k] + s_va[k] for k in s_tr}  # = the block totals
    ws, bs = _ridge_solutions(s_all, grid[best : best + 1])
    return LinearProbe(kind=kind, method="ridge", weight=ws[0], bias=float(bs[0]), mean=st.mean, scale=st.scale,
                       alpha=float(grid[best]), alpha_grid=grid, val_losses=losses, val_weight=ws_tr[best],
                       val_bias=float(bs_tr[best]))


# The Hessian only steers Newton's steps (convergence is judged on the exact gradient), so each pass estimates it on at
# most this many evenly strided pixels: on all 18k pixels of a 16x16x64 toy layer it cost 7x the gradient pass.
HESSIAN_ROWS = 4096


def _odd(stride: int) -> int:
    """An odd Hessian stride: rows are pixels in raster order and layer widths are powers of two, so an even stride
    would visit the same few columns of every row; features that vary along the row (the position basis) then get a
    near-singular Hessian and Newton crawls (132 passes instead of 35 on a 16x16 layer with the position basis)."""
    return stride | 1


class _Targets:
    """Per-block targets `t` and training weights `on` (1 = a `train` image's pixel), built on a block's first pass
    and kept: they are 2/c the size of the block, and rebuilding them every pass cost as much as a small layer's
    pass."""

    def __init__(self, y: np.ndarray, train: np.ndarray, device: str):
        self.y, self.train, self.device = y, train, device
        self.kept: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, float]] = {}

    def __call__(self, idx: np.ndarray, rows: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(targets, training weights, number of training pixels) of the block of images `idx` with `rows` rows."""
        key = (int(idx[0]), len(idx))  # blocks are contiguous image ranges
        if key not in self.kept:
            on = np.repeat(self.train[idx], rows // len(idx)).astype(np.float32)
            self.kept[key] = (torch.from_numpy(self.y[idx].reshape(-1)).to(self.device),
                              torch.from_numpy(on).to(self.device), float(on.sum()))
        return self.kept[key]


@dataclass
class _DataTerms:
    """The unpenalised objective at one theta: mean loss and gradient (c+1,) over training pixels, the data Hessian
    (c+1, c+1) when asked, and the mean loss over validation pixels (nan without any)."""

    loss: float
    grad: torch.Tensor
    hess: torch.Tensor | None
    vloss: float


def _newton_pass(blocks: Blocks, targets: _Targets, theta: torch.Tensor, with_hessian: bool,
                 hess_stride: int) -> _DataTerms:
    """One pass over the blocks at theta = [w, b]. Rows are masked by weights rather than copied; the Hessian uses
    every `hess_stride`-th row (see HESSIAN_ROWS)."""
    c, device = len(theta) - 1, theta.device
    w32, b32 = theta[:c].float(), float(theta[c])
    loss = torch.zeros((), dtype=torch.float64, device=device)
    vloss = torch.zeros((), dtype=torch.float64, device=device)
    grad = torch.zeros(c + 1, dtype=torch.float64, device=device)
    hess = torch.zeros(c + 1, c + 1, dtype=torch.float64, device=device) if with_hessian else None
    n_tr, n_va, n_hess = 0.0, 0.0, 0.0
    for idx, x in blocks:
        t, on, n_on = targets(idx, x.shape[0])
        z = x @ w32 + b32
        per = torch.nn.functional.softplus(z) - t * z
        p = torch.sigmoid(z)
        r = (p - t) * on
        tr_loss, all_loss = (per * on).sum(), per.sum()
        loss += tr_loss.double()
        vloss += (all_loss - tr_loss).double()
        n_tr, n_va = n_tr + n_on, n_va + x.shape[0] - n_on
        grad[:c] += (x.T @ r).double()
        grad[c] += r.sum().double()
        if hess is not None:
            xh = x[::hess_stride]
            s = (p * (1 - p) * on)[::hess_stride]
            hess[:c, :c] += (xh.T @ (xh * s[:, None])).double()
            hess[:c, c] += (xh.T @ s).double()
            hess[c, c] += s.sum().double()
            n_hess += float(on[::hess_stride].sum())
    if hess is not None:
        hess[c, :c] = hess[:c, c]
        hess = hess / n_hess
    return _DataTerms(float(loss) / n_tr, grad / n_tr, hess, float(vloss) / n_va if n_va else float("nan"))


def _newton(
    blocks: Blocks, targets: _Targets, theta: torch.Tensor, alpha: float, max_iter: int, tol: float,
    hess_stride: int, hess_data: torch.Tensor | None = None, at_theta: _DataTerms | None = None,
) -> tuple[torch.Tensor, torch.Tensor, _DataTerms | None]:
    """Newton with a lagged Hessian from `theta`; returns (theta, data Hessian, the data terms at theta or None).

    `at_theta`: the data terms at the starting theta if already known (the previous alpha's solution: only the penalty
    differs), which saves a pass. The data Hessian (the expensive part) is reused while steps deliver within 25% of
    the decrease the quadratic model predicted, and recomputed otherwise; a step that raises the loss is halved and
    retried. Stops when the Newton decrement g.H^-1.g / 2 falls below `tol` (in loss units)."""
    c = len(theta) - 1
    ridge = torch.zeros(c + 1, dtype=theta.dtype, device=theta.device)
    ridge[:c] = 2 * alpha
    need_hess = hess_data is None
    prev: _DataTerms | None = None
    prev_loss, prev_theta, prev_dir, predicted, step = float("inf"), theta, None, 0.0, 1.0
    for _ in range(max_iter):
        if at_theta is None or need_hess:
            at_theta = _newton_pass(blocks, targets, theta, need_hess, hess_stride)
            hess_data = at_theta.hess if at_theta.hess is not None else hess_data
        w = theta[:c]
        loss = at_theta.loss + alpha * float(w @ w)
        grad = at_theta.grad.clone()
        grad[:c] += 2 * alpha * w
        if prev_dir is not None and loss > prev_loss:  # overshoot: back off along the previous direction
            step *= 0.5
            if step < 1e-3:
                return prev_theta, hess_data, prev
            theta, need_hess, at_theta = prev_theta - step * prev_dir, True, None
            continue
        # the quadratic model is trusted while the decrease it predicted matches the actual one (ratio ~ 1); a ratio
        # far from 1 either way (a stale Hessian over- or under-estimating curvature) triggers a fresh Hessian
        need_hess = prev_dir is not None and abs((prev_loss - loss) / max(predicted, 1e-300) - 1) > 0.25
        assert hess_data is not None
        direction = torch.linalg.solve(hess_data + torch.diag(ridge + 1e-10), grad)
        predicted = float(grad @ direction) / 2
        if predicted < tol:
            return theta, hess_data, at_theta
        prev, prev_loss, prev_theta, prev_dir, step = at_theta, loss, theta, direction, 1.0
        theta, at_theta = theta - direction, None
    assert hess_data is not None
    return theta, hess_data, None


def fit_logistic(
    acts: Any,
    labels: Any,
    *,
    kind: Kind = "saliency",
    alphas: tuple[float, ...] = LOGISTIC_ALPHAS,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 30,
    tol: float = 1e-6,
    device: str = "cpu",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    blocks: StandardisedBlocks | None = None,
) -> LinearProbe:
    """Logistic probe (targets in [0, 1], fractions allowed) on `(image, h, w, c)` activations.

    Alphas are tried in the given order (strong -> weak) with warm starts; the path stops early once validation loss
    has risen twice in a row. The chosen alpha is refit on all training images, warm-started from its path solution.
    A single alpha is fit on all training images directly (no validation split, `val_losses` NaN).

    Memory: if the float32 activations fit in `cache_bytes` everything stays resident and every pass is pure compute.
    Otherwise the alpha path runs on a resident sample of pixels from *every* training image (as many per image as
    `cache_bytes` allows, seeded), and only the final fit streams over all pixels, warm-started from the sample's
    solution and Hessian, so a fit costs a handful of streamed passes instead of dozens. Either way each pass
    estimates its Hessian on at most HESSIAN_ROWS strided pixels. `blocks`: `StandardisedBlocks.with_stats(acts)`
    when several probes are fit on the same activations."""
    n, h, w, c = acts.shape
    y = layer_targets(labels, h, w)
    if y.min() < 0 or y.max() > 1:
        raise ValueError("saliency targets must lie in [0, 1]")
    if blocks is None:
        blocks = StandardisedBlocks.with_stats(acts, chunk_bytes=chunk_bytes, cache_bytes=cache_bytes, device=device)
    st = blocks.stats
    rows = min(h * w, cache_bytes // (n * c * 4))
    if rows < 1:
        raise ValueError(f"cache_bytes={cache_bytes} is too small to sample one pixel per image")
    if rows == h * w:
        path_blocks: Blocks = blocks
        y_path = y
    else:
        path_blocks, pix = sample_pixels(blocks, rows, seed)
        y_path = np.take_along_axis(y.reshape(n, -1), pix, axis=1)
    grid = np.asarray(alphas, np.float64)
    val = validation_split(n, val_fraction, seed) if len(grid) > 1 else np.zeros(n, bool)  # one alpha: no choice
    theta = torch.zeros(c + 1, dtype=torch.float64, device=device)
    prior = float(np.clip(y[~val].mean(), 1e-4, 1 - 1e-4))
    theta[c] = np.log(prior / (1 - prior))  # start from the base rate: the first Newton steps are then well-behaved
    losses = np.full(len(grid), np.nan)
    thetas: list[torch.Tensor] = []
    path_targets = _Targets(y_path, ~val, device)
    stride = _odd(max(1, n * rows // HESSIAN_ROWS))
    # the data Hessian and the data terms at the solution carry over between alphas: only the penalty changes
    hess: torch.Tensor | None = None
    at: _DataTerms | None = None
    for i, a in enumerate(grid if len(grid) > 1 else ()):
        theta, hess, at = _newton(path_blocks, path_targets, theta, float(a), max_iter, tol, stride, hess, at)
        losses[i] = at.vloss if at is not None else _newton_pass(path_blocks, path_targets, theta, False, 1).vloss
        thetas.append(theta)
        if i >= 2 and losses[i] > losses[i - 1] > losses[i - 2]:
            break
    best = int(np.nanargmin(losses)) if len(grid) > 1 else 0
    del path_blocks, path_targets  # free the sample before the final fit
    stride = _odd(max(1, n * h * w // HESSIAN_ROWS))
    start = thetas[best] if thetas else theta  # a single alpha starts from the base rate
    theta, _, _ = _newton(blocks, _Targets(y, np.ones(n, bool), device), start, float(grid[best]), max_iter, tol,
                          stride, hess)
    th = theta.cpu().numpy()
    held = thetas[best].cpu().numpy() if thetas else None  # fit without the validation images
    return LinearProbe(kind=kind, method="logistic", weight=th[:c], bias=float(th[c]), mean=st.mean, scale=st.scale,
                       alpha=float(grid[best]), alpha_grid=grid, val_losses=losses,
                       val_weight=None if held is None else held[:c],
                       val_bias=float("nan") if held is None else float(held[c]))
