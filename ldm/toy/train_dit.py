"""Train the toy DiT (`ldm.toy.dit`) on toy-world renders and captions with SD3's flow-matching objective.

    python -m ldm.toy.train_dit --out ldm/toy/dit --max-minutes 75 --threads 1      # see docs/toy-ldm.md, "The toy DiT"
    python -m ldm.toy.train_dit --out ldm/toy/dit --resume --max-minutes 60          # continue where it stopped
    python -m ldm.toy.train_dit --out runs/toy-dit2 --init-from ldm/toy/dit --max-minutes 60  # without the state
    python -m ldm.toy.train_dit --out ldm/toy/dit --samples docs/toy-dit-samples.png

The VAE is the toy LDM's, frozen: latents are its posterior means of the renders (encoded once, cached in the state
folder). The transformer and both text encoders (started from the toy LDM's) train jointly on rectified flow, the
objective `FlowMatchEulerDiscreteScheduler` integrates:

    x_t = (1 - sigma) x_0 + sigma * noise,   target v = noise - x_0,   loss = |v_theta(x_t, 1000 sigma, c) - v|^2

with sigma drawn logit-normal (SD3's `logit_normal` weighting scheme: sigmoid of a standard normal, then the
scheduler's shift), captions dropped to "" 10% of the time (classifier-free guidance), AdamW after a linear warm-up,
gradient clipping 1, EMA 0.999 (the saved pipeline holds the EMA weights). Deterministic from --seed: a resumed run
draws the same batches and noise as an uninterrupted one. State (weights, EMA, Adam moments; safetensors) goes to
--state-dir every --save-every-s seconds and at the end.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ldm.toy.dit import ToyDiT, ToyDiTConfig, build_toy_dit, encode_ids, load_pipeline, save_pipeline
from ldm.toy.train_data import BatchOrder, load_dataset
from ldm.toy.train_ldm import (
    Log,
    encode_means,
    ema_update,
    load_optimizer_tensors,
    lr_at,
    optimizer_tensors,
    save_state,
    split_ema,
    tokenize,
    training_main,
)

TRAINED = ("transformer", "text_encoder", "text_encoder_2")


@dataclass
class DiTTrainConfig:
    out: str = "ldm/toy/dit"
    state_dir: str = "runs/toy-dit-state"
    data: str = "runs/toy-renders"  # cache prefix: <data>-<n>.npz (shared with the U-Net's training)
    n_scenes: int = 8000
    seed: int = 0
    steps: int = 40000  # a ceiling: runs normally stop on --max-minutes and resume
    batch: int = 16
    lr: float = 4e-4
    warmup: int = 100
    ema_decay: float = 0.999
    uncond_prob: float = 0.1
    logit_mean: float = 0.0  # sigma = shift(sigmoid(N(logit_mean, logit_std)))
    logit_std: float = 1.0
    save_every_s: float = 300.0
    max_minutes: float = 0.0  # wall-clock cap (0 = none)
    threads: int = 1
    init_from: str = ""  # a toy DiT folder (e.g. ldm/toy/dit) whose weights start a fresh run ("" = random init)


def sample_sigmas(n: int, cfg: DiTTrainConfig, shift: float, gen: torch.Generator) -> torch.Tensor:
    """(n,) noise levels in (0, 1): logit-normal, then the scheduler's shift s*sigma / (1 + (s - 1)*sigma)."""
    sigma = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(n, generator=gen))
    return shift * sigma / (1 + (shift - 1) * sigma)


def flow_loss(model: ToyDiT, latents: torch.Tensor, ids: torch.Tensor, cfg: DiTTrainConfig,
              gen: torch.Generator) -> torch.Tensor:
    """Rectified-flow MSE on scaled latents (image, 4, 16, 16): predict v = noise - x_0 at x_t."""
    noise = torch.randn(latents.shape, generator=gen)
    sigma = sample_sigmas(len(latents), cfg, model.flow_shift, gen)
    s = sigma[:, None, None, None]
    noisy = (1 - s) * latents + s * noise  # (image, 4, 16, 16)
    seq, pooled = encode_ids(model.text_encoder, model.text_encoder_2, ids)  # (image, 24, 128), (image, 128)
    pred = model.transformer(noisy, seq, pooled, sigma * 1000).sample
    return (pred - (noise - latents)).pow(2).mean()


def cached_latents(model: ToyDiT, images, state_dir: Path, n: int) -> torch.Tensor:
    """The frozen VAE's scaled posterior means (scene, 4, 16, 16) of the training renders, cached as safetensors."""
    path = state_dir / f"latents-{n}.safetensors"
    if path.exists():
        return load_file(str(path))["latents"]
    with torch.no_grad():
        cfg = model.vae.config
        # contiguous, as the cache hands it back: the encoder's output is channels-last, and a resumed run must see
        # the same memory layout (convolutions sum in a layout-dependent order) to continue bit for bit
        latents = ((encode_means(model.vae, images) - cfg.shift_factor) * cfg.scaling_factor).contiguous()
    state_dir.mkdir(parents=True, exist_ok=True)
    save_file({"latents": latents}, str(path))
    return latents


