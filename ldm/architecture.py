"""Describe a checkpoint's hook points from its configs alone: no weights are read or allocated.

Used by `sceneprobe hooks` and the planner, so that SD v1.4's 16 layers can be listed without its 4 GB of weights.
Configs come from a local folder, the Hugging Face cache, the published configs shipped in `ldm/architectures/`
(SD v1.4, SD 2.1, SDXL base), or the hub, in that order.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from ldm.errors import UserError
from ldm.hooks import HookPoint, find_hook_points
from ldm.loading import GenerationConfig, resolve_model_path

SHIPPED = Path(__file__).parent / "architectures"


def read_config(model: str, component: str) -> dict:
    """`component/config.json` ("unet" or "vae") of a model: "toy", a local folder or a hub id."""
    path = resolve_model_path(model)
    local = Path(path) / component / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    from huggingface_hub import hf_hub_download

    try:  # the cache first: without network the hub client would retry for ~20 s
        return json.loads(Path(hf_hub_download(path, "config.json", subfolder=component, local_files_only=True)).read_text())
    except Exception:  # noqa: BLE001 - not cached
        pass
    shipped = SHIPPED / path.replace("/", "--") / component / "config.json"
    if shipped.is_file():
        return json.loads(shipped.read_text())
    try:
        return json.loads(Path(hf_hub_download(path, "config.json", subfolder=component)).read_text())
    except Exception as err:  # noqa: BLE001 - any hub failure means "not available here"
        raise UserError(
            f"cannot read {component}/config.json of {path!r}: not a local folder and not in the Hugging Face "
            f"cache ({type(err).__name__}); download it where there is network (`hf download {path}`) "
            "or pass a local folder"
        ) from None


def empty_unet(unet_config: dict):
    """A `UNet2DConditionModel` with this config on the meta device (shapes only, no memory)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        return UNet2DConditionModel.from_config(unet_config)


def image_size(model: str, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
    """(height, width, vae_scale) of the images `model` generates; None sides take the native size."""
    GenerationConfig(height=height, width=width)  # refuses a side that is not a positive multiple of 8
    vae_scale = 2 ** (len(read_config(model, "vae")["block_out_channels"]) - 1)
    native = read_config(model, "unet")["sample_size"] * vae_scale
    return height or native, width or native, vae_scale


def describe_hook_points(model: str, height: int | None = None, width: int | None = None) -> list[HookPoint]:
    """Hook points of `model` ("toy", a folder or a hub id) at the given image size (default: native)."""
    unet_config, vae_config = read_config(model, "unet"), read_config(model, "vae")
    height, width, vae_scale = image_size(model, height, width)
    pipe = SimpleNamespace(unet=empty_unet(unet_config), vae=SimpleNamespace(config=SimpleNamespace(**vae_config)))
    return find_hook_points(pipe, height // vae_scale, width // vae_scale)
