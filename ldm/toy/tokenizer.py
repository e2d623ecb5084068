"""A tiny CLIP-format BPE tokenizer for the toy world's caption vocabulary.

Stock `CLIPTokenizer` loads from a folder holding `vocab.json` + `merges.txt`, so the toy pipeline stays loadable by
`StableDiffusionPipeline.from_pretrained`. We learn the merges with the `tokenizers` BPE trainer on the caption words
(so every vocabulary word becomes exactly one `word</w>` token: BPE replays its own training merges exactly), then add
every single character with and without `</w>` so that any lowercase ASCII text still encodes without unknown tokens.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
EOW = "</w>"
MODEL_MAX_LENGTH = 24  # bos + longest toy caption (19 words) + eos, with slack
# Characters every tokenizer covers even if no caption uses them (CLIP's byte map is the identity on these).
BASE_ALPHABET = string.ascii_lowercase + string.digits + ".,;:!?'-()/&+"


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges (in rank order) that turn each of `words` into a single `word</w>` token."""
    model = models.BPE(unk_token=None, end_of_word_suffix=EOW)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=100_000, min_frequency=1, show_progress=False, end_of_word_suffix=EOW, special_tokens=[]
    )
    tok.train_from_iterator(sorted(set(words)), trainer=trainer)
    state = json.loads(tok.to_str())["model"]
    merges = state["merges"]
    # tokenizers >= 0.20 stores merges as pairs; older versions as "a b" strings.
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-format (vocab, merges): base chars, chars + `</w>`, merged tokens, then the two special tokens."""
    words = sorted({w.lower() for w in words if w})
    merges = learn_merges(words)
    alphabet = sorted(set(BASE_ALPHABET) | {c for w in words for c in w})
    tokens: list[str] = list(alphabet) + [c + EOW for c in alphabet]
    for a, b in merges:
        tokens.append(a + b)
    tokens += [BOS, EOS]
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    return vocab, merges


def save_tokenizer_files(words: list[str], folder: str | Path) -> Path:
    """Write `vocab.json` and `merges.txt` for `words` into `folder`; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=True, indent=0))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")
    return folder


def build_tokenizer(words: list[str], folder: str | Path) -> CLIPTokenizer:
    """A stock `CLIPTokenizer` loaded from freshly written vocab files for `words` (padding with `<|endoftext|>`)."""
    folder = save_tokenizer_files(words, folder)
    return CLIPTokenizer.from_pretrained(
        str(folder),
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,  # never produced for covered text; CLIP itself uses <|endoftext|> as unk
        pad_token=EOS,
        model_max_length=MODEL_MAX_LENGTH,
    )
