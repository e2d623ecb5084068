"""Train the toy LDM on toy-world renders and captions (never depth or masks).

    python -m ldm.toy.train_ldm --out ldm/toy/checkpoint --max-minutes 53     # see docs/toy-ldm.md
    python -m ldm.toy.train_ldm --out ldm/toy/checkpoint --samples docs/toy-ldm-samples.png

Stage 1 trains the VAE (pixel-weighted MSE + small KL), fixes its latent scale, stage 2 trains the U-Net and the text
encoder jointly (epsilon prediction, SD's DDPM betas, caption dropped to "" 10% of the time for classifier-free
guidance). Every few minutes the output folder gets a loadable pipeline (EMA U-Net weights) and `train_log.csv`; the
resumable state (weights, EMA, Adam moments as safetensors, step counters as JSON) goes to `--state-dir`.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ldm.toy.model import ToyLDM, build_toy_ldm, build_train_scheduler, save_pipeline, write_samples
from ldm.toy.tokenizer import copy_tokenizer_files
from ldm.toy.train_data import BatchOrder, load_dataset, to_tensor


@dataclass
class TrainConfig:
    out: str = "ldm/toy/checkpoint"
    state_dir: str = "runs/toy-ldm-state"
    data: str = "runs/toy-renders"  # cache prefix: <data>-<n>.npz
    n_scenes: int = 8000
    seed: int = 0
    vae_steps: int = 1200
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_crop: int = 32  # the VAE is convolutional: random 32x32 crops train it at a quarter of the cost
    kl_weight: float = 1e-4
    object_weight: float = 8.0  # extra loss weight for pixels far from the image's median colour
    unet_steps: int = 20000
    unet_batch: int = 16
    unet_lr: float = 5e-4
    warmup: int = 50
    ema_decay: float = 0.999
    uncond_prob: float = 0.1
    snr_gamma: float = 5.0  # min-SNR loss weighting; 0 = plain epsilon MSE
    save_every_s: float = 180.0
    max_minutes: float = 0.0  # wall-clock cap for the whole run (0 = none): the U-Net stage stops early and saves
    threads: int = 1  # on these 2-core machines one thread beat two (0.89 vs 1.22 s per U-Net step, idle)
    init_from: str = ""  # a toy pipeline folder whose weights and tokenizer start a fresh run ("" = random init)


# ------------------------------------------------------------------------------------------------- state on disk
def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Adam moments and step counts as a flat safetensors-friendly dict (no pickle)."""
    return {f"{i}.{k}": v.detach().clone() for i, s in opt.state_dict()["state"].items() for k, v in s.items()}


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        i, k = key.split(".", 1)
        state.setdefault(int(i), {})[k] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def save_state(folder: Path, meta: dict, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
    """Write `<name>.safetensors` for each tensor dict, then `state.json` last so a crash never leaves it ahead."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, t in tensors.items():
        save_file({k: v.contiguous() for k, v in t.items()}, str(folder / f"{name}.tmp"))
        (folder / f"{name}.tmp").rename(folder / f"{name}.safetensors")
    (folder / "state.json.tmp").write_text(json.dumps(meta, indent=1))
    (folder / "state.json.tmp").rename(folder / "state.json")


class Log:
    """Appends rows (stage, step, loss, lr, elapsed_s) to `<out>/train_log.csv` and prints progress lines."""

    def __init__(self, path: Path, last_step: dict[str, int]) -> None:
        """`last_step`: per stage, the step the run resumes from; rows logged after it by a killed run are dropped."""
        self.path = path
        rows = path.read_text().splitlines()[1:] if path.exists() else []
        rows = [r for r in rows if int(r.split(",")[1]) <= last_step.get(r.split(",")[0], 0)]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(["stage,step,loss,lr,elapsed_s"] + rows) + "\n")

    def write(self, stage: str, step: int, total: int, loss: float, lr: float, rate: float, elapsed: float) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([stage, step, f"{loss:.6f}", f"{lr:.3g}", f"{elapsed:.1f}"])
        eta = (total - step) / max(rate, 1e-9)
        print(f"{stage} step {step}/{total} loss {loss:.5f} lr {lr:.2g} {rate:.2f} steps/s eta {eta / 60:.1f} min", flush=True)

    def tick(self, stage: str, step: int, total: int, losses: list[float], lr: float, t_start: float) -> None:
        """After each step: every 25 steps and at the last, write the mean loss of the last 25 steps and the rate
        since `t_start` (this session's steps are `losses`)."""
        if step % 25 == 0 or step == total:
            elapsed = time.time() - t_start
            self.write(stage, step, total, float(np.mean(losses[-25:])), lr, len(losses) / elapsed, elapsed)


def lr_at(step: int, base: float, warmup: int) -> float:
    """Linear warmup, then constant: runs may stop early (--max-minutes), and the EMA does the final averaging."""
    return base * min(1.0, (step + 1) / warmup)


# ----------------------------------------------------------------------------------------------------- stage 1: VAE
def pixel_weights(x: torch.Tensor, object_weight: float) -> torch.Tensor:
    """(image, 1, h, w) loss weights: 1 + object_weight * distance from the image's median colour (capped at 1).

    Floor and sky fill most pixels, so a plain MSE autoencoder learns to paint objects in the floor's colour; weighting
    pixels that differ from the dominant colour up keeps the objects' colours and edges.
    """
    median = x.flatten(2).median(dim=2).values[:, :, None, None]
    dev = (x - median).norm(dim=1, keepdim=True).clamp(max=1.0)
    w = 1.0 + object_weight * dev
    return w / w.mean(dim=(1, 2, 3), keepdim=True)


def random_crop(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """One random (size, size) window per image of x: (image, c, h, w); returns x unchanged if size >= h."""
    n, _, h, w = x.shape
    if size >= h:
        return x
    ys = torch.randint(0, h - size + 1, (n,), generator=gen).tolist()
    xs = torch.randint(0, w - size + 1, (n,), generator=gen).tolist()
    return torch.stack([x[i, :, y : y + size, x0 : x0 + size] for i, (y, x0) in enumerate(zip(ys, xs))])


def vae_loss(vae, x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Pixel-weighted MSE + kl_weight * KL per latent element; x: (image, 3, h, w) in [-1, 1]."""
    dist = vae.encode(x).latent_dist
    z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)
    recon = vae.decode(z).sample
    mse = (pixel_weights(x, cfg.object_weight) * (recon - x).pow(2)).mean()
    kl = 0.5 * (dist.mean.pow(2) + dist.var - 1.0 - dist.logvar).mean()
    return mse + cfg.kl_weight * kl


@torch.no_grad()
def encode_means(vae, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """(image, 4, 16, 16) posterior means (unscaled) of uint8 renders (image, 64, 64, 3)."""
    return torch.cat([vae.encode(to_tensor(images[i : i + batch])).latent_dist.mean for i in range(0, len(images), batch)])


@torch.no_grad()
def normalise_latent_channels(vae, latents: torch.Tensor) -> dict[str, list[float]]:
    """Fold a per-channel shift and scale into the VAE so each latent channel has mean 0 and std 1 (exactly inverted
    in the decoder's post_quant_conv), so one `scaling_factor` fits all four channels. latents: (image, 4, h, w)."""
    mean = latents.mean(dim=(0, 2, 3))
    std = latents.std(dim=(0, 2, 3))
    a = 1.0 / std
    c = mean.numel()
    q, p = vae.quant_conv, vae.post_quant_conv
    q.weight[:c] *= a[:, None, None, None]
    q.bias[:c] = (q.bias[:c] - mean) * a
    q.bias[c:] += 2.0 * torch.log(a)  # logvar of the rescaled posterior
    p.bias += p.weight[:, :, 0, 0] @ mean
    p.weight /= a[None, :, None, None]
    return {"channel_mean": mean.tolist(), "channel_std": std.tolist()}


def train_vae(model: ToyLDM, images: np.ndarray, cfg: TrainConfig, state: dict, log: Log, save) -> None:
    """Stage 1 from `state["vae_step"]` to `cfg.vae_steps`; calls `save(opt)` every `save_every_s` seconds."""
    vae = model.vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    opt_file = Path(cfg.state_dir) / "vae_opt.safetensors"
    if state["vae_step"] > 0 and opt_file.exists():
        load_optimizer_tensors(opt, load_file(str(opt_file)))
    order = BatchOrder(len(images), cfg.seed, state["vae_position"])
    t_start, t_save, losses = time.time(), time.time(), []
    while state["vae_step"] < cfg.vae_steps:
        step = state["vae_step"]
        lr = lr_at(step, cfg.vae_lr, cfg.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        x = random_crop(to_tensor(images[order.next(cfg.vae_batch).numpy()]), cfg.vae_crop, gen)
        loss = vae_loss(vae, x, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        state["vae_step"], state["vae_position"] = step + 1, order.position
        log.tick("vae", state["vae_step"], cfg.vae_steps, losses, lr, t_start)
        if time.time() - t_save > cfg.save_every_s:
            save(opt)
            t_save = time.time()
    vae.eval()


# ---------------------------------------------------------------------------------------------------- stage 2: U-Net
def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """(caption, model_max_length) input ids, padded exactly as StableDiffusionPipeline pads prompts."""
    enc = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
    return torch.tensor(enc.input_ids)


def diffusion_loss(model: ToyLDM, latents: torch.Tensor, ids: torch.Tensor, noise_sched, snr_gamma: float,
                   gen: torch.Generator) -> torch.Tensor:
    """Epsilon-prediction MSE (min-SNR weighted when snr_gamma > 0); latents: (image, 4, 16, 16), already scaled."""
    n = latents.shape[0]
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, noise_sched.config.num_train_timesteps, (n,), generator=gen)
    noisy = noise_sched.add_noise(latents, noise, t)
    cond = model.text_encoder(ids)[0]
    pred = model.unet(noisy, t, cond).sample
    err = (pred - noise).pow(2).mean(dim=(1, 2, 3))
    if snr_gamma > 0:
        # min-SNR weighting (Hang et al. 2023): stops the many easy low-noise steps dominating; converges faster.
        alpha_bar = noise_sched.alphas_cumprod[t]
        snr = alpha_bar / (1 - alpha_bar)
        err = err * snr.clamp(max=snr_gamma) / snr
    return err.mean()


def ema_update(ema: dict[str, torch.Tensor], modules: dict[str, torch.nn.Module], decay: float) -> None:
    with torch.no_grad():
        for prefix, m in modules.items():
            for k, v in m.state_dict().items():
                e = ema[f"{prefix}.{k}"]
                if e.is_floating_point():
                    e.lerp_(v, 1.0 - decay)
                else:
                    e.copy_(v)


def split_ema(ema: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1 :]: v for k, v in ema.items() if k.startswith(prefix + ".")}


def train_unet(model: ToyLDM, latents: torch.Tensor, ids: torch.Tensor, empty_ids: torch.Tensor, cfg: TrainConfig,
               state: dict, ema: dict[str, torch.Tensor], log: Log, save, stop_time: float = math.inf) -> None:
    """Stage 2 (U-Net + text encoder jointly) from `state["unet_step"]` to `cfg.unet_steps` or `stop_time`."""
    modules = {"unet": model.unet.train(), "text_encoder": model.text_encoder.train()}
    params = [p for m in modules.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    opt_file = Path(cfg.state_dir) / "unet_opt.safetensors"
    if state["unet_step"] > 0 and opt_file.exists():
        load_optimizer_tensors(opt, load_file(str(opt_file)))
    noise_sched = build_train_scheduler()
    order = BatchOrder(len(latents), cfg.seed + 1, state["unet_position"])
    t_start, t_save, losses = time.time(), time.time(), []
    while state["unet_step"] < cfg.unet_steps and time.time() < stop_time:
        step = state["unet_step"]
        lr = lr_at(step, cfg.unet_lr, cfg.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = order.next(cfg.unet_batch)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 500_000 + step)
        batch_ids = ids[idx].clone()
        drop = torch.rand(len(idx), generator=gen) < cfg.uncond_prob  # classifier-free guidance: learn p(x | "")
        batch_ids[drop] = empty_ids
        loss = diffusion_loss(model, latents[idx], batch_ids, noise_sched, cfg.snr_gamma, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_update(ema, modules, min(cfg.ema_decay, (1 + step) / (10 + step)))
        losses.append(loss.item())
        state["unet_step"], state["unet_position"] = step + 1, order.position
        log.tick("unet", state["unet_step"], cfg.unet_steps, losses, lr, t_start)
        if time.time() - t_save > cfg.save_every_s:
            save(opt)
            t_save = time.time()
    save(opt)  # final state, Adam moments included, so a later --resume continues exactly


# ------------------------------------------------------------------------------------------------------------ main
def load_initial_weights(model: ToyLDM, folder: Path) -> None:
    """Start from a saved toy pipeline's VAE, U-Net and text encoder (fine-tuning instead of training from scratch)."""
    files = {"vae": "vae/diffusion_pytorch_model.safetensors", "unet": "unet/diffusion_pytorch_model.safetensors",
             "text_encoder": "text_encoder/model.safetensors"}
    for name, rel in files.items():
        if not (folder / rel).is_file():
            raise FileNotFoundError(f"--init-from {folder}: {rel} is missing; point it at a toy pipeline folder "
                                    f"(e.g. ldm/toy/checkpoint)")
        getattr(model, name).load_state_dict(load_file(str(folder / rel)))


def ema_model(model: ToyLDM, ema: dict[str, torch.Tensor]) -> ToyLDM:
    """A copy of `model` with the EMA U-Net and text encoder weights (what gets published)."""
    out = ToyLDM(vae=model.vae, unet=copy.deepcopy(model.unet), text_encoder=copy.deepcopy(model.text_encoder),
                 tokenizer=model.tokenizer)
    out.unet.load_state_dict(split_ema(ema, "unet"))
    out.text_encoder.load_state_dict(split_ema(ema, "text_encoder"))
    out.unet.eval()
    out.text_encoder.eval()
    return out


def train(cfg: TrainConfig, resume: bool = False) -> ToyLDM:
    """Run (or resume) both stages; returns the model with EMA weights, also saved to `cfg.out`."""
    from ldm.toy.captions import VOCABULARY

    torch.set_num_threads(cfg.threads)
    stop_time = time.time() + 60 * cfg.max_minutes if cfg.max_minutes > 0 else math.inf
    out, state_dir = Path(cfg.out), Path(cfg.state_dir)
    init = Path(cfg.init_from) if cfg.init_from and not resume else None
    if init:
        copy_tokenizer_files(init / "tokenizer", state_dir / "tokenizer")
    model = build_toy_ldm(sorted(VOCABULARY), state_dir / "tokenizer", seed=cfg.seed,
                          reuse_tokenizer=resume or init is not None)
    if init:
        load_initial_weights(model, init)
    state = {"vae_step": 0, "vae_position": 0, "unet_step": 0, "unet_position": 0, "latent_stats": None}
    if resume and (state_dir / "state.json").exists():
        state.update(json.loads((state_dir / "state.json").read_text())["state"])
        for name in ("vae", "unet", "text_encoder"):
            f = state_dir / f"{name}.safetensors"
            if f.exists():
                getattr(model, name).load_state_dict(load_file(str(f)))
        if state["latent_stats"]:
            model.vae.register_to_config(scaling_factor=state["latent_stats"]["scaling_factor"])
    elif out.exists() and any(out.iterdir()) and not resume:
        print(f"note: overwriting {out}", flush=True)
    log = Log(out / "train_log.csv", {"vae": state["vae_step"], "unet": state["unet_step"]})
    images, captions = load_dataset(cfg.data, cfg.n_scenes)
    ema_file = state_dir / "ema.safetensors"
    ema = {f"{p}.{k}": v.detach().clone() for p in ("unet", "text_encoder")
           for k, v in getattr(model, p).state_dict().items()}
    if state["unet_step"] > 0 and ema_file.exists():
        ema = load_file(str(ema_file))

    def meta() -> dict:
        return {"config": asdict(cfg), "state": state}

    def save_vae(opt) -> None:
        save_state(state_dir, meta(), {"vae": model.vae.state_dict(), "vae_opt": optimizer_tensors(opt)})

    def save_unet(opt) -> None:
        save_state(state_dir, meta(), {"unet": model.unet.state_dict(), "text_encoder": model.text_encoder.state_dict(),
                                       "ema": ema, "unet_opt": optimizer_tensors(opt)})
        save_pipeline(ema_model(model, ema), out)
        model.unet.train()

    latents = None  # normalised, unscaled VAE means (scene, 4, 16, 16)
    if state["latent_stats"] is None:
        train_vae(model, images, cfg, state, log, save_vae)
        raw = encode_means(model.vae, images)
        stats = normalise_latent_channels(model.vae, raw)
        # The fold is affine, so the normalised latents are (raw - mean) / std: no second encoding pass.
        mean, std = (torch.tensor(stats[k])[:, None, None] for k in ("channel_mean", "channel_std"))
        latents = (raw - mean) / std
        stats["scaling_factor"] = 1.0 / float(latents.std())
        model.vae.register_to_config(scaling_factor=stats["scaling_factor"])
        state["latent_stats"] = stats
        save_state(state_dir, meta(), {"vae": model.vae.state_dict()})
        print(f"latent stats {json.dumps(stats)}", flush=True)
    model.vae.eval().requires_grad_(False)
    if latents is None:  # resumed after stage 1
        latents = encode_means(model.vae, images)
    latents = latents * model.vae.config.scaling_factor
    ids = tokenize(model.tokenizer, captions)
    empty_ids = tokenize(model.tokenizer, [""])[0]
    train_unet(model, latents, ids, empty_ids, cfg, state, ema, log, save_unet, stop_time)
    (out / "train_config.json").write_text(json.dumps(meta(), indent=1))
    return ema_model(model, ema)


def training_main(argv: list[str] | None, doc: str, config_cls: type, train_fn, samples_fn) -> None:
    """A toy trainer's command line: one flag per field of its config dataclass, `--resume`, and `--samples PNG`
    (only write a grid of held-out samples from the `--out` pipeline). Shared by the U-Net and the DiT trainers."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f, default in asdict(config_cls()).items():
        p.add_argument("--" + f.replace("_", "-"), type=type(default), default=default)
    p.add_argument("--resume", action="store_true", help="continue from --state-dir")
    p.add_argument("--samples", default="", help="only write a grid PNG of held-out samples from the --out pipeline")
    args = vars(p.parse_args(argv))
    resume, samples = args.pop("resume"), args.pop("samples")
    if samples:
        torch.set_num_threads(args["threads"])
        for i, caption in enumerate(samples_fn(args["out"], samples)):
            print(f"{i}: {caption}")
    else:
        train_fn(config_cls(**args), resume=resume)


def main(argv: list[str] | None = None) -> None:
    training_main(argv, __doc__, TrainConfig, train, write_samples)


if __name__ == "__main__":
    main()
