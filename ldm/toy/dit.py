"""The toy DiT: an SD3-style MMDiT (`SD3Transformer2DModel`) beside the toy U-Net, on the same VAE and captions.

Components (stock diffusers / transformers classes; the folder is an ordinary `StableDiffusion3Pipeline` folder):

- `AutoencoderKL`: the toy LDM's VAE, unchanged (`ldm/toy/checkpoint/vae`, 4 latent channels at 16x16), with
  `shift_factor` 0 registered (SD3's pipeline adds it when decoding; the toy latents are already centred).
- `SD3Transformer2DModel`: joint (MMDiT) blocks, patch size 2, so a 16x16 latent is an 8x8 token grid.
- two `CLIPTextModelWithProjection` + the toy `CLIPTokenizer` (SD3's two CLIP slots), both started from the toy LDM's
  trained text encoder; no T5 (SD3's third, optional text encoder).
- `FlowMatchEulerDiscreteScheduler` (shift 1: a 16x16 latent needs no resolution shift).

SD3's pipeline pads a missing T5 with `max_sequence_length` (default 256) zero tokens. The toy DiT is trained without
them, so sample with `max_sequence_length=0` (or use `ToySD3Pipeline`, which makes that the default):

    pipe = StableDiffusion3Pipeline.from_pretrained("ldm/toy/dit", text_encoder_3=None, tokenizer_3=None)
    pipe(prompt, height=64, width=64, max_sequence_length=0)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from ldm.toy.model import LATENT_CHANNELS, LATENT_SIZE

TOY_DIT_CHECKPOINT = Path(__file__).parent / "dit"
TOY_UNET_CHECKPOINT = Path(__file__).parent / "checkpoint"


@dataclass
class DiTConfig:
    """`SD3Transformer2DModel` kwargs: width 128 (4 heads of 32), 8 joint blocks on an 8x8 token grid; ~4.6M params."""

    sample_size: int = LATENT_SIZE
    patch_size: int = 2
    in_channels: int = LATENT_CHANNELS
    out_channels: int = LATENT_CHANNELS
    num_layers: int = 8
    attention_head_dim: int = 32
    num_attention_heads: int = 4
    joint_attention_dim: int = 128  # the two CLIP encoders' hidden states, concatenated (64 + 64)
    caption_projection_dim: int = 128  # = heads x head dim
    pooled_projection_dim: int = 128  # the two pooled projections, concatenated
    pos_embed_max_size: int = 16  # up to 16x16 tokens: 128x128 images
    qk_norm: str | None = "rms_norm"  # SD3.5's: keeps attention logits bounded at a high learning rate


@dataclass
class ToyDiTConfig:
    dit: DiTConfig = field(default_factory=DiTConfig)
    flow_shift: float = 1.0


class ToySD3Pipeline(StableDiffusion3Pipeline):
    """`StableDiffusion3Pipeline` without SD3's T5 padding: with no third text encoder, the text sequence is the CLIP
    tokens only (what the toy DiT is trained on), whatever `max_sequence_length` says."""

    def _get_t5_prompt_embeds(self, prompt=None, num_images_per_prompt=1, max_sequence_length=256, device=None,
                              dtype=None):
        if self.text_encoder_3 is None:
            max_sequence_length = 0
        return super()._get_t5_prompt_embeds(prompt, num_images_per_prompt, max_sequence_length, device, dtype)


@dataclass
class ToyDiT:
    vae: AutoencoderKL
    transformer: SD3Transformer2DModel
    text_encoder: CLIPTextModelWithProjection
    text_encoder_2: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer
    flow_shift: float = 1.0


def text_encoder_from_toy(folder: Path) -> CLIPTextModelWithProjection:
    """The toy LDM's `CLIPTextModel` weights in a `CLIPTextModelWithProjection` (its projection freshly initialised)."""
    from transformers import CLIPTextModel

    trained = CLIPTextModel.from_pretrained(str(folder / "text_encoder"))
    model = CLIPTextModelWithProjection(trained.config)
    model.text_model.load_state_dict(trained.state_dict())  # transformers 5: CLIPTextModel is the text model itself
    return model