def ema_model(model: ToyDiT, ema: dict[str, torch.Tensor]) -> ToyDiT:
    """A copy of `model` with the EMA weights of the trained parts (what gets published)."""
    out = copy.copy(model)
    for name in TRAINED:
        m = copy.deepcopy(getattr(model, name))
        m.load_state_dict(split_ema(ema, name))
        setattr(out, name, m.eval())
    return out


def train(cfg: DiTTrainConfig, resume: bool = False) -> ToyDiT:
    """Run (or resume) training; returns the model with EMA weights, also saved to `cfg.out`."""
    torch.set_num_threads(cfg.threads)
    stop_time = time.time() + 60 * cfg.max_minutes if cfg.max_minutes > 0 else math.inf
    out, state_dir = Path(cfg.out), Path(cfg.state_dir)
    model = build_toy_dit(ToyDiTConfig(), seed=cfg.seed)
    model.vae.eval().requires_grad_(False)
    state = {"step": 0, "position": 0}
    modules = {name: getattr(model, name) for name in TRAINED}
    if resume and (state_dir / "state.json").exists():
        state.update(json.loads((state_dir / "state.json").read_text())["state"])
        for name, m in modules.items():
            m.load_state_dict(load_file(str(state_dir / f"{name}.safetensors")))
    elif resume:
        print(f"note: --resume but no {state_dir / 'state.json'}: starting fresh", flush=True)
    if cfg.init_from and state["step"] == 0:  # continue a published folder's (EMA) weights without its state
        init = load_pipeline(cfg.init_from)
        for name, m in modules.items():
            m.load_state_dict(getattr(init, name).state_dict())
    log = Log(out / "train_log.csv", {"dit": state["step"]})
    images, captions = load_dataset(cfg.data, cfg.n_scenes)
    latents = cached_latents(model, images, state_dir, cfg.n_scenes)
    ids = tokenize(model.tokenizer, captions)
    empty_ids = tokenize(model.tokenizer, [""])[0]

    params = [p for m in modules.values() for p in m.train().parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    ema = {f"{n}.{k}": v.detach().clone() for n, m in modules.items() for k, v in m.state_dict().items()}
    if state["step"] > 0:
        load_optimizer_tensors(opt, load_file(str(state_dir / "opt.safetensors")))
        ema = load_file(str(state_dir / "ema.safetensors"))

    def save() -> None:
        tensors = {name: m.state_dict() for name, m in modules.items()}
        save_state(state_dir, {"config": asdict(cfg), "state": state},
                   {**tensors, "ema": ema, "opt": optimizer_tensors(opt)})
        save_pipeline(ema_model(model, ema), out)
        (out / "train_config.json").write_text(json.dumps({"config": asdict(cfg), "state": state}, indent=1))

    order = BatchOrder(len(latents), cfg.seed + 2, state["position"])
    t_start, t_save, losses = time.time(), time.time(), []
    while state["step"] < cfg.steps and time.time() < stop_time:
        step = state["step"]
        lr = lr_at(step, cfg.lr, cfg.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = order.next(cfg.batch)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 700_000 + step)
        batch_ids = ids[idx].clone()
        batch_ids[torch.rand(len(idx), generator=gen) < cfg.uncond_prob] = empty_ids  # learn p(x | "") too
        loss = flow_loss(model, latents[idx], batch_ids, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_update(ema, modules, min(cfg.ema_decay, (1 + step) / (10 + step)))
        losses.append(loss.item())
        state["step"], state["position"] = step + 1, order.position
        log.tick("dit", state["step"], cfg.steps, losses, lr, t_start)
        if time.time() - t_save > cfg.save_every_s:
            save()
            t_save = time.time()
    save()  # final state, Adam moments included, so a later --resume continues exactly
    return ema_model(model, ema)


def write_samples(folder: str | Path, png: str | Path, n: int = 8, steps: int = 25, guidance_scale: float = 5.0
                  ) -> list[str]:
    """Grid PNG like the toy LDM's (`docs/toy-ldm-samples.png`): held-out renders on top, the DiT's samples for their
    captions below (flow Euler, `steps` steps, generator seed 0)."""
    from PIL import Image

    from ldm.toy.model import sample_grid
    from ldm.toy.render import HELD_OUT_SEED, render_batch

    held_out = render_batch(list(range(HELD_OUT_SEED, HELD_OUT_SEED + n)), size=64)
    grid = sample_grid(load_pipeline(folder), list(held_out.captions), real=held_out.rgb, steps=steps,
                       guidance_scale=guidance_scale)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(png)
    return list(held_out.captions)


def main(argv: list[str] | None = None) -> None:
    training_main(argv, __doc__, DiTTrainConfig, train, write_samples)


if __name__ == "__main__":
    main()
