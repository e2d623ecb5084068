"""The toy latent diffusion model: Stable Diffusion v1's layout at a tiny width, for 64x64 toy-world renders.

Components (all stock diffusers / transformers classes, so the saved folder loads with
`StableDiffusionPipeline.from_pretrained`):

- `AutoencoderKL`: (image, 64, 64, 3) <-> (image, 4, 16, 16) latents (two downsamples, factor 4).
- `UNet2DConditionModel`: SD v1 block layout (3 cross-attention down blocks + 1 plain, mirrored up blocks, attention in
  the mid block, 2 layers per block) so it has SD's 16 self-attention layers (`attn1`), here at 16/8/4/2 latent pixels.
- `CLIPTextModel` + `CLIPTokenizer` (see `ldm.toy.tokenizer`) over the caption vocabulary.
- `LMSDiscreteScheduler` with SD's betas.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    LMSDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ldm.toy.tokenizer import MODEL_MAX_LENGTH, VOCAB_FILES, build_tokenizer, copy_tokenizer_files

IMAGE_SIZE = 64
LATENT_SIZE = 16
LATENT_CHANNELS = 4


@dataclass
class VAEConfig:
    """`AutoencoderKL` kwargs. Three blocks = two downsamples: 64x64 pixels -> 16x16 latents."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 3
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 3
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    latent_channels: int = LATENT_CHANNELS
    norm_num_groups: int = 16
    sample_size: int = IMAGE_SIZE
    scaling_factor: float = 1.0  # set to 1 / latent std after VAE training


@dataclass
class UNetConfig:
    """`UNet2DConditionModel` kwargs with SD v1's block layout; ~4.3M parameters."""

    sample_size: int = LATENT_SIZE
    in_channels: int = LATENT_CHANNELS
    out_channels: int = LATENT_CHANNELS
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    # The first (16x16) level is as wide as the second: 32-channel 16x16 layers were the weakest in a trial.
    block_out_channels: tuple[int, ...] = (64, 64, 64, 64)
    layers_per_block: int = 2
    # diffusers' legacy naming: for SD v1 configs `attention_head_dim` is the number of heads.
    attention_head_dim: int = 4
    cross_attention_dim: int = 64
    norm_num_groups: int = 16


@dataclass
class TextConfig:
    """`CLIPTextConfig` kwargs; vocab size and special-token ids are filled in from the tokenizer."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    max_position_embeddings: int = MODEL_MAX_LENGTH
    projection_dim: int = 64
    hidden_act: str = "quick_gelu"


@dataclass
class ToyLDMConfig:
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    text: TextConfig = field(default_factory=TextConfig)


# Stable Diffusion v1's noise schedule (train and sample with the same betas).
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def build_vae(cfg: VAEConfig) -> AutoencoderKL:
    return AutoencoderKL(**asdict(cfg))


def build_unet(cfg: UNetConfig) -> UNet2DConditionModel:
    return UNet2DConditionModel(**asdict(cfg))


def build_text_encoder(cfg: TextConfig, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    text_cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # pooled output reads the first eos position
        pad_token_id=tokenizer.pad_token_id,
        **asdict(cfg),
    )
    return CLIPTextModel(text_cfg)


def build_train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE, prediction_type="epsilon", clip_sample=False)


def build_sample_scheduler() -> LMSDiscreteScheduler:
    return LMSDiscreteScheduler(**SCHEDULE, prediction_type="epsilon", steps_offset=1)  # as in SD v1's config


@dataclass
class ToyLDM:
    """The four trainable/fixed parts of the pipeline, before they are wrapped into a `StableDiffusionPipeline`."""

    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer


def build_toy_ldm(words: list[str], tokenizer_dir: str | Path, cfg: ToyLDMConfig | None = None, seed: int = 0,
                  reuse_tokenizer: bool = False) -> ToyLDM:
    """Randomly initialised toy LDM; `words` is the caption vocabulary the tokenizer is built for (or, with
    `reuse_tokenizer`, the one already in `tokenizer_dir`)."""
    cfg = cfg or ToyLDMConfig()
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(words, tokenizer_dir, reuse=reuse_tokenizer)
    return ToyLDM(
        vae=build_vae(cfg.vae),
        unet=build_unet(cfg.unet),
        text_encoder=build_text_encoder(cfg.text, tokenizer),
        tokenizer=tokenizer,
    )


def to_pipeline(model: ToyLDM) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=build_sample_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(model: ToyLDM, folder: str | Path) -> Path:
    """Save as a stock diffusers folder (safetensors); also keeps CLIP's vocab.json/merges.txt for old loaders."""
    folder = Path(folder)
    to_pipeline(model).save_pretrained(str(folder), safe_serialization=True)
    vocab_dir = Path(model.tokenizer.name_or_path)
    if all((vocab_dir / name).exists() for name in VOCAB_FILES):
        copy_tokenizer_files(vocab_dir, folder / "tokenizer")
    return folder


def load_pipeline(folder: str | Path) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, requires_safety_checker=False)


def self_attention_layers(unet: UNet2DConditionModel) -> list[str]:
    """Module paths of the U-Net's self-attention layers (`...attn1`), in forward order."""
    return [name for name, _ in unet.named_modules() if name.endswith("attn1")]


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def sample_grid(pipe: StableDiffusionPipeline, captions: list[str], real: np.ndarray | None = None, steps: int = 25,
                guidance_scale: float = 5.0, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 grid: one column per caption; the real render (image, 64, 64, 3) on top when given."""
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator("cpu").manual_seed(seed)
    fake = pipe(captions, height=IMAGE_SIZE, width=IMAGE_SIZE, num_inference_steps=steps, guidance_scale=guidance_scale,
                generator=gen, output_type="np").images
    rows = [(fake * 255).round().astype(np.uint8)]
    if real is not None:
        rows.insert(0, real)
    return np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)


def write_samples(folder: str | Path, png: str | Path, n: int = 8, first_seed: int | None = None) -> list[str]:
    """Grid PNG of held-out scenes from `first_seed` (default: the first held-out seed), real render on top,
    generated from its caption below; returns the captions."""
    from PIL import Image

    from ldm.toy.render import HELD_OUT_SEED, render_batch

    first_seed = HELD_OUT_SEED if first_seed is None else first_seed

    held_out = render_batch(list(range(first_seed, first_seed + n)), size=64)
    grid = sample_grid(load_pipeline(folder), list(held_out.captions), real=held_out.rgb)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(png)
    return list(held_out.captions)
