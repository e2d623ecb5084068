"""Load a diffusers checkpoint for probing: Stable Diffusion 1.x, 2.x, SDXL and the embedded toy model (U-Nets), SD3,
Flux and PixArt (diffusion transformers).

`load_model` returns a `LoadedModel`: the pipeline plus the generation settings of a run, and the one place where images
are generated. Seeds follow the paper: each image's initial noise is drawn on the CPU from its own seeded generator,
so an image depends on its seed alone, not on the device or on which other images share its batch.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ldm.denoisers import (
    denoiser_family,
    family_of_class,
    find_hook_points,
    latent_channels,
    native_latent_size,
    pack_latent,
)
from ldm.errors import UserError
from ldm.hooks import HookPoint, denoiser_of
from ldm.quiet import quiet_known_noise

TOY_MODEL = "toy"
TOY_CHECKPOINT = Path(__file__).parent / "toy" / "checkpoint"
TOY_REBUILD = "python -m ldm.toy.train_ldm --out ldm/toy/checkpoint"
TOY_DIT_MODEL = "toy-dit"  # the embedded toy DiT (ldm.toy.dit): an SD3-style MMDiT beside the toy U-Net
TOY_DIT_CHECKPOINT = Path(__file__).parent / "toy" / "dit"
TOY_DIT_REBUILD = "python -m ldm.toy.train_dit --out ldm/toy/dit"
# A pipeline folder may name one of these subclasses in `sceneprobe_pipeline.json` ({"class": NAME}): model_index.json
# keeps the stock class (diffusers resolves only its own names), the subclass changes how prompts are encoded.
PIPELINE_SUBCLASSES = {"ToySD3Pipeline": "ldm.toy.dit"}
PIPELINE_MARKER = "sceneprobe_pipeline.json"

SCHEDULERS = {
    "lms": "LMSDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "flow_euler": "FlowMatchEulerDiscreteScheduler",  # SD3's and Flux's own: flow matching, not a noise schedule
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class GenerationConfig:
    """How images are generated. Defaults are the paper's (SD v1.4: LMS, 15 steps, guidance 7.5)."""

    steps: int = 15
    guidance_scale: float = 7.5
    height: int | None = None  # None: the model's native size
    width: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UserError(f"steps must be >= 1, got {self.steps}")
        for side in ("height", "width"):
            value = getattr(self, side)
            if value is not None and (value < 8 or value % 8):
                raise UserError(f"{side} must be a positive multiple of 8, got {value}")


