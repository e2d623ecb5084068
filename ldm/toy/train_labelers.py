"""Train the toy depth and saliency labelers on toy-world renders and save them to ldm/toy/weights/.

    python -m ldm.toy.train_labelers [--seed 0] [--n-train 4000] [--steps 1100] [--n-eval 500] [--normals]

One U-Net with three output channels (inverse depth, salient-object logit, all-objects logit) is trained on the sum
of the three losses; the two labelers read channels 0 and 1. `--normals` adds the normal and light heads (channels
3-5 normals, 6 surface logit, a linear light head on the pooled bottleneck) and their losses: 1 - cos(normal) over
surface pixels, BCE of the surface logit, 1 - cos(light). Without it the run is exactly the old one (same random
draws, byte-identical weights).

Deterministic from --seed (single-threaded CPU torch, deterministic algorithms). Training scenes are seeds
[0, n_train), evaluation scenes [1_000_000, 1_000_000 + n_eval) (the held-out split of docs/CONTRACTS.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ldm.toy.labelers import (
    DEPTH_CHANNEL,
    NORMAL_CHANNELS,
    NORMALS_OUT_CHANNELS,
    OBJECTS_CHANNEL,
    OUT_CHANNELS,
    SALIENT_CHANNEL,
    SURFACE_CHANNEL,
    WEIGHTS,
    ToyUNet,
    images_to_tensor,
    load_toy_depth_labeler,
    load_toy_light_labeler,
    load_toy_normals_labeler,
    load_toy_saliency_labeler,
    save_labeler,
    standardise,
)
from ldm.toy.render import HELD_OUT_SEED, render_batch


def depth_target(depth: np.ndarray) -> torch.Tensor:
    """Exact z-depth `(image, h, w)` -> the depth labeler's target `(image, 1, h, w)`: standardised inverse depth."""
    return standardise(torch.from_numpy(1.0 / depth).float()[:, None])


