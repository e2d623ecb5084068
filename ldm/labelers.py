"""Pseudo-labelers behind one interface: images in, one label per image out (a map at image resolution, or one
vector).

Depth labelers return relative inverse depth (larger = nearer), as MiDaS DPT-Large does in the paper; saliency
labelers return a salient-object probability in [0, 1]; normals labelers unit surface normals per pixel in camera
coordinates (x right, y up, z towards the viewer), (0, 0, 0) where they see no surface (sky): the valid-pixel mask
is |n| > 0; light labelers one unit light direction per image, in the same coordinates. Output per target
(`LABEL_SHAPES`, checked on every call):

| target   | output (uint8 images `(image, H, W, 3)` in) |
|----------|----------------------------------------------|
| depth    | float32 `(image, H, W)`                      |
| saliency | float32 `(image, H, W)` in [0, 1]            |
| normals  | float32 `(image, H, W, 3)` unit or zero      |
| light    | float32 `(image, 3)` unit                    |

Kinds:

| target   | kind             | default checkpoint                       |
|----------|------------------|------------------------------------------|
| depth    | `toy`            | the embedded toy depth CNN               |
| depth    | `dpt`            | `Intel/dpt-large` (MiDaS DPT-Large)      |
| depth    | `depth-anything` | `LiheYoung/depth-anything-small-hf`      |
| saliency | `toy`            | the embedded toy saliency CNN            |
| saliency | `hf`             | none: name a transformers segmentation model (class 1 = salient, or one sigmoid channel) |
| normals  | `toy`            | the embedded toy normals CNN (toy-world images only) |
| normals  | `marigold`       | `prs-eth/marigold-normals-v1-1` (diffusers' `MarigoldNormalsPipeline`) |
| light    | `toy`            | the embedded toy light head (toy-world images only)  |

Marigold's normals are already in our frame (its docs: X right, Y up, Z at the viewer) and unit length everywhere
(it has no sky class, so every pixel is valid); its sampler starts from noise, seeded per image (`MARIGOLD_SEED`), so
an image's normals do not depend on the batch it is labelled in. No light labeler for real images exists yet
(`TOY_WORLD_ONLY`): a run of another model with that target is refused before it starts (`check_labelers`).

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
NORMALS_KINDS = {"toy": None, "marigold": "prs-eth/marigold-normals-v1-1"}
LIGHT_KINDS = {"toy": None}
KINDS = {"depth": DEPTH_KINDS, "saliency": SALIENCY_KINDS, "normals": NORMALS_KINDS, "light": LIGHT_KINDS}
LABEL_SHAPES = {"depth": "(image, H, W)", "saliency": "(image, H, W)", "normals": "(image, H, W, 3)",
                "light": "(image, 3)"}
TOY_WORLD_MODELS = ("toy", "toy-dit")  # the models that draw toy-world images, the only ones the toy labelers know
TOY_WORLD_ONLY = {"normals": ("toy",), "light": ("toy",)}  # target -> kinds that read toy-world images only
MARIGOLD_SEED = 0  # each image's own generator: labels independent of batch composition


@dataclass
class Labeler:
    """A loaded labeler. `version` pins the exact weights so stored labels say where they came from."""

    name: str
    version: str
    target: str  # one of KINDS
    label: Callable[[np.ndarray], np.ndarray]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 `(image, H, W, 3)` -> float32 of the target's shape (`LABEL_SHAPES`)."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise UserError(f"labelers take uint8 images (image, H, W, 3); got {images.dtype} {images.shape}")
        out = np.asarray(self.label(images), dtype=np.float32)
        n, H, W = images.shape[:3]
        expected = {"normals": (n, H, W, 3), "light": (n, 3)}.get(self.target, (n, H, W))
        if out.shape != expected:  # a labeler bug, named before anything is stored
            raise ValueError(f"labeler {self.name} returned {out.shape} for {self.target}, expected "
                             f"{LABEL_SHAPES.get(self.target)} = {expected}")
        return out


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _config_version(checkpoint: str, config: dict) -> str:
    """`<checkpoint>@config-<digest>`: pins weights that carry no commit hash by their config."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    return f"{checkpoint}@config-{digest[:12]}"


def _hf_version(checkpoint: str, model) -> str:
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        return f"{checkpoint}@{commit[:12]}"
    return _config_version(checkpoint, model.config.to_dict())


def _missing_checkpoint(checkpoint: str, err: OSError) -> UserError:
    return UserError(
        f"cannot load labeler checkpoint {checkpoint!r} ({type(err).__name__}): not a local folder and not in the "
        f"Hugging Face cache; download it where there is network (`hf download {checkpoint}`) or pass a folder")


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
        raise _missing_checkpoint(checkpoint, err) from None
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


