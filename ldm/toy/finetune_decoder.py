"""Fine-tune the toy VAE's decoder alone, keeping its latent space, so a trained U-Net stays valid.

    python -m ldm.toy.finetune_decoder --model ldm/toy/checkpoint --steps 1500 --minutes 20

The encoder (and `quant_conv`) are frozen: the training renders are encoded once to their posterior means, and the
decoder (with `post_quant_conv`) learns to map those same latents back to the renders with the pixel-weighted MSE of
VAE training (`train_ldm.pixel_weights`: object pixels weigh more than floor and sky). Stage 1 stops while the decoder
is still blurring textures and shifting colours (docs/toy-ldm.md); every colour the U-Net gets right in latent space
has to survive the decoder, so this is the cheap way to raise the toy LDM's colour ceiling. The improved `vae/` is
written back into the pipeline folder; the held-out round-trip RMSE before and after is printed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from ldm.toy.quality import vae_round_trip
from ldm.toy.render import HELD_OUT_SEED, render_batch
from ldm.toy.train_data import BatchOrder, load_dataset, to_tensor
from ldm.toy.train_ldm import encode_means, pixel_weights


def round_trip_rmse(vae: AutoencoderKL, images: np.ndarray) -> float:
    """RMSE in grey levels of uint8 `(image, 64, 64, 3)` images after encode (mean) and decode."""
    return float(np.sqrt(((vae_round_trip(vae, images).astype(np.float64) - images) ** 2).mean()))


def finetune_decoder(vae: AutoencoderKL, images: np.ndarray, steps: int, batch: int = 16, lr: float = 2e-4,
                     object_weight: float = 8.0, seed: int = 0, max_minutes: float = 0.0) -> list[float]:
    """Train `vae.decoder` and `vae.post_quant_conv` on the latents of `images (scene, 64, 64, 3)`; returns losses."""
    vae.eval()
    latents = encode_means(vae, images)  # fixed: the latent space the U-Net was trained on
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    vae.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order = BatchOrder(len(images), seed)
    stop = time.time() + 60 * max_minutes if max_minutes > 0 else float("inf")
    losses: list[float] = []
    vae.decoder.train()
    for step in range(steps):
        if time.time() > stop:
            break
        idx = order.next(batch)
        x = to_tensor(images[idx.numpy()])
        y = vae.decode(latents[idx]).sample
        loss = (pixel_weights(x, object_weight) * (y - x) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            print(f"decoder step {step + 1}/{steps} loss {np.mean(losses[-50:]):.5f}", flush=True)
    vae.eval().requires_grad_(False)
    return losses


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ldm/toy/checkpoint", help="a toy pipeline folder; its vae/ is replaced")
    p.add_argument("--data", default="runs/toy-renders", help="cache prefix of the training renders")
    p.add_argument("--n-scenes", type=int, default=8000)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--minutes", type=float, default=0.0, help="wall-clock cap (0 = none)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    folder = Path(args.model) / "vae"
    vae = AutoencoderKL.from_pretrained(str(folder))
    images, _ = load_dataset(args.data, args.n_scenes)
    held_out = render_batch(list(range(HELD_OUT_SEED, HELD_OUT_SEED + 256))).rgb
    before = round_trip_rmse(vae, held_out)
    losses = finetune_decoder(vae, images, args.steps, args.batch, args.lr, seed=args.seed, max_minutes=args.minutes)
    after = round_trip_rmse(vae, held_out)
    print(f"{len(losses)} decoder steps; held-out round-trip RMSE {before:.1f} -> {after:.1f} grey levels")
    vae.save_pretrained(str(folder), safe_serialization=True)
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
