"""Dependency-free figures for the report: inline SVG heatmaps and line charts, and colour-mapped PNG images.

SVG strings are written by hand (no matplotlib), so the report needs nothing but a browser. Colours come from a
small viridis-like ramp; NaN cells are drawn grey and labelled "n/a".
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Five stops of viridis; values in between are interpolated linearly.
RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64)
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22"]
FONT = 'font-family="sans-serif" font-size="11"'


def ramp(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Values of any shape -> uint8 RGB `(..., 3)` on the ramp; NaN -> grey."""
    v = np.asarray(values, np.float64)
    t = np.clip((v - vmin) / (vmax - vmin if vmax > vmin else 1.0), 0, 1) * (len(RAMP) - 1)
    t = np.nan_to_num(t)
    i = np.minimum(np.floor(t).astype(int), len(RAMP) - 2)
    f = (t - i)[..., None]
    rgb = RAMP[i] * (1 - f) + RAMP[i + 1] * f
    rgb[~np.isfinite(v)] = 170
    return rgb.round().astype(np.uint8)


def _hex(rgb: np.ndarray) -> str:
    return "#%02x%02x%02x" % tuple(int(c) for c in rgb)


def _text(x: float, y: float, s: str, anchor: str = "middle", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {FONT} {extra}>{html.escape(s)}</text>'


def heatmap_svg(values: np.ndarray, rows: Sequence[str], cols: Sequence[str], *, title: str = "",
                vmin: float | None = None, vmax: float | None = None, better: str = "higher",
                fmt: str = "{:.2f}", cell: int = 26) -> str:
    """A `(row, col)` grid of values (e.g. layers x steps) with numbers in the cells and a colour bar.

    better "lower" flips the ramp so that the best cells are always the bright ones."""
    v = np.asarray(values, np.float64)
    finite = v[np.isfinite(v)]
    lo = float(vmin if vmin is not None else (finite.min() if finite.size else 0.0))
    hi = float(vmax if vmax is not None else (finite.max() if finite.size else 1.0))
    shown = -v if better == "lower" else v
    colours = ramp(shown, -hi if better == "lower" else lo, -lo if better == "lower" else hi)
    left, top = 70, 34
    width = max(left + cell * len(cols) + 70, int(len(title) * 6.5) + left)
    height = top + cell * len(rows) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             _text(4, 14, title, "start", 'font-weight="bold"')]
    for j, c in enumerate(cols):
        parts.append(_text(left + cell * (j + 0.5), top - 6, str(c)))
    for i, r in enumerate(rows):
        y = top + cell * i
        parts.append(_text(left - 4, y + cell * 0.65, str(r), "end"))
        for j in range(len(cols)):
            x = left + cell * j
            value = v[i, j]
            label = "n/a" if not math.isfinite(value) else fmt.format(value)
            dark = not math.isfinite(value) or colours[i, j].mean() < 128
            parts.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{_hex(colours[i, j])}">'
                         f'<title>{html.escape(f"{r}, step {cols[j]}: {label}")}</title></rect>')
            ink = "white" if dark else "black"
            parts.append(_text(x + cell / 2, y + cell * 0.62, label, extra=f'font-size="8" fill="{ink}"'))
    bar_x, bar_h = left + cell * len(cols) + 14, cell * len(rows)
    for k in range(20):  # colour bar, best at the top
        t = 1 - (k + 0.5) / 20
        value = lo + t * (hi - lo)
        c = ramp(np.array([-value if better == "lower" else value]), -hi if better == "lower" else lo,
                 -lo if better == "lower" else hi)[0]
        parts.append(f'<rect x="{bar_x}" y="{top + bar_h * k / 20:.1f}" width="12" height="{bar_h / 20 + 0.5:.1f}" '
                     f'fill="{_hex(c)}"/>')
    parts.append(_text(bar_x + 15, top + 9, fmt.format(hi if better == "higher" else lo), "start"))
    parts.append(_text(bar_x + 15, top + bar_h, fmt.format(lo if better == "higher" else hi), "start"))
    parts.append(_text(left + cell * len(cols) / 2, height - 6, "denoising step"))
    parts.append("</svg>")
    return "".join(parts)


@dataclass
class Series:
    """One line: y over x, with an optional interval band [lo, hi]."""

    label: str
    x: np.ndarray
    y: np.ndarray
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    color: str | None = None
    dashed: bool = False


