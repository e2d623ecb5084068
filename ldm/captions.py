"""What the caption alone tells: the model's own text encoder's pooled embedding of each prompt, the input of the
probes' caption control (`probes.positional.caption_features`). Only the tokenizer and the text encoder are loaded,
not the U-Net or the VAE.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ldm.errors import UserError
from ldm.loading import resolve_model_path
from ldm.quiet import quiet_known_noise


def has_text_encoder(model: str) -> bool:
    """Whether the pipeline folder of `model` names a text encoder (a hub id is assumed to: it is checked on load)."""
    index = Path(resolve_model_path(model)) / "model_index.json"
    if not index.is_file():
        return True
    entry = json.loads(index.read_text()).get("text_encoder")
    return bool(entry and entry[0] is not None)


def check_text_encoder(model: str) -> None:
    if not has_text_encoder(model):
        raise UserError(f"model {model!r} has no text encoder, so there is no caption to control for; "
                        "remove 'caption' from probes.controls")


def text_encoder_classes(path: str) -> tuple[str, str]:
    """(tokenizer class, text encoder class) named in the pipeline's model_index.json; CLIP's where it cannot be read."""
    from ldm.architecture import _read_json

    try:
        index = _read_json(path, "model_index.json", None)
    except UserError:
        return "CLIPTokenizer", "CLIPTextModel"
    tokenizer, encoder = index.get("tokenizer") or [None, None], index.get("text_encoder") or [None, None]
    return tokenizer[1] or "CLIPTokenizer", encoder[1] or "CLIPTextModel"


def pooled(encoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`(prompt, d)`: CLIP's pooled output (the end-of-text token after the final layer norm; `text_embeds`, its
    projection, for a `CLIPTextModelWithProjection`, as SD3 pools it), or for an encoder without one (T5: PixArt,
    Flux's second) the mean of the last hidden state over the prompt's real (unpadded) tokens. CLIP runs without the
    mask, as the pipelines run it (its causal attention keeps padding out of the end-of-text token anyway)."""
    clip = type(encoder).__name__.startswith("CLIP")
    out = encoder(ids) if clip else encoder(ids, attention_mask=mask)
    for name in ("text_embeds", "pooler_output"):
        if getattr(out, name, None) is not None:
            return getattr(out, name)
    weights = mask[..., None].to(out.last_hidden_state.dtype)
    return (out.last_hidden_state * weights).sum(1) / weights.sum(1).clamp(min=1)


@torch.no_grad()
def caption_embeddings(model: str, prompts: list[str], batch: int = 64, device: str = "cpu") -> np.ndarray:
    """`(prompt, d)` float32: the model's own (first) text encoder's pooled embedding of each prompt (`pooled`), with
    the classes its model_index.json names (CLIP for SD 1.x/2.x/XL, SD3, Flux; T5 for PixArt), truncated to the
    tokenizer's length as the pipeline truncates it."""
    import transformers

    check_text_encoder(model)
    quiet_known_noise()
    path = resolve_model_path(model)
    tokenizer_name, encoder_name = text_encoder_classes(path)
    tokenizer_cls = getattr(transformers, tokenizer_name, None) or transformers.AutoTokenizer
    encoder_cls = getattr(transformers, encoder_name, None)
    if encoder_cls is None:
        raise UserError(f"{model!r}: text encoder class {encoder_name!r} is not in this transformers version")
    try:
        tokenizer = tokenizer_cls.from_pretrained(path, subfolder="tokenizer")
        encoder = encoder_cls.from_pretrained(path, subfolder="text_encoder").to(device).eval()
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the text encoder of {model!r} from {path}: {err}") from None
    max_length = min(tokenizer.model_max_length, 512)  # T5's tokenizer may report an unbounded length
    out = []
    for i in range(0, len(prompts), batch):
        enc = tokenizer(list(prompts[i:i + batch]), padding="max_length", truncation=True, max_length=max_length,
                        return_tensors="pt")
        mask = enc.attention_mask if "attention_mask" in enc else torch.ones_like(enc.input_ids)
        out.append(pooled(encoder, enc.input_ids.to(device), mask.to(device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, encoder.config.hidden_size), np.float32)
