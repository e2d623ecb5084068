"""Edit activations during generation: the basis of interventions.

    with edit(model, fn, hooks=["up_1_0"], steps=[0, 1, 2]):
        model.generate(prompts, seeds)

`fn(step, name, act) -> act` receives `(batch, h, w, c)` and returns a tensor of the same shape that replaces it.
Edits run in forward order, so later layers see earlier edits. An identity `fn` reproduces the unedited image exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from ldm.hooks import HALVES, hooked

__all__ = ["HALVES", "EditFn", "edit"]  # HALVES lives with the hook mechanism; re-exported for callers of `edit`

EditFn = Callable[[int, str, torch.Tensor], torch.Tensor]


@contextmanager
def edit(
    model,
    fn: EditFn,
    hooks: Sequence[str],
    steps: Sequence[int] | None = None,
    half: str = "cond",
) -> Iterator[None]:
    """Replace the activations at `hooks` and `steps` (None: all) with `fn`'s output.

    half: which part of the guidance batch is edited: "cond" (default, as in the paper), "uncond" or "both"
    (each half is passed to `fn` separately).
    """
    # a writing `hooked`: fn's output replaces the selected half; an edit outside `steps` returns at once
    with hooked(model, fn, list(hooks), steps=steps, half=half, write=True):
        yield