def build_toy_dit(cfg: ToyDiTConfig | None = None, seed: int = 0, unet_folder: Path = TOY_UNET_CHECKPOINT) -> ToyDiT:
    """A randomly initialised transformer on the toy LDM's VAE, tokenizer and (twice) its text encoder."""
    cfg = cfg or ToyDiTConfig()
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_pretrained(str(unet_folder / "vae"))
    vae.register_to_config(shift_factor=0.0)
    tokenizer = CLIPTokenizer.from_pretrained(str(unet_folder / "tokenizer"))
    text_encoder, text_encoder_2 = text_encoder_from_toy(unet_folder), text_encoder_from_toy(unet_folder)
    width = text_encoder.config.hidden_size + text_encoder_2.config.hidden_size
    pooled = text_encoder.config.projection_dim + text_encoder_2.config.projection_dim
    if (width, pooled) != (cfg.dit.joint_attention_dim, cfg.dit.pooled_projection_dim):
        raise ValueError(f"text encoders give ({width}, {pooled}) channels; DiTConfig expects "
                         f"({cfg.dit.joint_attention_dim}, {cfg.dit.pooled_projection_dim})")
    return ToyDiT(vae=vae, transformer=SD3Transformer2DModel(**asdict(cfg.dit)), text_encoder=text_encoder,
                  text_encoder_2=text_encoder_2, tokenizer=tokenizer, flow_shift=cfg.flow_shift)


def build_flow_scheduler(shift: float = 1.0) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def to_pipeline(model: ToyDiT) -> ToySD3Pipeline:
    return ToySD3Pipeline(
        transformer=model.transformer, scheduler=build_flow_scheduler(model.flow_shift), vae=model.vae,
        text_encoder=model.text_encoder, tokenizer=model.tokenizer,
        text_encoder_2=model.text_encoder_2, tokenizer_2=model.tokenizer,
        text_encoder_3=None, tokenizer_3=None,
    )


def save_pipeline(model: ToyDiT, folder: str | Path) -> Path:
    """A stock `StableDiffusion3Pipeline` folder (safetensors); `sceneprobe_pipeline.json` tells `ldm.loading` to load
    it as `ToySD3Pipeline` (model_index.json keeps the stock name: diffusers resolves only its own class names)."""
    import json

    folder = Path(folder)
    to_pipeline(model).save_pretrained(str(folder), safe_serialization=True)
    index = folder / "model_index.json"
    index.write_text(index.read_text().replace('"ToySD3Pipeline"', '"StableDiffusion3Pipeline"'))
    (folder / "sceneprobe_pipeline.json").write_text(json.dumps({
        "class": "ToySD3Pipeline", "why": "no T5: prompts are the CLIP tokens only, without SD3's zero padding"}) + "\n")
    return folder


def load_pipeline(folder: str | Path = TOY_DIT_CHECKPOINT, **kwargs) -> ToySD3Pipeline:
    """The folder as a `ToySD3Pipeline` (diffusers needs the absent T5 slots passed as None explicitly)."""
    return ToySD3Pipeline.from_pretrained(str(folder), text_encoder_3=None, tokenizer_3=None, **kwargs)


def encode_ids(text_encoder, text_encoder_2, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What `ToySD3Pipeline.encode_prompt` computes from token ids `(caption, 24)`: the two encoders' penultimate hidden
    states concatenated `(caption, 24, 128)` and their pooled projections concatenated `(caption, 128)`."""
    out1 = text_encoder(ids, output_hidden_states=True)
    out2 = text_encoder_2(ids, output_hidden_states=True)
    return (torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1),
            torch.cat([out1.text_embeds, out2.text_embeds], dim=-1))
