"""The noised-image protocol: a denoiser's activations on given images instead of on its own generations.

Each image is encoded with the model's VAE (the posterior mean, scaled as the pipeline scales latents:
`(mean - shift_factor) * scaling_factor`); for every step s of the run's schedule the scheduler's noise for that
step's timestep t_s is added (`add_noise` for a noise schedule, x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps or
x0 + sigma_t eps; `scale_noise` under flow matching, x_t = (1 - sigma_t) x0 + sigma_t eps) and the denoiser runs once,
unguided, on the caption's (or the empty prompt's) embedding. The noise is one `torch.randn` per image from its own CPU
generator seeded with the image's seed (`LoadedModel.initial_noise`, the generation convention), the same for every
step, so an image's activations depend on its pixels, caption and seed alone, not on its batch.

Run it inside `ldm.capture.capture` like `LoadedModel.generate`: the denoiser calls are counted as steps by the same
tracker, and `scheduler.step` is called after each one (its result is discarded) so the extras (`latent` = the noised
x_t, `x0`, `vae_mid`) reach the sink exactly as in a generation:

    with capture(model, sink):
        noised_pass(model, images, prompts, seeds)      # sink gets (step, name, (batch, h, w, c)) for every step

Supported: U-Net pipelines of SD 1.x/2.x (the toy U-Net) and SD3-style transformers (the toy DiT). SDXL (extra
conditioning), Flux and PixArt are refused by name.
"""

from __future__ import annotations

import numpy as np
import torch

from ldm.errors import UserError
from ldm.hooks import patched

FAMILIES = ("unet", "sd3")  # denoiser families the protocol can call (ldm.denoisers)


def check_noised_model(model) -> None:
    """Refuse a model whose denoiser this protocol cannot call, naming what it supports."""
    family = model.family
    if family not in FAMILIES or getattr(model.pipe, "text_encoder_2", None) is not None and family == "unet":
        name = "SDXL" if family == "unet" else family
        raise UserError(f"the noised-image protocol (prompts.source toy-renders / images) runs SD 1.x/2.x U-Nets "
                        f"and SD3-style transformers (toy, toy-dit), not {name} ({model.name!r}); use "
                        "prompts.source toy or file for this model")


@torch.no_grad()
def encode_latents(model, images: np.ndarray) -> torch.Tensor:
    """uint8 `(image, H, W, 3)` -> the scaled VAE latent x0 `(image, c, h, w)` on the model's device and dtype."""
    vae = model.pipe.vae
    x = torch.from_numpy(np.ascontiguousarray(images)).to(vae.device, vae.dtype).permute(0, 3, 1, 2) / 127.5 - 1
    mean = vae.encode(x).latent_dist.mean  # (image, c, h, w): the mean, not a sample, so x0 is deterministic
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((mean - shift) * vae.config.scaling_factor).to(model.dtype)


def add_step_noise(scheduler, x0: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """x_t of `x0` at `timestep` (a scalar of `scheduler.timesteps`), by the scheduler's own forward process."""
    t = timestep.reshape(1).expand(len(x0)).to(x0.device)
    if hasattr(scheduler, "scale_noise"):  # flow matching: x_t = (1 - sigma) x0 + sigma noise
        return scheduler.scale_noise(x0, t, noise)
    return scheduler.add_noise(x0, noise, t)


def _embed(pipe, family: str, prompts: list[str], device) -> dict:
    """The denoiser's text conditioning for an unguided call (no negative prompt)."""
    if family == "sd3":
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, device=device,
                                                  do_classifier_free_guidance=False)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}
    embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
    return {"encoder_hidden_states": embeds}


@torch.no_grad()
def noised_pass(model, images: np.ndarray, prompts: list[str], seeds: list[int]) -> None:
    """Run the denoiser once per step of the schedule on each image noised to that step (see the module docstring).

    images: uint8 `(image, H, W, 3)` at `model.image_size`; prompts: the caption of each image (or "" for the empty
    prompt); seeds: each image's noise seed. Returns nothing: the activations go to the sinks of the capture block.
    """
    if not len(images) == len(prompts) == len(seeds):
        raise UserError(f"got {len(images)} images, {len(prompts)} prompts and {len(seeds)} seeds; give one of each")
    check_noised_model(model)
    if tuple(images.shape[1:3]) != tuple(model.image_size):
        raise UserError(f"images are {images.shape[1]}x{images.shape[2]}, the model runs at "
                        f"{model.image_size[0]}x{model.image_size[1]}; set height and width to the images' size")
    pipe, family, device = model.pipe, model.family, model.device
    x0 = encode_latents(model, images)  # (image, c, h, w)
    noise = model.initial_noise(seeds).to(device, model.dtype)  # (image, c, h, w): per-image generators
    conditioning = _embed(pipe, family, list(prompts), device)
    scheduler = pipe.scheduler
    # unguided: the step tracker reads the pipeline's guidance flag, left set by an earlier generation
    with patched(pipe, "_guidance_scale", 1.0):
        scheduler.set_timesteps(model.config.steps, device=device)  # also starts the tracker's step count afresh
        for t in scheduler.timesteps:
            sample = add_step_noise(scheduler, x0, noise, t)  # (image, c, h, w): x_t at this step's timestep
            if family == "sd3":
                out = model.denoiser(hidden_states=sample, timestep=t.expand(len(sample)), return_dict=False,
                                     **conditioning)[0]
            else:
                out = model.denoiser(scheduler.scale_model_input(sample, t), t, return_dict=False, **conditioning)[0]
            scheduler.step(out, t, sample)  # the extras' hook point; the updated latent is not used
