"""Random-weight pipelines with a real architecture, for benchmarks and memory measurements without downloads.

`random_model("CompVis/stable-diffusion-v1-4")` builds SD v1.4's exact U-Net and VAE from their published configs
(ldm/architectures/), a text encoder of CLIP ViT-L/14's shape and a character-level tokenizer. The images are noise,
but every tensor has the real shape, so speed and memory are the real model's.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import torch

from ldm.architecture import read_config
from ldm.loading import DTYPES, GenerationConfig, LoadedModel, resolve_device

# Text encoders by model (their hub configs are not shipped: these are the fields that set their size).
TEXT_ENCODERS = {
    "CompVis/stable-diffusion-v1-4": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                          num_attention_heads=12, max_position_embeddings=77, projection_dim=768),
}


def save_char_tokenizer(folder: Path, max_length: int = 77):
    """A CLIP tokenizer whose vocabulary is single characters: it encodes any lower-case ASCII caption."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + ",.'-"
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(chars) + [c + "</w>" for c in chars]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length, pad_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def random_model(model: str = "CompVis/stable-diffusion-v1-4", steps: int = 15, guidance_scale: float = 7.5,
                 dtype: str = "float16", device: str = "auto", seed: int = 0) -> LoadedModel:
    """A `LoadedModel` with `model`'s architecture and random weights (LMS scheduler with SD's betas)."""
    from diffusers import AutoencoderKL, LMSDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if model not in TEXT_ENCODERS:
        raise ValueError(f"no random-init recipe for {model!r}; known: {', '.join(TEXT_ENCODERS)}")
    torch.manual_seed(seed)
    tokenizer = save_char_tokenizer(Path(tempfile.mkdtemp(prefix="sceneprobe-tok-")))
    text = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=1, pad_token_id=1,
                          **TEXT_ENCODERS[model])
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_config(read_config(model, "vae")),
        text_encoder=CLIPTextModel(text),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel.from_config(read_config(model, "unet")),
        scheduler=LMSDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.to(resolve_device(device), DTYPES[dtype])
    return LoadedModel(name=f"random:{model}", pipe=pipe, config=GenerationConfig(steps=steps, guidance_scale=guidance_scale))