@dataclass
class LoadedModel:
    """A pipeline ready to generate, with its name, settings and hook points."""

    name: str
    pipe: object  # a diffusers StableDiffusion(XL), StableDiffusion3, Flux or PixArtSigma pipeline
    config: GenerationConfig = field(default_factory=GenerationConfig)

    @property
    def unet(self) -> torch.nn.Module:
        return self.pipe.unet

    @property
    def denoiser(self) -> torch.nn.Module:
        """The network called every step: the U-Net, or the transformer of a DiT pipeline."""
        return denoiser_of(self.pipe)

    @property
    def family(self) -> str:
        """"unet", "sd3", "flux" or "pixart" (see `ldm.denoisers`)."""
        return denoiser_family(self.denoiser)

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of generated images in pixels."""
        native = native_latent_size(self.family, self.denoiser.config) * self.vae_scale_factor
        return (self.config.height or native, self.config.width or native)

    @property
    def latent_size(self) -> tuple[int, int]:
        h, w = self.image_size
        return h // self.vae_scale_factor, w // self.vae_scale_factor

    @property
    def hook_points(self) -> list[HookPoint]:
        """Every denoiser hook point (U-Net self-attention outputs or transformer blocks), plus the extra pseudo-layers,
        at this model's image size."""
        return find_hook_points(self.pipe, *self.latent_size)

    def initial_noise(self, seeds: list[int]) -> torch.Tensor:
        """Unscaled initial noise `(image, c, h, w)`, float32 on the CPU, one seeded generator per image (Flux's too:
        it is packed into tokens only when handed to the pipeline, so an image's noise is the same for every model)."""
        shape = (1, latent_channels(self.pipe), *self.latent_size)
        noise = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
        return torch.cat(noise)

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int]) -> np.ndarray:
        """Generate one image per (prompt, seed). Returns uint8 `(image, H, W, 3)`."""
        if len(prompts) != len(seeds):
            raise UserError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
        height, width = self.image_size
        latents = self.initial_noise(seeds).to(self.device, self.dtype)
        family = self.family
        extra: dict = {}
        if family == "flux":
            latents = pack_latent(latents)  # FluxPipeline takes its latents packed, 2x2 pixels per token
        elif family == "pixart":
            # binning would generate at a bin's size and resize; captions are ours, no HTML to clean
            extra = {"use_resolution_binning": False, "clean_caption": False}
        out = self.pipe(
            prompt=list(prompts),
            height=height,
            width=width,
            num_inference_steps=self.config.steps,
            guidance_scale=self.config.guidance_scale,
            latents=latents,
            output_type="np",
            **extra,
        )
        return (np.clip(out.images, 0.0, 1.0) * 255).round().astype(np.uint8)

    @torch.no_grad()
    def encode(self, images: np.ndarray, batch: int = 16) -> np.ndarray:
        """The VAE's latent (posterior mean) of uint8 `(image, H, W, 3)` images: float32 `(image, h, w, c)`. A fixed
        network the run already holds, so it serves as a perceptual feature space (edit integrity)."""
        vae, out = self.pipe.vae, []
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch])).to(vae.device, vae.dtype)
            z = vae.encode(x.permute(0, 3, 1, 2) / 127.5 - 1).latent_dist.mean
            out.append(z.float().permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(out)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but no CUDA device is available; use device='cpu'")
    return device


def resolve_model_path(model: str) -> str:
    """The toy models' folders for "toy" and "toy-dit"; a local folder as is; otherwise a hub id (returned unchanged)."""
    if model == TOY_MODEL:
        index = TOY_CHECKPOINT / "model_index.json"
        if not index.is_file():
            raise UserError(f"the toy model checkpoint is missing ({index}); rebuild it with `{TOY_REBUILD}`")
        return str(TOY_CHECKPOINT)
    if model == TOY_DIT_MODEL:
        index = TOY_DIT_CHECKPOINT / "model_index.json"
        if not index.is_file():
            raise UserError(f"the toy DiT checkpoint is missing ({index}); rebuild it with `{TOY_DIT_REBUILD}`")
        return str(TOY_DIT_CHECKPOINT)
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise UserError(
                f"{path} is not a diffusers pipeline folder (no model_index.json); "
                "pass a folder saved with `save_pretrained` or a hub id"
            )
        return str(path)
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise UserError(f"model folder {model!r} does not exist")
    return model


def _pipeline_class(model_path: str):
    """The pipeline class named in the checkpoint's model_index.json (SDXL gets its own class)."""
    import diffusers

    local = Path(model_path) / "model_index.json"
    try:
        if local.is_file():
            index = json.loads(local.read_text())
        else:
            index = diffusers.DiffusionPipeline.load_config(model_path)
    except Exception as err:  # noqa: BLE001 - hub errors come in many types; all mean "not available here"
        raise UserError(
            f"cannot load model {model_path!r}: not a local folder and not in the Hugging Face cache "
            f"({type(err).__name__}). Download it where there is network (`hf download {model_path}`) "
            "or pass a local folder saved with `save_pretrained`"
        ) from None
    name = index.get("_class_name", "StableDiffusionPipeline")
    cls = getattr(diffusers, name, None)
    marker = Path(model_path) / PIPELINE_MARKER
    if marker.is_file():
        sub = json.loads(marker.read_text()).get("class")
        if sub not in PIPELINE_SUBCLASSES:
            raise UserError(f"{marker}: unknown pipeline class {sub!r}; known: {', '.join(PIPELINE_SUBCLASSES)}")
        import importlib

        cls = getattr(importlib.import_module(PIPELINE_SUBCLASSES[sub]), sub)
    if cls is None:
        raise UserError(f"{model_path}: pipeline class {name!r} is not in this diffusers version")
    denoiser = index.get("transformer") or index.get("unet")  # [library, class]
    # refuse an unsupported denoiser before its weights are read; a legacy Transformer2DModel is resolved by its config
    # when loaded (PixArt-Sigma's is a PixArtTransformer2DModel) and checked then
    if denoiser and denoiser[1] and denoiser[1] != "Transformer2DModel":
        denoiser_cls = getattr(diffusers, denoiser[1], None)
        family_of_class([c.__name__ for c in denoiser_cls.__mro__] if denoiser_cls else [denoiser[1]])
    return cls


def absent_components(model_path: str) -> list[str]:
    """Components a local folder's model_index.json lists as `[null, null]` (saved without them)."""
    index = Path(model_path) / "model_index.json"
    if not index.is_file():
        return []
    return [k for k, v in json.loads(index.read_text()).items() if v == [None, None]]


def check_scheduler(pipe, scheduler: str) -> None:
    """Refuse a scheduler that cannot run this model (`check_scheduler_class` on the pipeline's own scheduler)."""
    check_scheduler_class(type(pipe.scheduler).__name__, scheduler)


def check_scheduler_class(native: str, scheduler: str) -> None:
    """Refuse a scheduler that cannot run a model whose own scheduler class is `native`: a noise schedule on a
    flow-matching model (SD3, Flux, the toy DiT) or flow matching on a model trained for a noise schedule."""
    flow_model, flow_chosen = native.startswith("FlowMatch"), SCHEDULERS[scheduler].startswith("FlowMatch")
    if flow_model != flow_chosen:
        fits = [n for n, cls in SCHEDULERS.items() if cls.startswith("FlowMatch") == flow_model]
        kind = "a flow-matching model" if flow_model else "trained for a noise schedule, not flow matching"
        raise UserError(f"scheduler {scheduler!r} cannot run this model ({native}: {kind}); choose {' or '.join(fits)}")


def check_options(model: str, scheduler: str, dtype: str) -> str:
    """Refuse an unknown scheduler or dtype and a missing local model before anything loads; returns the model's
    path (a hub id unchanged: whether it is in the cache is known only where it is loaded)."""
    if scheduler not in SCHEDULERS:
        raise UserError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return resolve_model_path(model)


def load_model(
    model: str = TOY_MODEL,
    scheduler: str = "lms",
    steps: int = 15,
    guidance_scale: float = 7.5,
    dtype: str = "float32",
    device: str = "cpu",
    height: int | None = None,
    width: int | None = None,
    permute_seed: int | None = None,
) -> LoadedModel:
    """Load a Stable Diffusion-family pipeline for probing.

    model: "toy" (the embedded toy LDM), "toy-dit" (the embedded toy DiT), a local diffusers folder, or a Hugging Face hub id (SD 1.x/2.x/XL, SD3, Flux,
    PixArt). scheduler: one of lms (the paper's), ddim, euler, pndm; flow_euler for flow-matching models (SD3, Flux).
    dtype: float32, float16 or bfloat16. device: cpu, cuda, cuda:N or auto. permute_seed: if given, the denoiser's
    weights are permuted (the paper's control).
    """
    import diffusers

    quiet_known_noise()
    config = GenerationConfig(steps=steps, guidance_scale=guidance_scale, height=height, width=width)
    path = check_options(model, scheduler, dtype)
    device = resolve_device(device)
    cls = _pipeline_class(path)
    kwargs: dict = {"dtype": DTYPES[dtype]}
    params = inspect.signature(cls.__init__).parameters
    if "safety_checker" in params:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    # components the folder saved as absent (e.g. the toy DiT's T5): diffusers wants them passed as None explicitly
    kwargs.update({k: None for k in absent_components(path) if k in params})
    try:
        pipe = cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load model {model!r} from {path}: {err}") from None
    denoiser_family(denoiser_of(pipe))  # a denoiser sceneprobe cannot read is refused before anything else
    check_scheduler(pipe, scheduler)
    scheduler_cls = getattr(diffusers, SCHEDULERS[scheduler])
    # SD's own PNDM config skips the Runge-Kutta warm-up steps; keep that when switching schedulers.
    extra = {"skip_prk_steps": True} if scheduler == "pndm" else {}
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config, **extra)
    pipe.set_progress_bar_config(disable=True)
    if permute_seed is not None:
        from ldm.control import permute_weights

        permute_weights(denoiser_of(pipe), permute_seed)
    pipe.to(device)
    loaded = LoadedModel(name=model, pipe=pipe, config=config)
    loaded.hook_points  # fail at load time, not mid-run, on a denoiser without hook points or a size it cannot patch
    return loaded
