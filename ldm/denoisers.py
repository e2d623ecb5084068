"""The denoisers sceneprobe reads, and the hook points of the diffusion transformers among them.

A pipeline's denoiser is `pipe.unet` (Stable Diffusion 1.x/2.x/XL) or `pipe.transformer` (SD3, Flux, PixArt). Its
family decides where the hook points are; every family hands activations to hooks as `(batch, h, w, c)` on the token
grid, so the store, probes, edits and report never ask which one they have.

Transformer hook points, in forward order (k counts blocks from 0):
- SD3 / SD3.5 (`SD3Transformer2DModel`, MMDiT joint blocks): `joint_{k}` is the image stream's joint-attention output
  (`transformer_blocks.{k}.attn.to_out.0`), before its gate and residual add, as the U-Net points are; `joint_{k}_out`
  is the image stream leaving block k (the second element of the block's `(text, image)` output). SD3.5's extra
  image-only self-attention (`attn2`) is not a hook point of its own; `joint_{k}_out` includes it.
- Flux (`FluxTransformer2DModel`): `double_{k}` is a double-stream block's image attention output
  (`transformer_blocks.{k}.attn.to_out.0`); `single_{k}` is a single-stream block's output projection
  (`single_transformer_blocks.{k}.proj_out`: attention and parallel MLP, before the gate and residual add) on the
  image-token slice of the joint `[text, image]` sequence: its last h*w tokens.
- PixArt (`PixArtTransformer2DModel`): `block_{k}` is a block's self-attention output
  (`transformer_blocks.{k}.attn1.to_out.0`).

Token grids: SD3 and PixArt patchify the latent with a stride-p convolution (p = `patch_size`, 2 in the published
models), so a latent of h x w gives (h // p) x (w // p) row-major tokens. Flux packs 2x2 latent pixels into each token
outside the transformer (`FluxPipeline._pack_latents`), so its grid is (h // 2) x (w // 2) with `patch_size` 1.
"""

from __future__ import annotations

import torch

from ldm.errors import UserError
from ldm.hooks import HookPoint, denoiser_of, find_unet_hook_points

# denoiser class -> family; a subclass belongs to its base's family
FAMILIES = {
    "UNet2DConditionModel": "unet",
    "SD3Transformer2DModel": "sd3",
    "FluxTransformer2DModel": "flux",
    "PixArtTransformer2DModel": "pixart",
}
SUPPORTED = (
    "UNet2DConditionModel (Stable Diffusion 1.x, 2.x, XL), SD3Transformer2DModel (SD3, SD3.5), "
    "FluxTransformer2DModel (FLUX.1), PixArtTransformer2DModel (PixArt-alpha, PixArt-Sigma)"
)
# Flux's transformer config has no sample_size: FluxPipeline generates at default_sample_size (128 latents, 1024 px)
FLUX_NATIVE_LATENT = 128


def family_of_class(class_names) -> str:
    """The family of a denoiser class, given the names of the class and its bases; refuses any other."""
    names = list(class_names)
    for name in names:
        if name in FAMILIES:
            return FAMILIES[name]
    raise UserError(f"denoiser class {names[0]} is not supported; sceneprobe reads {SUPPORTED}")


def denoiser_family(denoiser: torch.nn.Module) -> str:
    """"unet", "sd3", "flux" or "pixart"; any other denoiser class is refused with the list of supported ones."""
    return family_of_class(cls.__name__ for cls in type(denoiser).__mro__)


def native_latent_size(family: str, denoiser_config) -> int:
    """The latent side the model was trained at (its pipeline's default image size / the VAE's scale)."""
    if family == "flux":
        return FLUX_NATIVE_LATENT
    return denoiser_config["sample_size"] if isinstance(denoiser_config, dict) else denoiser_config.sample_size


def token_patch(family: str, denoiser: torch.nn.Module) -> int:
    """Latent pixels per token side: the patch size, times Flux's 2x2 packing."""
    return 2 * denoiser.config.patch_size if family == "flux" else denoiser.config.patch_size


def _point(name: str, module_path: str, channels: int, patch: int, grid: tuple[int, int], take: str = "all"):
    return HookPoint(name=name, module_path=module_path, height=grid[0], width=grid[1], channels=channels,
                     kind="transformer", patch=patch, take=take)


