"""A user's images and label files (`prompts.source: images`): listing, reading and validating them.

A folder holds images `NAME.png|jpg|jpeg`, each optionally with label files beside it, `NAME.<target>.npy|png`
(depth and saliency maps `(H, W)`, normals `(H, W, 3)`, the light direction `(3,)` as .npy only) and a caption in
`NAME.txt`. A Parquet table has one row per image: `image_column` holds the image's path (relative to the table's
folder) or its bytes (or a Hugging Face datasets image, `{"bytes", "path"}`), the caption is in `prompt_column`
(default: caption, prompt or text), a `split` column is optional, and label columns are named by target (a path or
a file's bytes). Every label is checked against its image here, before anything runs; each problem is one
`PromptsError` naming the file.

Labels are converted to the label stage's conventions (`ldm.labelers`): depth becomes relative inverse depth
standardised per image (mean 0, standard deviation 1: the toy labelers' and MiDaS' convention; `depth_files: depth`
files hold z-depth > 0, `inverse` files hold inverse depth already), saliency a {0, 1} mask (PNG: nonzero pixels),
normals unit vectors in camera coordinates (x right, y up, z towards the viewer; zero where there is no surface; PNG
normals are RGB = (n + 1) / 2 * 255, black = no surface), the light a unit vector.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workflows.config import TARGETS, RunConfig
from workflows.stages.prompts import PromptsError, read_rows

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LABEL_SUFFIXES = {"depth": (".npy", ".png"), "saliency": (".npy", ".png"), "normals": (".npy", ".png"),
                  "light": (".npy",)}
CAPTION_COLUMNS = ("caption", "prompt", "text")
UNIT_TOLERANCE = 1e-3  # |n| of a stored unit vector (float files) may be off by this much
PNG_UNIT_TOLERANCE = 0.05  # 8-bit normals are quantised: checked loosely, then renormalised


@dataclass
class Item:
    """One given image: its name, where its pixels are (a path or bytes), its caption (None: none given), its
    split (None: by hash) and its label files by target."""

    name: str
    image: Path | bytes
    caption: str | None = None
    split: str | None = None
    labels: dict[str, Path | bytes] = field(default_factory=dict)


def _folder_items(folder: Path) -> list[Item]:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    label_names = {f".{t}" for t in TARGETS}
    items = []
    for path in files:
        if path.suffix.lower() not in IMAGE_SUFFIXES or Path(path.stem).suffix in label_names:
            continue
        labels = {}
        for target in TARGETS:
            found = [folder / f"{path.stem}.{target}{s}" for s in LABEL_SUFFIXES[target]]
            found = [f for f in found if f.is_file()]
            if found:
                labels[target] = found[0]
        caption = folder / f"{path.stem}.txt"
        items.append(Item(path.name, path, caption.read_text(encoding="utf-8").strip() if caption.is_file() else None,
                          None, labels))
    return items


def _cell(value, base: Path, where: str) -> Path | bytes:
    if isinstance(value, dict):  # a Hugging Face datasets Image: bytes, or a path
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value:
        return base / value
    raise PromptsError(f"{where}: {value!r} is neither a file path nor a file's bytes")


def _table_items(path: Path, cfg: RunConfig) -> list[Item]:
    rows = read_rows(path)
    if not rows:
        raise PromptsError(f"image table {str(path)!r} has no rows")
    columns = list(rows[0])
    p = cfg.prompts
    if p.image_column not in columns:
        raise PromptsError(f"image table {str(path)!r} has no image column {p.image_column!r} (set "
                           f"prompts.image_column); its columns are: {', '.join(columns)}")
    wanted = (p.prompt_column,) if p.prompt_column else CAPTION_COLUMNS
    caption = next((c for c in wanted if c in columns), None)
    if p.prompt_column and caption is None:
        raise PromptsError(f"image table {str(path)!r} has no caption column {p.prompt_column!r}; its columns are: "
                           f"{', '.join(columns)}")
    items = []
    for n, row in enumerate(rows, 1):
        where = f"{path.name} row {n}"
        image = _cell(row[p.image_column], path.parent, f"{where}, {p.image_column}")
        name = image.name if isinstance(image, Path) else f"row {n}"
        split = row.get(p.split_column)
        if split is not None and split not in ("train", "test"):
            raise PromptsError(f"{where}: split {split!r} is not train or test")
        labels = {t: _cell(row[t], path.parent, f"{where}, {t}") for t in TARGETS if row.get(t) is not None}
        items.append(Item(name, image, None if caption is None else str(row[caption]), split, labels))
    return items


def list_items(cfg: RunConfig) -> list[Item]:
    """The items of `prompts.path` (a folder or a Parquet table), in name (row) order."""
    path = Path(cfg.prompts.path)
    if path.is_dir():
        items = _folder_items(path)
        if not items:
            raise PromptsError(f"image folder {str(path)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    elif path.is_file() and path.suffix.lower() in (".parquet", ".pq"):
        items = _table_items(path, cfg)
    elif path.is_file():
        raise PromptsError(f"prompts.path {str(path)!r}: give a folder of images or a Parquet table (.parquet)")
    else:
        raise PromptsError(f"image folder {str(path)!r} not found; prompts.path must name a folder of images or a "
                           "Parquet table")
    if cfg.prompts.caption == "caption":
        missing = [it.name for it in items if it.caption is None]
        if missing:
            raise PromptsError(f"{len(missing)} images have no caption ({', '.join(missing[:3])}"
                               f"{' ...' if len(missing) > 3 else ''}): write NAME.txt beside each image or a caption "
                               "column, or condition on the empty prompt with prompts.caption: empty")
    return items


def _describe(src: Path | bytes, item: Item) -> str:
    return str(src) if isinstance(src, Path) else f"{item.name}'s bytes"


def _open(src: Path | bytes, where: str):
    from PIL import Image

    try:
        return Image.open(src if isinstance(src, Path) else io.BytesIO(src))
    except (OSError, ValueError) as err:
        raise PromptsError(f"{where}: not a readable image ({err})") from None


def image_size(item: Item) -> tuple[int, int]:
    """(height, width) of an item's image, from its header (no decoding)."""
    with _open(item.image, _describe(item.image, item)) as im:
        return im.height, im.width


