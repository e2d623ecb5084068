"""Toy labelers: small CNNs that stand in for MiDaS (depth) and TRACER (salient object) on toy-world images.

Both are heads of one small U-Net (a shared trunk halves the CPU cost of training; channel 2, a mask of all
objects, is an auxiliary target that helps the salient head), trained on renders with exact labels by
`python -m ldm.toy.train_labelers` and stored as safetensors in ldm/toy/weights/ (the normal and light heads: a
second network of the same size, `NORMALS_WEIGHTS`). They run at 64 x 64 (other image sizes are resized in and out,
as MiDaS does with its own working resolution).

Depth convention (like MiDaS, relative inverse depth): the output is the inverse z-depth 1 / depth, standardised per
image to mean 0 and standard deviation 1 over its pixels. Larger = nearer. It is defined only up to that per-image
affine normalisation; compare it to labels with rank or scale-and-shift-invariant metrics.

Saliency convention (like TRACER): the output is the per-pixel probability in [0, 1] that the pixel belongs to the
salient object (the object with the largest visible area, docs/toy-world.md).

Normals and light (optional heads, `python -m ldm.toy.train_labelers --normals`): channels 3-5 are a surface normal
per pixel and channel 6 the logit that the pixel shows a surface (not sky); a linear light head on the pooled
bottleneck gives one light direction per image. Both in the renderer's camera coordinates (x right, y up, z towards
the viewer). The normals labeler returns unit normals where it judges a surface and (0, 0, 0) where it judges sky,
the convention of the renderer's exact normals; the light labeler one unit vector per image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS = WEIGHTS_DIR / "toy_labelers.safetensors"
DEPTH_WEIGHTS = SALIENCY_WEIGHTS = WEIGHTS  # the file each labeler loads (one shared network)
# the network trained with the normal and light heads (`--normals`): its own file, so the depth and saliency labels
# of existing runs (and their labeler version) stay those of WEIGHTS
NORMALS_WEIGHTS = LIGHT_WEIGHTS = WEIGHTS_DIR / "toy_normals_labelers.safetensors"
# Output channels of the network.
DEPTH_CHANNEL, SALIENT_CHANNEL, OBJECTS_CHANNEL = 0, 1, 2
OUT_CHANNELS = 3
NORMAL_CHANNELS, SURFACE_CHANNEL = slice(3, 6), 6  # with the normal heads (`--normals`)
NORMALS_OUT_CHANNELS = 7
REBUILD_COMMAND = "python -m ldm.toy.train_labelers"
NORMALS_REBUILD_COMMAND = ("python -m ldm.toy.train_labelers --normals --steps 1600 "
                           "--out ldm/toy/weights/toy_normals_labelers.safetensors")
WORK_SIZE = 64  # the labelers' working resolution

Labeler = Callable[[np.ndarray], np.ndarray]


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ToyUNet(nn.Module):
    """A small U-Net: (image, 3, 64, 64) in [0, 1] -> (image, out_channels, 64, 64) raw values / logits.

    Three stride-2 stages (64 -> 32 -> 16 -> 8) give the bottleneck a view of the whole frame, which the salient
    rule (largest object) needs; skip connections keep edges sharp. `light_head`: a linear map from the bottleneck's
    channel means and maxima to one raw light direction per image (`forward_with_light`).
    """

    def __init__(self, width: int = 12, out_channels: int = OUT_CHANNELS, light_head: bool = False):
        super().__init__()
        w1, w2, w3, w4 = width, 2 * width, 4 * width, 6 * width
        self.enc0 = _conv(3, w1)
        self.enc1 = nn.Sequential(_conv(w1, w2, 2), _conv(w2, w2))
        self.enc2 = nn.Sequential(_conv(w2, w3, 2), _conv(w3, w3))
        self.enc3 = nn.Sequential(_conv(w3, w4, 2), _conv(w4, w4))
        self.dec2 = _conv(w4 + w3, w3)
        self.dec1 = _conv(w3 + w2, w2)
        self.dec0 = _conv(w2 + w1, w1)
        self.head = nn.Conv2d(w1, out_channels, 1)
        self.light = nn.Linear(2 * w4, 3) if light_head else None  # created last: the other layers' init is unchanged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[0]

    def forward_with_light(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(maps `(image, out_channels, 64, 64)`, raw light directions `(image, 3)`)."""
        if self.light is None:
            raise ValueError("this network has no light head")
        maps, e3 = self._run(x)
        return maps, self.light(torch.cat([e3.mean((-2, -1)), e3.amax((-2, -1))], 1))

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e0 = self.enc0(x)
        e1 = self.enc1(e0)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        up = lambda t, ref: F.interpolate(t, size=ref.shape[-2:], mode="bilinear", align_corners=False)  # noqa: E731
        d2 = self.dec2(torch.cat([up(e3, e2), e2], 1))
        d1 = self.dec1(torch.cat([up(d2, e1), e1], 1))
        d0 = self.dec0(torch.cat([up(d1, e0), e0], 1))
        return self.head(d0), e3


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 `(image, h, w, 3)` -> float `(image, 3, 64, 64)` in [0, 1]."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 of shape (n, h, w, 3), got {images.dtype} {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-2:] != (WORK_SIZE, WORK_SIZE):
        x = F.interpolate(x, size=(WORK_SIZE, WORK_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x


def standardise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-image zero mean, unit std over the last two axes of `(image, 1, h, w)`."""
    mean = x.mean((-2, -1), keepdim=True)
    return (x - mean) / (x.std((-2, -1), keepdim=True) + eps)


def save_labeler(model: ToyUNet, path: Path, config: dict[str, object]) -> None:
    """Save weights with `config` as one sorted-JSON metadata entry (several entries would be written in hash
    order, so the file's bytes, and hence its digest, would change between identical trainings)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"config": json.dumps(config, sort_keys=True)})


def load_network(path: Path) -> ToyUNet:
    """The ToyUNet stored at `path`, in eval mode; a missing or unreadable file names itself and the rebuild command."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    hint = f"rebuild it with `{REBUILD_COMMAND}`"
    if not Path(path).is_file():
        raise FileNotFoundError(f"toy labeler weights not found: {path}; {hint}")
    try:
        with safe_open(str(path), framework="pt") as f:
            config = json.loads((f.metadata() or {}).get("config", "{}"))
        state = load_file(str(path))
        model = ToyUNet(int(config.get("width", 12)), int(config.get("out_channels", OUT_CHANNELS)),
                        bool(config.get("light_head", False)))
        model.load_state_dict(state)
    except Exception as err:  # corrupt or mismatched file: one clear message for every way it can fail
        raise RuntimeError(f"toy labeler weights unreadable: {path} ({err}); {hint}") from err
    return model.eval()


def _batched(per_batch: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int) -> np.ndarray:
    """`per_batch` on `x` in batches of `batch_size`, without gradients, concatenated along images, as float32."""
    with torch.no_grad():
        out = torch.cat([per_batch(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    return out.numpy().astype(np.float32)


def _wrap(model: ToyUNet, channel: int, post: Callable[[torch.Tensor], torch.Tensor], batch_size: int) -> Labeler:
    def label(images: np.ndarray) -> np.ndarray:
        """uint8 `(image, h, w, 3)` -> float32 `(image, h, w)`."""
        h, w = np.asarray(images).shape[1:3]

        def per_batch(x: torch.Tensor) -> torch.Tensor:
            y = post(model(x)[:, channel : channel + 1])
            if y.shape[-2:] != (h, w):
                y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
            return y[:, 0]

        return _batched(per_batch, images_to_tensor(images), batch_size)

    return label


def load_toy_depth_labeler(path: Path | str = WEIGHTS, batch_size: int = 64) -> Labeler:
    """images uint8 `(image, h, w, 3)` -> relative inverse depth float32 `(image, h, w)`, standardised per image."""
    return _wrap(load_network(Path(path)), DEPTH_CHANNEL, standardise, batch_size)


def load_toy_saliency_labeler(path: Path | str = WEIGHTS, batch_size: int = 64) -> Labeler:
    """images uint8 `(image, h, w, 3)` -> salient-object probability float32 `(image, h, w)` in [0, 1]."""
    return _wrap(load_network(Path(path)), SALIENT_CHANNEL, torch.sigmoid, batch_size)


def _normal_network(path: Path) -> ToyUNet:
    if not Path(path).is_file():
        raise FileNotFoundError(f"toy normals labeler weights not found: {path}; rebuild them with "
                                f"`{NORMALS_REBUILD_COMMAND}`")
    model = load_network(path)
    if model.head.out_channels < NORMALS_OUT_CHANNELS or model.light is None:
        raise RuntimeError(f"toy labeler weights {path} have no normal and light heads; rebuild them with "
                           f"`{NORMALS_REBUILD_COMMAND}`")
    return model


def unit_normals(raw: torch.Tensor, surface_logit: torch.Tensor) -> torch.Tensor:
    """Raw normals `(image, 3, h, w)` and surface logits `(image, 1, h, w)` -> unit normals, zero where the
    surface probability is below 0.5 (judged sky)."""
    return F.normalize(raw, dim=1, eps=1e-6) * (surface_logit > 0).to(raw.dtype)


def load_toy_normals_labeler(path: Path | str = NORMALS_WEIGHTS,
                             batch_size: int = 64) -> Callable[[np.ndarray], np.ndarray]:
    """images uint8 `(image, h, w, 3)` -> float32 `(image, h, w, 3)`: unit normals in camera coordinates where the
    network judges a surface, (0, 0, 0) where it judges sky (resized bilinearly to the input size, renormalised)."""
    model = _normal_network(Path(path))

    def label(images: np.ndarray) -> np.ndarray:
        h, w = np.asarray(images).shape[1:3]

        def per_batch(x: torch.Tensor) -> torch.Tensor:
            out = model(x)
            raw, logit = out[:, NORMAL_CHANNELS], out[:, SURFACE_CHANNEL : SURFACE_CHANNEL + 1]
            if raw.shape[-2:] != (h, w):
                raw = F.interpolate(F.normalize(raw, dim=1, eps=1e-6), size=(h, w), mode="bilinear",
                                    align_corners=False)
                logit = F.interpolate(logit, size=(h, w), mode="bilinear", align_corners=False)
            return unit_normals(raw, logit).permute(0, 2, 3, 1)

        return _batched(per_batch, images_to_tensor(images), batch_size)

    return label


def load_toy_light_labeler(path: Path | str = LIGHT_WEIGHTS,
                           batch_size: int = 64) -> Callable[[np.ndarray], np.ndarray]:
    """images uint8 `(image, h, w, 3)` -> float32 `(image, 3)` unit light directions in camera coordinates."""
    model = _normal_network(Path(path))

    def label(images: np.ndarray) -> np.ndarray:
        return _batched(lambda x: F.normalize(model.forward_with_light(x)[1], dim=1, eps=1e-6),
                        images_to_tensor(images), batch_size)

    return label