def depth_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE after standardising the prediction: the labeler is judged only up to a per-image affine map, like MiDaS."""
    return F.mse_loss(standardise(pred), target)


def saliency_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus soft Dice: BCE alone under-segments the small objects that make up most of the salient masks."""
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum((-2, -1))
    dice = 1 - (2 * inter + 1) / (prob.sum((-2, -1)) + target.sum((-2, -1)) + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + dice.mean()


def total_loss(out: torch.Tensor, depth: torch.Tensor, salient: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """Sum of the three heads' losses for network output `(image, 3, h, w)` and targets `(image, 1, h, w)`."""
    ch = lambda c: out[:, c : c + 1]  # noqa: E731
    return (
        depth_loss(ch(DEPTH_CHANNEL), depth)
        + saliency_loss(ch(SALIENT_CHANNEL), salient)
        + 0.5 * saliency_loss(ch(OBJECTS_CHANNEL), objects)
    )


MIRROR_X = torch.tensor([-1.0, 1.0, 1.0])  # a left-right mirror negates a camera-frame vector's x


def mirror_normals(normals: torch.Tensor) -> torch.Tensor:
    """Camera-frame normals `(image, 3, h, w)` of the left-right mirrored image: columns reversed, x negated."""
    return normals.flip(-1) * MIRROR_X[:, None, None]


def mirror_light(light: torch.Tensor) -> torch.Tensor:
    """Camera-frame light directions `(image, 3)` of the mirrored image: x negated."""
    return light * MIRROR_X


def normal_targets(data) -> list[torch.Tensor]:
    """A RenderBatch's normal-head targets: normals `(image, 3, h, w)`, surface `(image, 1, h, w)`, light
    `(image, 3)`."""
    return [torch.from_numpy(data.normals).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(data.surface).float()[:, None], torch.from_numpy(data.light_direction)]


def normals_loss(maps: torch.Tensor, light: torch.Tensor, normals: torch.Tensor, surface: torch.Tensor,
                 light_target: torch.Tensor) -> torch.Tensor:
    """Mean 1 - cos over surface pixels of the normal channels, BCE of the surface logit, mean 1 - cos of the light."""
    cos = (F.normalize(maps[:, NORMAL_CHANNELS], dim=1, eps=1e-6) * normals).sum(1, keepdim=True)
    normal_term = ((1 - cos) * surface).sum() / surface.sum().clamp_min(1.0)
    surface_term = F.binary_cross_entropy_with_logits(maps[:, SURFACE_CHANNEL : SURFACE_CHANNEL + 1], surface)
    light_term = (1 - (F.normalize(light, dim=1, eps=1e-6) * light_target).sum(1)).mean()
    return normal_term + surface_term + light_term


def train(
    x: torch.Tensor, targets: list[torch.Tensor], steps: int, batch_size: int, seed: int, width: int, lr: float,
    normals: bool = False,
) -> ToyUNet:
    """Fit a ToyUNet to inputs x `(image, 3, 64, 64)` and targets [depth, salient, objects] `(image, 1, 64, 64)`,
    with `normals` followed by `normal_targets` [normals, surface, light] and the normal and light heads."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = ToyUNet(width, NORMALS_OUT_CHANNELS if normals else OUT_CHANNELS, light_head=normals)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    flip_map = lambda t: t.flip(-1)  # noqa: E731
    mirrors = [flip_map] * 4 + ([mirror_normals, flip_map, mirror_light] if normals else [])  # x, then each target
    model.train()
    for step in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=gen)
        flip = torch.rand(batch_size, generator=gen) < 0.5
        # Mirror images at random: the labels mirror with them.
        xb, *yb = (torch.where(flip.view(-1, *[1] * (t.dim() - 1)), mirror(t[idx]), t[idx])
                   for t, mirror in zip((x, *targets), mirrors))
        if normals:
            maps, light = model.forward_with_light(xb)
            loss = total_loss(maps, *yb[:3]) + normals_loss(maps, light, *yb[3:])
        else:
            loss = total_loss(model(xb), *yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 100 == 0:
            print(f"  step {step + 1}/{steps} loss {loss.item():.4f}", flush=True)
    return model.eval()


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row pair of `(image, pixel)` arrays."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
    return (ra * rb).sum(1) / np.maximum(np.sqrt((ra**2).sum(1) * (rb**2).sum(1)), 1e-12)


def evaluate(depth_fn, saliency_fn, rgb: np.ndarray, depth: np.ndarray, salient: np.ndarray) -> dict[str, float]:
    """Held-out errors: depth RMSE on standardised inverse depth, depth Spearman, mask Dice at p > 0.5."""
    n = len(rgb)
    pred_depth = depth_fn(rgb).reshape(n, -1)
    target = depth_target(depth).numpy().reshape(n, -1)
    prob = saliency_fn(rgb).reshape(n, -1)
    mask = salient.reshape(n, -1)
    pred_mask = prob > 0.5
    inter, total = (pred_mask & mask).sum(1), pred_mask.sum(1) + mask.sum(1)
    return {
        "depth_rmse_standardised": float(np.sqrt(((pred_depth - target) ** 2).mean(1)).mean()),
        "depth_spearman": float(spearman_rows(pred_depth, target).mean()),
        "mask_dice": float(np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0).mean()),
    }


def angular_degrees(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Degrees between vectors along the last axis (zero vectors: 90)."""
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    cos = np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1.0), 0.0)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def evaluate_normals(normals_fn, light_fn, rgb: np.ndarray, normals: np.ndarray, surface: np.ndarray,
                     light: np.ndarray) -> dict[str, float]:
    """Held-out errors of the normal and light heads: per image, the mean angle to the exact normals over its surface
    pixels and the share of them within 11.25 / 30 degrees (a pixel judged sky counts as 90), the surface mask's
    accuracy; the light's mean angle; all averaged over images."""
    pred, pred_light = normals_fn(rgb), light_fn(rgb)
    err = angular_degrees(pred, normals)  # (image, h, w)
    n_surface = surface.sum((1, 2))
    judged = np.linalg.norm(pred, axis=-1) > 0
    return {
        "normals_angular_mean": float(((err * surface).sum((1, 2)) / n_surface).mean()),
        "normals_within_11.25": float((((err < 11.25) & surface).sum((1, 2)) / n_surface).mean()),
        "normals_within_30": float((((err < 30) & surface).sum((1, 2)) / n_surface).mean()),
        "surface_accuracy": float((judged == surface).mean()),
        "light_angular_error": float(angular_degrees(pred_light, light).mean()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-eval", type=int, default=500)
    parser.add_argument("--steps", type=int, default=1100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=12)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the dev machine is shared)")
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--normals", action="store_true", help="add the normal and light heads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()

    data = render_batch(np.arange(args.n_train), size=64)
    x = images_to_tensor(data.rgb)
    targets = [
        depth_target(data.depth),
        torch.from_numpy(data.salient).float()[:, None],
        torch.from_numpy(data.objects.any(1)).float()[:, None],
    ] + (normal_targets(data) if args.normals else [])
    del data  # the tensors above hold what training needs
    print(f"rendered {args.n_train} training scenes ({time.perf_counter() - start:.0f} s)", flush=True)

    model = train(x, targets, args.steps, args.batch_size, args.seed, args.width, args.lr, args.normals)
    config = {
        "width": args.width, "out_channels": OUT_CHANNELS, "seed": args.seed, "n_train": args.n_train,
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "channels": ["inverse_depth_standardised", "salient_logit", "objects_logit"],
    }
    if args.normals:  # only then: the default run's metadata, and so its bytes, stay as they were
        config |= {"out_channels": NORMALS_OUT_CHANNELS, "light_head": True,
                   "channels": config["channels"] + ["normal_x", "normal_y", "normal_z", "surface_logit"]}
    save_labeler(model, args.out, config)
    print(f"trained labelers -> {args.out} ({time.perf_counter() - start:.0f} s)", flush=True)

    test = render_batch(np.arange(HELD_OUT_SEED, HELD_OUT_SEED + args.n_eval), size=64)
    metrics = evaluate(
        load_toy_depth_labeler(args.out), load_toy_saliency_labeler(args.out), test.rgb, test.depth, test.salient
    )
    if args.normals:
        metrics |= evaluate_normals(load_toy_normals_labeler(args.out), load_toy_light_labeler(args.out), test.rgb,
                                    test.normals, test.surface, test.light_direction)
    print(f"held-out ({args.n_eval} renders): {json.dumps({k: round(v, 4) for k, v in metrics.items()})}")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
