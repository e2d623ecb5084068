"""How activations are stored (`act_dtype`): float16 (the default), bfloat16, or float8 e4m3 with a scale.

* `float16`: as captured; the array's dtype is float16.
* `bfloat16`: the bfloat16 bit pattern in an int16 array (Zarr v3 has no bfloat16): float32 = the 16 bits shifted
  left by 16. Same size as float16, float32's range, 8 bits of mantissa instead of 11.
* `float8_e4m3`: half the bytes. Each (image, step, channel) is divided by its own scale, max |a| over the layer's
  positions / 448 (e4m3's largest finite value), and rounded to e4m3 (torch's `float8_e4m3fn`); the uint8 codes are
  `acts/<hook>/act`, the float32 scales `acts/<hook>/scale` `(image, step, c)`: a = code-as-e4m3 * scale.

`encode` runs where activations are captured (on the device, in the writer's `write_act`); `decode` wherever they are
read (`read_acts`), so every reader gets float16 (float16 runs) or float32 back through one function. Plain Zarr
readers apply the same two lines (docs/store.md, "Activation dtypes").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ldm.errors import UserError
from workflows.config import ACT_DTYPES

STORED = {"float16": "float16", "bfloat16": "int16", "float8_e4m3": "uint8"}  # the activation array's dtype
E4M3_MAX = 448.0


def check_act_dtype(name: str) -> None:
    """Refuse a dtype this installation cannot write."""
    if name not in ACT_DTYPES:
        raise UserError(f"unknown act_dtype {name!r}; choose one of {', '.join(ACT_DTYPES)}")
    if name == "float8_e4m3":
        import torch

        if not hasattr(torch, "float8_e4m3fn"):
            raise UserError(f"act_dtype float8_e4m3 needs torch's float8_e4m3fn, which torch {torch.__version__} "
                            "lacks; install torch >= 2.1 or use act_dtype float16 or bfloat16")


def encode(act: Any, name: str) -> tuple[Any, Any]:
    """(stored values, scale or None) of one captured step `(batch, h, w, c)` (a torch tensor or numpy array),
    on its own device: float16 values; bfloat16 bits as int16; e4m3 codes as uint8 with scales `(batch, c)`."""
    import torch

    a = torch.as_tensor(act)
    if name == "float16":
        return a.to(torch.float16), None
    if name == "bfloat16":
        return a.to(torch.bfloat16).view(torch.int16), None
    a = a.float()
    scale = a.abs().amax(dim=(1, 2)) / E4M3_MAX  # (batch, c)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero channel: any scale is exact
    codes = (a / scale[:, None, None, :]).to(torch.float8_e4m3fn).view(torch.uint8)
    return codes, scale


def decode(stored: np.ndarray, name: str, scale: np.ndarray | None = None) -> np.ndarray:
    """Activations from stored values `(..., h, w, c)` (and scales `(..., c)` for e4m3): float16 for float16, else
    float32."""
    if name == "float16":
        return stored
    if name == "bfloat16":
        return (np.asarray(stored).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    import torch

    values = torch.from_numpy(np.ascontiguousarray(stored)).view(torch.float8_e4m3fn).float().numpy()
    return values * np.asarray(scale, np.float32)[..., None, None, :]