def line_chart_svg(series: Sequence[Series], *, title: str = "", xlabel: str = "", ylabel: str = "",
                   width: int = 420, height: int = 250) -> str:
    """Lines with shaded intervals and a legend; NaN points break a line."""
    xs = np.concatenate([np.asarray(s.x, float) for s in series]) if series else np.zeros(1)
    ys = [np.asarray(a, float) for s in series for a in (s.y, s.lo, s.hi) if a is not None]
    yall = np.concatenate(ys) if ys else np.zeros(1)
    yall = yall[np.isfinite(yall)]
    x0, x1 = float(np.nanmin(xs)), float(np.nanmax(xs))
    y0, y1 = (float(yall.min()), float(yall.max())) if yall.size else (0.0, 1.0)
    if x1 == x0:
        x1 = x0 + 1
    pad = (y1 - y0) * 0.05 or 0.5
    y0, y1 = y0 - pad, y1 + pad
    left, right, top, bottom = 48, 130, 24, 34
    pw, ph = width - left - right, height - top - bottom

    def px(x):
        return left + (np.asarray(x, float) - x0) / (x1 - x0) * pw

    def py(y):
        return top + (1 - (np.asarray(y, float) - y0) / (y1 - y0)) * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             _text(4, 14, title, "start", 'font-weight="bold"'),
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for k in range(5):  # y ticks
        yv = y0 + (y1 - y0) * k / 4
        parts.append(_text(left - 4, float(py(yv)) + 4, f"{yv:.3g}", "end"))
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{float(py(yv)):.1f}" y2="{float(py(yv)):.1f}" '
                     'stroke="#eee"/>')
    for xv in np.unique(np.round(np.linspace(x0, x1, min(8, int(x1 - x0) + 1)))):  # integer x ticks (steps)
        parts.append(_text(float(px(xv)), top + ph + 14, f"{xv:g}"))
    parts.append(_text(left + pw / 2, height - 4, xlabel))
    parts.append(_text(12, top + ph / 2, ylabel, extra=f'transform="rotate(-90 12 {top + ph / 2:.1f})"'))
    for k, s in enumerate(series):
        color = s.color or PALETTE[k % len(PALETTE)]
        x, y = np.asarray(s.x, float), np.asarray(s.y, float)
        if s.lo is not None and s.hi is not None:
            ok = np.isfinite(s.lo) & np.isfinite(s.hi)
            if ok.any():
                upper = [f"{a:.1f},{b:.1f}" for a, b in zip(px(x[ok]), py(np.asarray(s.hi)[ok]))]
                lower = [f"{a:.1f},{b:.1f}" for a, b in zip(px(x[ok])[::-1], py(np.asarray(s.lo)[ok])[::-1])]
                parts.append(f'<polygon points="{" ".join(upper + lower)}" fill="{color}" fill-opacity="0.15"/>')
        ok = np.isfinite(y)
        dash = ' stroke-dasharray="5,3"' if s.dashed else ""
        if ok.any():
            pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px(x[ok]), py(y[ok])))
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.6"{dash}>'
                         f'<title>{html.escape(s.label)}</title></polyline>')
        ly = top + 12 + 14 * k
        parts.append(f'<line x1="{left + pw + 8}" x2="{left + pw + 24}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" '
                     f'stroke-width="2"{dash}/>')
        parts.append(_text(left + pw + 28, ly, s.label[:18], "start"))
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------- images


def upscale(image: np.ndarray, min_side: int = 128) -> np.ndarray:
    """Nearest-neighbour upscale `(H, W[, 3])` by an integer factor so the short side is at least `min_side`."""
    k = max(1, -(-min_side // min(image.shape[:2])))
    return np.repeat(np.repeat(image, k, axis=0), k, axis=1)


def mask_image(mask: np.ndarray) -> np.ndarray:
    """A `(H, W)` probability or 0/1 mask as grey RGB `(H, W, 3)` uint8 (white = salient)."""
    m = np.clip(np.nan_to_num(np.asarray(mask, np.float64)), 0, 1)
    return np.repeat((m * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def normal_image(normals: np.ndarray) -> np.ndarray:
    """Unit normals `(H, W, 3)` as RGB `(H, W, 3)` uint8, the usual (n + 1) / 2 colouring (x red, y green, z blue);
    zero (no normal: sky) is black."""
    n = np.nan_to_num(np.asarray(normals, np.float64))
    rgb = np.clip((n + 1) / 2, 0, 1) * 255
    return np.where((np.abs(n).sum(-1) > 0)[..., None], rgb, 0).round().astype(np.uint8)


def depth_image(depth: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """A `(H, W)` depth map (larger = nearer) on the colour ramp, bright = near."""
    return ramp(depth, vmin, vmax)


def png_bytes(image: np.ndarray, min_side: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(upscale(np.ascontiguousarray(image), min_side)).save(buffer, format="PNG")
    return buffer.getvalue()
