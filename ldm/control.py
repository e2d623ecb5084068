"""The paper's control model: the same U-Net with every weight tensor's elements randomly permuted."""

from __future__ import annotations

import torch


@torch.no_grad()
def permute_weights(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Permute the elements of every weight tensor in place (biases untouched), reproducibly from `seed`.

    Each tensor keeps its multiset of values, so scale statistics survive while learned structure is destroyed.
    Parameters are visited in name order, so the permutation depends on the seed and the architecture alone.
    """
    generator = torch.Generator("cpu").manual_seed(seed)
    for name, param in sorted(module.named_parameters(), key=lambda item: item[0]):
        if name.endswith("bias"):
            continue
        flat = param.detach().reshape(-1)
        order = torch.randperm(flat.numel(), generator=generator).to(flat.device)
        param.copy_(flat[order].reshape(param.shape))
    return module