def read_image(item: Item) -> np.ndarray:
    """uint8 `(H, W, 3)` (grey and RGBA images converted to RGB)."""
    with _open(item.image, _describe(item.image, item)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _array(src: Path | bytes, where: str) -> tuple[np.ndarray, bool]:
    """The file's array and whether it came from a PNG (8/16-bit)."""
    data = src.read_bytes() if isinstance(src, Path) else src
    if data[:6] == b"\x93NUMPY":
        try:
            return np.load(io.BytesIO(data), allow_pickle=False), False
        except ValueError as err:
            raise PromptsError(f"{where}: not a plain .npy array ({err})") from None
    return np.asarray(_open(data, where)), True


def read_label(target: str, item: Item, height: int, width: int, depth_files: str = "depth") -> np.ndarray:
    """An item's `target` label, validated and in the label stage's convention (the module docstring): float32
    `(H, W)` for depth and saliency, `(H, W, 3)` for normals, `(3,)` for the light."""
    src = item.labels[target]
    where = f"{target} labels {_describe(src, item)}"
    raw, png = _array(src, where)
    expected = {"normals": (height, width, 3), "light": (3,)}.get(target, (height, width))
    if target in ("depth", "saliency") and raw.ndim == 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    if target == "saliency" and png and raw.ndim == 3:  # an RGB mask
        raw = raw.max(-1)
    if raw.shape != expected:
        raise PromptsError(f"{where} has shape {raw.shape}, its image {item.name} needs {expected}")
    x = raw.astype(np.float64)
    if not np.isfinite(x).all():
        raise PromptsError(f"{where} holds NaN or infinite values ({int((~np.isfinite(x)).sum())} of {x.size})")
    if target == "depth":
        if depth_files == "depth":
            if (x <= 0).any():
                raise PromptsError(f"{where}: z-depth must be > 0 everywhere ({int((x <= 0).sum())} pixels are not); "
                                   "if the files hold inverse depth, set prompts.depth_files: inverse")
            x = 1.0 / x
        x = (x - x.mean()) / max(x.std(), 1e-12)
    elif target == "saliency":
        if png:
            x = (x > 0).astype(np.float64)
        elif x.min() < 0 or x.max() > 1:
            raise PromptsError(f"{where}: a mask must lie in [0, 1], found [{x.min():.3g}, {x.max():.3g}]")
        x = (x > 0.5).astype(np.float64)
    elif target == "normals":
        if png:
            blank = (raw == 0).all(-1)
            x = np.where(blank[..., None], 0.0, x / (65535.0 if raw.dtype == np.uint16 else 255.0) * 2 - 1)
        norm = np.linalg.norm(x, axis=-1)
        surface = norm > (0.5 if png else 0)
        off = np.abs(norm[surface] - 1).max(initial=0.0)
        if off > (PNG_UNIT_TOLERANCE if png else UNIT_TOLERANCE):
            raise PromptsError(f"{where}: normals must be unit vectors (or zero where there is no surface); |n| is "
                               f"off 1 by up to {off:.3g}")
        x = np.where(surface[..., None], x / np.maximum(norm, 1e-12)[..., None], 0.0)
    else:
        off = abs(np.linalg.norm(x) - 1)
        if off > UNIT_TOLERANCE:
            raise PromptsError(f"{where}: the light direction must be a unit vector; |l| = {np.linalg.norm(x):.4g}")
        x = x / np.linalg.norm(x)
    return x.astype(np.float32)
