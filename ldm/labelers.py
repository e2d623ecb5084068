"""Pseudo-labelers behind one interface: images in, one label map per image out, at image resolution.

Depth labelers return relative inverse depth (larger = nearer), as MiDaS DPT-Large does in the paper; saliency
labelers return a salient-object probability in [0, 1]. Kinds:

| target   | kind             | default checkpoint                       |
|----------|------------------|------------------------------------------|
| depth    | `toy`            | the embedded toy depth CNN               |
| depth    | `dpt`            | `Intel/dpt-large` (MiDaS DPT-Large)      |
| depth    | `depth-anything` | `LiheYoung/depth-anything-small-hf`      |
| saliency | `toy`            | the embedded toy saliency CNN            |
| saliency | `hf`             | none: name a transformers segmentation model (class 1 = salient, or one sigmoid channel) |

Remote code (e.g. BiRefNet) runs only when `trust_remote_code=True` is asked for.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ldm.errors import UserError

DEPTH_KINDS = {"toy": None, "dpt": "Intel/dpt-large", "depth-anything": "LiheYoung/depth-anything-small-hf"}
SALIENCY_KINDS = {"toy": None, "hf": None}


@dataclass
class Labeler:
    """A loaded labeler. `version` pins the exact weights so stored labels say where they came from."""

    name: str
    version: str
    target: str  # "depth" or "saliency"
    label: Callable[[np.ndarray], np.ndarray]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 `(image, H, W, 3)` -> float32 `(image, H, W)`."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise UserError(f"labelers take uint8 images (image, H, W, 3); got {images.dtype} {images.shape}")
        out = self.label(images)
        return np.asarray(out, dtype=np.float32)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _hf_version(checkpoint: str, model) -> str:
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        return f"{checkpoint}@{commit[:12]}"
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()
    return f"{checkpoint}@config-{digest[:12]}"


def _load_hf(auto_class: str, checkpoint: str, device: str, trust_remote_code: bool):
    import transformers

    try:
        processor = transformers.AutoImageProcessor.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
        model = getattr(transformers, auto_class).from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise UserError(
                f"labeler checkpoint {checkpoint!r} needs its own code; opt in with trust_remote_code: true "
                "in the labeler config if you trust it"
            ) from None
        raise UserError(f"cannot load labeler checkpoint {checkpoint!r}: {err}") from None
    except OSError as err:
        raise UserError(
            f"cannot load labeler checkpoint {checkpoint!r} ({type(err).__name__}): not a local folder and not in the "
            f"Hugging Face cache; download it where there is network (`hf download {checkpoint}`) or pass a folder"
        ) from None
    return processor, model.to(device).eval()


def _run_hf(processor, model, images: np.ndarray, batch_size: int) -> list[torch.Tensor]:
    outs = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            inputs = processor(images=list(images[i : i + batch_size]), return_tensors="pt")
            inputs = {k: v.to(model.device) for k, v in inputs.items()}
            outs.append(model(**inputs))
    return outs


def _resize(maps: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """`(image, h, w)` -> `(image, H, W)`."""
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(maps[:, None].float(), size=size, mode=mode, **kwargs)[:, 0]


def load_depth_labeler(
    kind: str = "toy",
    checkpoint: str | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
    batch_size: int = 8,
) -> Labeler:
    """A depth labeler: uint8 images -> relative inverse depth `(image, H, W)`, bicubically resized as in the paper."""
    if kind not in DEPTH_KINDS:
        raise UserError(f"unknown depth labeler {kind!r}; choose one of {', '.join(DEPTH_KINDS)}")
    if kind == "toy":
        from ldm.toy.labelers import DEPTH_WEIGHTS, load_toy_depth_labeler

        return Labeler("toy-depth", f"toy@{_file_digest(DEPTH_WEIGHTS)}", "depth", load_toy_depth_labeler())
    checkpoint = checkpoint or DEPTH_KINDS[kind]
    processor, model = _load_hf("AutoModelForDepthEstimation", checkpoint, device, trust_remote_code)

    def label(images: np.ndarray) -> np.ndarray:
        depth = torch.cat([out.predicted_depth for out in _run_hf(processor, model, images, batch_size)])
        return _resize(depth, images.shape[1:3], "bicubic").cpu().numpy()

    return Labeler(kind, _hf_version(checkpoint, model), "depth", label)


def _foreground_probability(output) -> torch.Tensor:
    """Segmentation output -> `(image, h, w)` salient probability: class 1 of a softmax, or one sigmoid channel."""
    logits = getattr(output, "logits", output)
    if isinstance(logits, (list, tuple)):  # remote-code models (e.g. BiRefNet) return a list, finest last
        logits = logits[-1]
    if logits.ndim == 3:
        logits = logits[:, None]
    return torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else logits.softmax(dim=1)[:, 1]


def load_saliency_labeler(
    kind: str = "toy",
    checkpoint: str | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
    batch_size: int = 8,
) -> Labeler:
    """A salient-object labeler: uint8 images -> probability `(image, H, W)` in [0, 1]."""
    if kind not in SALIENCY_KINDS:
        raise UserError(f"unknown saliency labeler {kind!r}; choose one of {', '.join(SALIENCY_KINDS)}")
    if kind == "toy":
        from ldm.toy.labelers import SALIENCY_WEIGHTS, load_toy_saliency_labeler

        return Labeler("toy-saliency", f"toy@{_file_digest(SALIENCY_WEIGHTS)}", "saliency", load_toy_saliency_labeler())
    if checkpoint is None:
        raise UserError(
            "the hf saliency labeler needs a checkpoint: a transformers segmentation model whose class 1 is the "
            "salient object (or with one sigmoid channel), e.g. ZhengPeng7/BiRefNet with trust_remote_code: true"
        )
    auto = "AutoModelForImageSegmentation" if trust_remote_code else "AutoModelForSemanticSegmentation"
    processor, model = _load_hf(auto, checkpoint, device, trust_remote_code)

    def label(images: np.ndarray) -> np.ndarray:
        prob = torch.cat([_foreground_probability(out) for out in _run_hf(processor, model, images, batch_size)])
        return _resize(prob, images.shape[1:3], "bilinear").clamp(0, 1).cpu().numpy()

    return Labeler("hf-saliency", _hf_version(checkpoint, model), "saliency", label)
