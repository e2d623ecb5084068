"""Describe a checkpoint's hook points from its configs alone: no weights are read or allocated.

Used by `sceneprobe hooks` and the planner, so that SD v1.4's 16 layers can be listed without its 4 GB of weights.
Configs come from a local folder, the Hugging Face cache, the published configs shipped in `ldm/architectures/`
(SD v1.4, SD 2.1, SDXL base, SD3-medium, FLUX.1-dev, PixArt-Sigma), or the hub, in that order. The denoiser is the
`transformer` component when model_index.json lists one, else the `unet`.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from ldm.denoisers import denoiser_family, family_of_class, find_hook_points, native_latent_size
from ldm.errors import UserError
from ldm.hooks import HookPoint
from ldm.loading import GenerationConfig, resolve_model_path

SHIPPED = Path(__file__).parent / "architectures"


def _read_json(path: str, filename: str, subfolder: str | None) -> dict:
    """`subfolder/filename` of a local folder, a cached or shipped hub model, or the hub."""
    where = f"{subfolder}/{filename}" if subfolder else filename
    local = Path(path) / where
    if local.is_file():
        return json.loads(local.read_text())
    from huggingface_hub import hf_hub_download

    try:  # the cache first: without network the hub client would retry for ~20 s
        return json.loads(Path(hf_hub_download(path, filename, subfolder=subfolder, local_files_only=True)).read_text())
    except Exception:  # noqa: BLE001 - not cached
        pass
    shipped = SHIPPED / path.replace("/", "--") / where
    if shipped.is_file():
        return json.loads(shipped.read_text())
    try:
        return json.loads(Path(hf_hub_download(path, filename, subfolder=subfolder)).read_text())
    except Exception as err:  # noqa: BLE001 - any hub failure means "not available here"
        raise UserError(
            f"cannot read {where} of {path!r}: not a local folder and not in the Hugging Face "
            f"cache ({type(err).__name__}); download it where there is network (`hf download {path}`) "
            "or pass a local folder"
        ) from None


def read_config(model: str, component: str) -> dict:
    """`component/config.json` ("unet", "transformer" or "vae") of a model: "toy", a local folder or a hub id."""
    return _read_json(resolve_model_path(model), "config.json", component)


def denoiser_component(model: str) -> str:
    """"transformer" if the model's model_index.json lists one (SD3, Flux, PixArt), else "unet"."""
    return "transformer" if "transformer" in _read_json(resolve_model_path(model), "model_index.json", None) else "unet"


def empty_denoiser(config: dict):
    """The denoiser this config describes, on the meta device: shapes only, no memory, no compute (a transformer's
    position-embedding tables are not filled in). Legacy class names are resolved as diffusers does when loading
    (PixArt-Sigma's published `Transformer2DModel` with adaLN-single is a `PixArtTransformer2DModel`). Refuses a
    class sceneprobe cannot read, naming the supported ones."""
    import diffusers

    name = config.get("_class_name", "UNet2DConditionModel")
    cls = getattr(diffusers, name, None)
    if cls is None:
        family_of_class([name])  # raises: not even a diffusers class
    with torch.device("meta"):
        denoiser = cls.from_config(config)
    denoiser_family(denoiser)
    return denoiser


def _native_image_size(model: str, denoiser) -> tuple[int, int]:
    """(native side in pixels, vae_scale)."""
    vae_scale = 2 ** (len(read_config(model, "vae")["block_out_channels"]) - 1)
    return native_latent_size(denoiser_family(denoiser), denoiser.config) * vae_scale, vae_scale


def image_size(model: str, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
    """(height, width, vae_scale) of the images `model` generates; None sides take the native size."""
    GenerationConfig(height=height, width=width)  # refuses a side that is not a positive multiple of 8
    native, vae_scale = _native_image_size(model, empty_denoiser(read_config(model, denoiser_component(model))))
    return height or native, width or native, vae_scale


def describe_hook_points(model: str, height: int | None = None, width: int | None = None) -> list[HookPoint]:
    """Hook points of `model` ("toy", a folder or a hub id) at the given image size (default: native)."""
    GenerationConfig(height=height, width=width)
    component = denoiser_component(model)
    denoiser, vae_config = empty_denoiser(read_config(model, component)), read_config(model, "vae")
    native, vae_scale = _native_image_size(model, denoiser)
    height, width = height or native, width or native
    pipe = SimpleNamespace(**{component: denoiser}, vae=SimpleNamespace(config=SimpleNamespace(**vae_config)))
    return find_hook_points(pipe, height // vae_scale, width // vae_scale)


def native_scheduler(model: str) -> str | None:
    """The scheduler class `model`'s model_index.json names (e.g. "FlowMatchEulerDiscreteScheduler"), read from a local
    folder, the Hugging Face cache or the shipped configs; None where none of them has it (never the network: this
    is a cheap check before a run starts, and the model's own load checks again)."""
    from huggingface_hub import try_to_load_from_cache

    path = resolve_model_path(model)
    local = Path(path) / "model_index.json"
    shipped = SHIPPED / path.replace("/", "--") / "model_index.json"
    cached = None if local.is_file() else try_to_load_from_cache(path, "model_index.json")
    for candidate in (local, cached, shipped):
        if isinstance(candidate, (str, Path)) and Path(candidate).is_file():
            entry = json.loads(Path(candidate).read_text()).get("scheduler")
            return entry[1] if entry and entry[1] else None
    return None