def load_normals_labeler(kind: str = "toy", checkpoint: str | None = None, device: str = "cpu",
                         trust_remote_code: bool = False, batch_size: int = 8) -> Labeler:
    """A surface-normals labeler: uint8 images -> unit normals `(image, H, W, 3)`, zero where it sees no surface."""
    if kind not in NORMALS_KINDS:
        raise UserError(f"unknown normals labeler {kind!r}; choose one of {', '.join(NORMALS_KINDS)}")
    if kind == "toy":
        from ldm.toy.labelers import NORMALS_WEIGHTS, load_toy_normals_labeler

        return Labeler("toy-normals", f"toy@{_file_digest(NORMALS_WEIGHTS)}", "normals", load_toy_normals_labeler())
    return _marigold_normals(checkpoint or NORMALS_KINDS[kind], device, batch_size)


def _marigold_normals(checkpoint: str, device: str, batch_size: int) -> Labeler:
    """diffusers' Marigold normals pipeline at its own defaults (steps, processing resolution), one prediction per
    image (no ensemble), resized back to the input size."""
    from diffusers import MarigoldNormalsPipeline

    try:
        pipe = MarigoldNormalsPipeline.from_pretrained(checkpoint).to(device)
    except OSError as err:
        raise _missing_checkpoint(checkpoint, err) from None
    pipe.set_progress_bar_config(disable=True)
    version = _config_version(checkpoint, {name: dict(getattr(pipe, name).config)
                                           for name in ("unet", "vae", "scheduler")})

    def label(images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[i : i + batch_size]).permute(0, 3, 1, 2).float() / 255  # (image, 3, H, W)
            seeds = [torch.Generator(device).manual_seed(MARIGOLD_SEED) for _ in range(len(batch))]
            with torch.no_grad():
                pred = pipe(batch.to(device), generator=seeds, output_type="pt", batch_size=len(batch)).prediction
            out.append(pred.permute(0, 2, 3, 1).float().cpu().numpy())  # (image, H, W, 3), input resolution
        return np.concatenate(out)

    return Labeler("marigold-normals", version, "normals", label)


def load_light_labeler(kind: str = "toy", checkpoint: str | None = None, device: str = "cpu",
                       trust_remote_code: bool = False, batch_size: int = 8) -> Labeler:
    """A light-direction labeler: uint8 images -> one unit direction per image `(image, 3)`."""
    if kind not in LIGHT_KINDS:
        raise UserError(f"unknown light labeler {kind!r}; choose one of {', '.join(LIGHT_KINDS)}")
    from ldm.toy.labelers import LIGHT_WEIGHTS, load_toy_light_labeler

    return Labeler("toy-light", f"toy@{_file_digest(LIGHT_WEIGHTS)}", "light", load_toy_light_labeler())


LOADERS = {"depth": load_depth_labeler, "saliency": load_saliency_labeler, "normals": load_normals_labeler,
           "light": load_light_labeler}


def check_labelers(model: str, kinds: dict[str, str], toy_world: bool = False) -> None:
    """Refuse, before any work, a target whose labeler cannot label `model`'s images: `kinds` maps each target to
    its labeler kind. An unknown target or kind lists the valid ones; a toy-world-only labeler (`TOY_WORLD_ONLY`) on
    a model outside the toy world names the fix. `toy_world`: the images are toy-world images whatever the model
    (toy renders run through the noised-image protocol), so the toy labelers read them."""
    for target, kind in kinds.items():
        if target not in KINDS:
            raise UserError(f"unknown label target {target!r}; choose one of {', '.join(KINDS)}")
        if kind not in KINDS[target]:
            raise UserError(f"labels.{target}.kind: unknown {target} labeler {kind!r}; choose one of "
                            f"{', '.join(KINDS[target])}")
        if kind in TOY_WORLD_ONLY.get(target, ()) and model not in TOY_WORLD_MODELS and not toy_world:
            others = [k for k in KINDS[target] if k not in TOY_WORLD_ONLY[target]]
            fix = f"choose labels.{target}.kind: {' or '.join(others)}" if others else f"remove {target} from " \
                  "probes.targets (no labeler for real images exists yet)"
            raise UserError(f"labels.{target}.kind: {kind} was trained on toy-world renders and reads only the toy "
                            f"models' images ({', '.join(TOY_WORLD_MODELS)}), not {model!r}'s; {fix}")
