"""Where the toy LDM's colours are lost: in its VAE's latent, or in the decoder?

Usage:  .venv/bin/python benchmarks/toy_colour_ceiling.py [--model ldm/toy/checkpoint] [--train 1500] [--test 400]

Objects of `--train` training renders and `--test` held-out renders (exact masks, at least 20 px) are read for their
named colour four ways, each reader fit on the training objects only:
1. `quality.colour_features` of the render (the ruler of `sceneprobe toy quality`);
2. the same reader on the renders after the VAE's round trip (encode to the posterior mean, decode);
3. a reader fit on round-tripped training renders, on round-tripped held-out ones (the decoder's colours, recalibrated);
4. a linear readout of the latent itself under each object: the mask-weighted mean latent and the latent cell the
   object covers most, `(object, 8)`.
If 3 and 4 are far below 1, the colour is gone from the latent (at least linearly) and no decoder can bring it back.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import AutoencoderKL  # noqa: E402

from ldm.toy.captions import COLOURS  # noqa: E402
from ldm.toy.quality import colour_features, colour_reader, object_colours, vae_round_trip  # noqa: E402
from ldm.toy.render import HELD_OUT_SEED  # noqa: E402
from ldm.toy.train_ldm import encode_means  # noqa: E402
from probes.resample import downsample_area  # noqa: E402


def latent_features(vae: AutoencoderKL, rgb: np.ndarray, scene: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """`(object, 2 c)`: mask-weighted mean latent and the latent of the cell the object covers most."""
    lat = np.asarray(encode_means(vae, rgb)).transpose(0, 2, 3, 1)  # (scene, h, w, c)
    h, w, c = lat.shape[1:]
    cover = downsample_area(masks.astype(np.float32), h, w)  # (object, h, w) fractions
    per = lat[scene]
    mean = (per * cover[..., None]).sum((1, 2)) / cover.sum((1, 2))[:, None]
    top = per.reshape(len(per), -1, c)[np.arange(len(per)), cover.reshape(len(cover), -1).argmax(1)]
    return np.concatenate([mean, top], 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ldm/toy/checkpoint")
    p.add_argument("--train", type=int, default=1500)
    p.add_argument("--test", type=int, default=400)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    vae = AutoencoderKL.from_pretrained(args.model, subfolder="vae").eval()
    rgb, scene, masks, colour = object_colours(list(range(args.train)))
    rgb_t, scene_t, masks_t, colour_t = object_colours(list(range(HELD_OUT_SEED, HELD_OUT_SEED + args.test)))
    trip, trip_t = vae_round_trip(vae, rgb), vae_round_trip(vae, rgb_t)

    on_renders = colour_reader().fit(colour_features(rgb[scene], masks), colour)
    on_trips = colour_reader().fit(colour_features(trip[scene], masks), colour)
    on_latents = colour_reader().fit(latent_features(vae, rgb, scene, masks), colour)
    rows = {
        "renders, render reader": on_renders.predict(colour_features(rgb_t[scene_t], masks_t)),
        "VAE round trips, render reader": on_renders.predict(colour_features(trip_t[scene_t], masks_t)),
        "VAE round trips, round-trip reader": on_trips.predict(colour_features(trip_t[scene_t], masks_t)),
        "latents, linear readout": on_latents.predict(latent_features(vae, rgb_t, scene_t, masks_t)),
    }
    print(f"{args.model}: {len(colour_t)} held-out objects ({len(COLOURS)} colours; readers fit on {len(colour)} "
          f"training objects)")
    for name, pred in rows.items():
        print(f"  {name:36s} {np.mean(pred == colour_t):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
