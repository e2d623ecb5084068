"""Stream activations out of a generation: every (step, hook point), as soon as it is produced.

    with capture(model, sink):
        model.generate(prompts, seeds)

`sink(step, name, act)` receives the conditional half of the guidance batch (the whole batch for a model without one,
such as Flux-dev) as `(batch, h, w, c)` on the model's device; it must copy what it keeps (e.g.
`act.float().cpu().numpy()`), so memory stays bounded by one step. Capturing only reads: the generated images are
bit-identical with and without it. The extras are spatial latents `(batch, h, w, c)` for every model (Flux's packed
tokens are unpacked).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import numpy as np
import torch

from ldm.denoisers import unpack_latent
from ldm.hooks import EXTRAS, StepTracker, hooked, patched, select_hook_points

Sink = Callable[[int, str, torch.Tensor], None]


def _channels_last(latent: torch.Tensor) -> torch.Tensor:
    return latent.permute(0, 2, 3, 1)


def _predicted_x0(scheduler, out, timestep, sample: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x0 from the scheduler's output, or, for schedulers that don't report it: from alphas_cumprod
    (x0 = (x_t - sqrt(1 - a) eps) / sqrt(a), PNDM) or, under flow matching (x_t = (1 - sigma) x0 + sigma noise, the model
    predicting the velocity v = noise - x0), x0 = x_t - sigma v with the sigma of the step just taken."""
    x0 = getattr(out, "pred_original_sample", None)
    if x0 is not None:
        return x0
    if not hasattr(scheduler, "alphas_cumprod"):  # flow matching: step() has just advanced step_index past this sigma
        sigma = scheduler.sigmas[scheduler.step_index - 1].to(sample.device, sample.dtype)
        return sample - sigma * eps
    alpha = scheduler.alphas_cumprod.to(sample.device)[int(timestep)].to(sample.dtype)
    return (sample - (1 - alpha).sqrt() * eps) / alpha.sqrt()


@torch.no_grad()
def vae_mid_attention(vae, latent: torch.Tensor) -> torch.Tensor:
    """The paper's VAE baseline: decoder mid-block self-attention output on a latent `(batch, c, h, w)`.

    Returns `(batch, h, w, c)`. Applied to x_t of the same step (the paper's code used the next step's latent). The
    latent is unscaled as the pipeline does before decoding: z / scaling_factor (+ shift_factor, SD3 and Flux).
    """
    grabbed: list[torch.Tensor] = []
    attention = vae.decoder.mid_block.attentions[0]
    handle = attention.to_out[0].register_forward_hook(lambda m, i, o: grabbed.append(o))
    try:
        z = latent.to(vae.dtype) / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
        if getattr(vae, "post_quant_conv", None) is not None:
            z = vae.post_quant_conv(z)
        vae.decoder.mid_block(vae.decoder.conv_in(z))
    finally:
        handle.remove()
    return grabbed[0].reshape(latent.shape[0], latent.shape[2], latent.shape[3], -1)


def _extras_step(pipe, sink: Sink, extras: Sequence[str], tracker: StepTracker):
    """A `scheduler.step` that also hands the extras to `sink`: they live in the sampling loop, not in the denoiser."""
    scheduler = pipe.scheduler
    original_step = scheduler.step

    @functools.wraps(original_step)  # pipelines read its signature (whether it takes `eta`, `generator`)
    def step(model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
        out = original_step(model_output, timestep, sample, *args, return_dict=True, **kwargs)
        if tracker.active:
            # (batch, c, h, w); Flux steps on packed tokens
            model_output, sample = (unpack_latent(x, tracker.latent_hw) for x in (model_output, sample))
            if "latent" in extras:
                sink(tracker.step, "latent", _channels_last(sample))
            if "x0" in extras:
                x0 = _predicted_x0(scheduler, out, timestep, sample, model_output)
                sink(tracker.step, "x0", _channels_last(x0))
            if "vae_mid" in extras:
                sink(tracker.step, "vae_mid", vae_mid_attention(pipe.vae, sample))
        return out if return_dict else out.to_tuple()

    return step


@contextmanager
def capture(
    model,
    sink: Sink,
    hooks: Sequence[str] | None = None,
    extras: Sequence[str] = EXTRAS,
    steps: Sequence[int] | None = None,
) -> Iterator[None]:
    """Hand every captured activation to `sink` during generations run inside the block.

    model: a `LoadedModel`. hooks: denoiser hook point names (None: all). extras: any of "vae_mid", "latent", "x0".
    steps: only these steps (None: all).
    """
    with ExitStack() as stack:
        # a read-only `hooked` on the conditional half; its step tracker also times the extras
        tracker = stack.enter_context(hooked(model, sink, hooks, steps=steps))
        select_hook_points([p for p in model.hook_points if p.kind == "extra"], list(extras))
        if extras:
            stack.enter_context(patched(model.pipe.scheduler, "step", _extras_step(model.pipe, sink, extras, tracker)))
        yield


class ArraySink:
    """A sink that keeps everything in memory as float32 numpy: `arrays[name]` is `(image, step, h, w, c)`.

    For tests, the demo and small runs; the workflow streams into a Zarr store instead.
    """

    def __init__(self) -> None:
        self._parts: dict[str, dict[int, np.ndarray]] = defaultdict(dict)

    def __call__(self, step: int, name: str, act: torch.Tensor) -> None:
        self._parts[name][step] = act.float().cpu().numpy()

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.stack([by_step[s] for s in sorted(by_step)], axis=1) for name, by_step in self._parts.items()}
