"""Device-to-host staging of captured activations, so that capture never makes the GPU wait for the host.

A plain `act.cpu()` inside a hook synchronises the device 16 times per denoising step and copies through pageable
memory. Here a CUDA activation is copied on a side stream into pinned host memory (the writer's batch buffer) and the
host waits once, when the batch is handed to the writer. CPU tensors and numpy arrays are copied directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def is_cuda(act: Any) -> bool:
    return bool(getattr(act, "is_cuda", False))


class HostStaging:
    """Allocates host buffers and fills them from captured tensors; `wait()` blocks until every copy has landed."""

    def __init__(self) -> None:
        self._stream = None  # created on the first CUDA tensor, on that tensor's device

    def empty(self, shape: tuple[int, ...], dtype: np.dtype, like: Any) -> np.ndarray:
        """An uninitialised host array; page-locked when `like` is a CUDA tensor (asynchronous copies need it)."""
        if not is_cuda(like):
            return np.empty(shape, dtype)
        import torch

        # numpy's view keeps the tensor (and its pinned block) alive; freed blocks return to torch's pinned cache
        return torch.empty(shape, dtype=getattr(torch, np.dtype(dtype).name), pin_memory=True).numpy()

    def copy(self, dst: np.ndarray, act: Any) -> None:
        """dst[...] = act, cast to dst's dtype. Asynchronous for CUDA tensors: valid only after `wait()`."""
        if not hasattr(act, "detach"):
            dst[...] = np.asarray(act)
            return
        import torch

        act = act.detach()
        if not act.is_cuda:
            if act.dtype == torch.bfloat16:
                act = act.float()  # bfloat16 has no numpy dtype (stored bfloat16 comes as its int16 bits)
            dst[...] = act.numpy()
            return
        if self._stream is None:
            self._stream = torch.cuda.Stream(act.device)
        self._stream.wait_stream(torch.cuda.current_stream(act.device))  # the activation must be computed first
        with torch.cuda.stream(self._stream):
            torch.from_numpy(dst).copy_(act, non_blocking=True)  # casts on the device if dtypes differ
        act.record_stream(self._stream)  # the allocator must not reuse its memory before the copy ran

    def wait(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