def find_transformer_hook_points(denoiser: torch.nn.Module, latent_height: int, latent_width: int) -> list[HookPoint]:
    """Every hook point of an SD3, Flux or PixArt transformer, in forward order, at the given latent size."""
    family = denoiser_family(denoiser)
    patch = token_patch(family, denoiser)
    if latent_height % patch or latent_width % patch:
        raise UserError(
            f"a {latent_height}x{latent_width} latent does not split into {patch}x{patch} patches: choose an image "
            f"size whose sides are multiples of {patch} latent pixels ({8 * patch} px with the usual 8x VAE)"
        )
    grid = (latent_height // patch, latent_width // patch)
    points: list[HookPoint] = []
    if family == "sd3":
        width = denoiser.config.num_attention_heads * denoiser.config.attention_head_dim
        for k, block in enumerate(denoiser.transformer_blocks):
            prefix = f"transformer_blocks.{k}"
            points.append(_point(f"joint_{k}", f"{prefix}.attn.to_out.0", block.attn.to_out[0].out_features, patch, grid))
            points.append(_point(f"joint_{k}_out", prefix, width, patch, grid, take="pair_image"))
    elif family == "flux":
        for k, block in enumerate(denoiser.transformer_blocks):
            path = f"transformer_blocks.{k}.attn.to_out.0"
            points.append(_point(f"double_{k}", path, block.attn.to_out[0].out_features, patch, grid))
        for k, block in enumerate(denoiser.single_transformer_blocks):
            path = f"single_transformer_blocks.{k}.proj_out"
            points.append(_point(f"single_{k}", path, block.proj_out.out_features, patch, grid, take="image_tail"))
    elif family == "pixart":
        for k, block in enumerate(denoiser.transformer_blocks):
            path = f"transformer_blocks.{k}.attn1.to_out.0"
            points.append(_point(f"block_{k}", path, block.attn1.to_out[0].out_features, patch, grid))
    else:
        raise UserError(f"{type(denoiser).__name__} is a U-Net, not a diffusion transformer")
    if not points:
        raise UserError(f"this {type(denoiser).__name__} has no transformer blocks; sceneprobe needs at least one")
    return points


def latent_channels(pipe) -> int:
    """Channels of the latent the sampler updates (unpacked, for Flux): the U-Net's input or the VAE's latent."""
    denoiser = denoiser_of(pipe)
    if denoiser_family(denoiser) == "unet":
        return denoiser.config.in_channels
    return pipe.vae.config.latent_channels


def find_hook_points(pipe, latent_height: int, latent_width: int) -> list[HookPoint]:
    """The denoiser's hook points followed by the extra pseudo-layers (`ldm.hooks.EXTRAS`); refuses a denoiser of
    any other class, naming the supported ones."""
    denoiser = denoiser_of(pipe)
    if denoiser_family(denoiser) == "unet":
        points = find_unet_hook_points(denoiser, latent_height, latent_width)
    else:
        points = find_transformer_hook_points(denoiser, latent_height, latent_width)
    channels = latent_channels(pipe)
    vae_channels = pipe.vae.config.block_out_channels[-1]
    extra = [
        HookPoint("vae_mid", "vae.decoder.mid_block.attentions.0.to_out.0", latent_height, latent_width, vae_channels),
        HookPoint("latent", "scheduler.step(sample)", latent_height, latent_width, channels),
        HookPoint("x0", "scheduler.step(pred_original_sample)", latent_height, latent_width, channels),
    ]
    return points + [HookPoint(**{**p.__dict__, "kind": "extra"}) for p in extra]


def unpack_latent(latent: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """A sampler latent as `(batch, c, h, w)`: Flux's packed `(batch, h/2 * w/2, 4c)` tokens are unpacked (the
    inverse of `FluxPipeline._pack_latents`); a spatial latent is returned as it is."""
    if latent.ndim == 4:
        return latent
    b, _, packed = latent.shape
    h, w = latent_hw
    # (b, h/2 * w/2, c*2*2) -> (b, h/2, w/2, c, 2, 2) -> (b, c, h/2, 2, w/2, 2) -> (b, c, h, w)
    return latent.view(b, h // 2, w // 2, packed // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, packed // 4, h, w)


def pack_latent(latent: torch.Tensor) -> torch.Tensor:
    """`(batch, c, h, w)` -> Flux's `(batch, h/2 * w/2, 4c)` tokens (as `FluxPipeline._pack_latents`)."""
    b, c, h, w = latent.shape
    # (b, c, h/2, 2, w/2, 2) -> (b, h/2, w/2, c, 2, 2) -> (b, h/2 * w/2, 4c)
    return latent.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), 4 * c)
