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


@torch.no_grad()
def caption_embeddings(model: str, prompts: list[str], batch: int = 64, device: str = "cpu") -> np.ndarray:
    """`(prompt, d)` float32: the text encoder's pooled output (the end-of-text token after the final layer norm) of
    each prompt, truncated to the tokenizer's length as the pipeline truncates it."""
    from transformers import CLIPTextModel, CLIPTokenizer

    check_text_encoder(model)
    quiet_known_noise()
    path = resolve_model_path(model)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder").to(device).eval()
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the text encoder of {model!r} from {path}: {err}") from None
    out = []
    for i in range(0, len(prompts), batch):
        ids = tokenizer(list(prompts[i:i + batch]), padding="max_length", truncation=True,
                        max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
        out.append(encoder(ids.to(device)).pooler_output.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, encoder.config.hidden_size), np.float32)
