"""Edit activations during generation: the basis of interventions.

    with edit(model, fn, hooks=["up_1_0"], steps=[0, 1, 2]):
        model.generate(prompts, seeds)

`fn(step, name, act) -> act` receives `(batch, h, w, c)` and returns a tensor of the same shape that replaces it.
Edits run in forward order, so later layers see earlier edits. An identity `fn` reproduces the unedited image exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch

from ldm.errors import UserError
from ldm.hooks import HookPoint, StepTracker, as_spatial, select_hook_points

EditFn = Callable[[int, str, torch.Tensor], torch.Tensor]
HALVES = ("cond", "uncond", "both")


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
    if half not in HALVES:
        raise UserError(f"unknown half {half!r}; choose one of {', '.join(HALVES)}")
    pipe = model.pipe
    points = select_hook_points([p for p in model.hook_points if p.kind == "unet"], list(hooks))
    wanted_steps = None if steps is None else set(steps)
    tracker = StepTracker(pipe)

    def attach(point: HookPoint):
        def hook(module, inputs, output: torch.Tensor) -> torch.Tensor | None:
            if wanted_steps is not None and tracker.step not in wanted_steps:
                return None
            edited = output.clone()
            for part in tracker.halves(output, half):
                act = as_spatial(output[part], point, tracker.latent_hw)
                new = fn(tracker.step, point.name, act)
                if new.shape != act.shape:
                    raise ValueError(f"edit for {point.name} returned shape {tuple(new.shape)}, expected {tuple(act.shape)}")
                edited[part] = new.reshape(output[part].shape).to(output.dtype)
            return edited

        return pipe.unet.get_submodule(point.module_path).register_forward_hook(hook)

    with ExitStack() as stack:
        stack.enter_context(tracker.attached())
        for point in points:
            stack.callback(attach(point).remove)
        yield
