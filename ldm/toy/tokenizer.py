"""A tiny CLIP-format BPE tokenizer for the toy world's caption vocabulary.

Stock `CLIPTokenizer` loads from a folder holding `vocab.json` + `merges.txt`, so the toy pipeline stays loadable by
`StableDiffusionPipeline.from_pretrained`. We learn the merges with a small deterministic BPE on the caption words
(so every vocabulary word becomes exactly one `word</w>` token: BPE replays its own training merges exactly), then add
every single character with and without `</w>` so that any lowercase ASCII text still encodes without unknown tokens.
"""

from __future__ import annotations

import json
import string
from collections import Counter
from pathlib import Path

from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
EOW = "</w>"
MODEL_MAX_LENGTH = 24  # bos + longest toy caption (19 words) + eos, with slack
# Characters every tokenizer covers even if no caption uses them (CLIP's byte map is the identity on these).
BASE_ALPHABET = string.ascii_lowercase + string.digits + ".,;:!?'-()/&+"


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges (in rank order) that turn each of `words` into a single `word</w>` token.

    Classic BPE over the distinct words: merge the most frequent adjacent pair until every word is one token, ties
    broken by the pair's spelling, so the merges (and token ids) depend on nothing but `words`. Replaying the merges in
    rank order, as CLIP's tokenizer does, rebuilds each word exactly."""
    seqs = [list(w[:-1]) + [w[-1] + EOW] for w in sorted(set(words))]
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(pair for seq in seqs for pair in zip(seq, seq[1:]))
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        seqs = [_merge(seq, best) for seq in seqs]


def _merge(seq: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(seq):
        if i + 1 < len(seq) and (seq[i], seq[i + 1]) == pair:
            out.append(seq[i] + seq[i + 1])
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


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


VOCAB_FILES = ("vocab.json", "merges.txt")  # what a stock CLIPTokenizer loads from a folder


def save_tokenizer_files(words: list[str], folder: str | Path) -> Path:
    """Write `vocab.json` and `merges.txt` for `words` into `folder`; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=True, indent=0))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")
    return folder


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> None:
    """Copy `VOCAB_FILES` from `src` to `dst`, so a text encoder built on them keeps the token ids it learnt."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in VOCAB_FILES:
        (dst / name).write_bytes((src / name).read_bytes())


def build_tokenizer(words: list[str], folder: str | Path, reuse: bool = False) -> CLIPTokenizer:
    """A stock `CLIPTokenizer` loaded from freshly written vocab files for `words` (padding with `<|endoftext|>`).

    reuse: load the files already in `folder` instead (a resumed training run keeps the ids its text encoder learnt)."""
    folder = Path(folder)
    if not (reuse and all((folder / name).is_file() for name in VOCAB_FILES)):
        save_tokenizer_files(words, folder)
    return CLIPTokenizer.from_pretrained(
        str(folder),
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,  # never produced for covered text; CLIP itself uses <|endoftext|> as unk
        pad_token=EOS,
        model_max_length=MODEL_MAX_LENGTH,
    )
