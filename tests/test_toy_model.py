"""Tests for the toy LDM (ldm/toy/model.py, tokenizer.py, train_ldm.py): topology, tokenizer, training, save/load."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm.toy.captions import COLOURS, FLOOR_TEXTURES, RELATIONS, SHAPES, VOCABULARY
from ldm.toy.model import (
    TextConfig,
    ToyLDMConfig,
    UNetConfig,
    VAEConfig,
    build_toy_ldm,
    build_train_scheduler,
    build_unet,
    load_pipeline,
    n_params,
    save_pipeline,
    self_attention_layers,
)
from ldm.toy.tokenizer import EOS, EOW, build_tokenizer
from ldm.toy.train_ldm import (
    BatchOrder,
    Log,
    TrainConfig,
    diffusion_loss,
    encode_means,
    load_initial_weights,
    normalise_latent_channels,
    pixel_weights,
    tokenize,
    vae_loss,
)

CHECKPOINT = Path(__file__).resolve().parents[1] / "ldm" / "toy" / "checkpoint"
WORDS = sorted(VOCABULARY)


def tiny_config() -> ToyLDMConfig:
    """Same block layout as the real model, a few channels wide, so tests take seconds."""
    return ToyLDMConfig(
        vae=VAEConfig(block_out_channels=(8, 16, 16), norm_num_groups=4),
        unet=UNetConfig(block_out_channels=(16, 16, 16, 16), attention_head_dim=2, cross_attention_dim=16,
                        norm_num_groups=4),
        text=TextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, projection_dim=16),
    )


def sample_captions() -> list[str]:
    shapes = itertools.cycle(SHAPES)
    caps = [f"a {c} {next(shapes)} {r} a {c2} cube on a {c2} {t} floor"
            for c, c2, r, t in zip(COLOURS, reversed(COLOURS), itertools.cycle(RELATIONS), itertools.cycle(FLOOR_TEXTURES))]
    return caps + ["a red sphere left of a blue cone and a green cylinder in a room with a grey checkered floor"]


def test_unet_has_sd_v1_self_attention_layout():
    torch.manual_seed(0)
    unet = build_unet(UNetConfig())
    names = self_attention_layers(unet)
    assert len(names) == 16
    assert 3e6 <= n_params(unet) <= 5e6
    tokens: dict[str, int] = {}
    hooks = [unet.get_submodule(n).register_forward_hook(
        lambda m, args, out, n=n: tokens.__setitem__(n, args[0].shape[1])) for n in names]
    with torch.no_grad():
        unet(torch.randn(1, 4, 16, 16), torch.tensor([10]), torch.randn(1, 5, UNetConfig().cross_attention_dim))
    for h in hooks:
        h.remove()
    sides = [int(round(t ** 0.5)) for t in tokens.values()]
    # down 16,16,8,8,4,4 | up 4,4,4,8,8,8,16,16,16 | mid 2 (diffusers names modules down, up, mid)
    assert sorted(sides) == sorted([16] * 5 + [8] * 5 + [4] * 5 + [2])
    assert tokens["mid_block.attentions.0.transformer_blocks.0.attn1"] == 4


def test_tokenizer_one_token_per_word_and_round_trip(tmp_path):
    tok = build_tokenizer(WORDS, tmp_path)
    for word in WORDS:
        ids = tok(word, add_special_tokens=False).input_ids
        assert tok.convert_ids_to_tokens(ids) == [word + EOW]
    for caption in sample_captions():
        ids = tokenize(tok, [caption])[0].tolist()
        assert len(ids) == tok.model_max_length
        words = caption.split()
        assert ids[0] == tok.bos_token_id and ids[len(words) + 1] == tok.eos_token_id
        assert tok.unk_token == EOS and tok.eos_token_id not in ids[1 : len(words) + 1]  # no unknown tokens
        assert tok.decode(ids, skip_special_tokens=True) == caption


def test_tokenizer_ids_do_not_depend_on_hash_order(tmp_path):
    import os
    import subprocess
    import sys

    code = ("import json, sys; from ldm.toy.tokenizer import build_vocab; from ldm.toy.captions import VOCABULARY; "
            "print(json.dumps(build_vocab(sorted(VOCABULARY))[0]))")
    repo = Path(__file__).resolve().parents[1]
    outs = {subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout
            for seed in (1, 2, 3)}
    assert len(outs) == 1


def test_tokenizer_reuse_keeps_existing_ids(tmp_path):
    import json

    fresh = build_tokenizer(WORDS, tmp_path).get_vocab()
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    vocab["cube</w>"], vocab["sphere</w>"] = vocab["sphere</w>"], vocab["cube</w>"]  # a numbering an earlier build wrote
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    assert build_tokenizer(WORDS, tmp_path, reuse=True).get_vocab()["cube</w>"] == fresh["sphere</w>"]
    assert build_tokenizer(WORDS, tmp_path).get_vocab()["cube</w>"] == fresh["cube</w>"]


def test_latent_channel_normalisation_is_exact_and_invertible():
    torch.manual_seed(0)
    model = build_toy_ldm(WORDS, "/tmp/sceneprobe-test-tok", tiny_config())
    images = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    vae = model.vae.eval()
    z = encode_means(vae, images)
    with torch.no_grad():
        before = vae.decode(z).sample
        normalise_latent_channels(vae, z)
        z2 = encode_means(vae, images)
        after = vae.decode(z2).sample
    assert torch.allclose(z2.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4)
    assert torch.allclose(z2.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-4)
    assert torch.allclose(before, after, atol=1e-4)


def test_pixel_weights_favour_off_median_pixels():
    x = torch.full((1, 3, 8, 8), -0.5)
    x[:, :, 2:4, 2:4] = 0.9  # an "object" on a uniform floor
    w = pixel_weights(x, object_weight=8.0)
    assert w[0, 0, 2, 2] > 5 * w[0, 0, 0, 0]
    assert torch.isclose(w.mean(), torch.tensor(1.0))


def test_batch_order_is_deterministic_and_resumable():
    a = BatchOrder(10, seed=3)
    first = [a.next(4) for _ in range(5)]
    b = BatchOrder(10, seed=3, position=8)
    assert torch.equal(torch.cat(first)[8:12], b.next(4))
    assert sorted(torch.cat(first)[:10].tolist()) == list(range(10))  # one epoch = a permutation


def test_log_drops_rows_of_a_killed_run_on_resume(tmp_path, capsys):
    log = Log(tmp_path / "log.csv", {})
    for step in (25, 50, 75):
        log.write("vae", step, 100, 0.5, 1e-3, 1.0, 1.0)
    log = Log(tmp_path / "log.csv", {"vae": 50})  # resumed from a state saved at step 50
    log.write("vae", 75, 100, 0.4, 1e-3, 1.0, 1.0)
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert [r.split(",")[:3] for r in rows[1:]] == [["vae", "25", "0.500000"], ["vae", "50", "0.500000"],
                                                     ["vae", "75", "0.400000"]]
    assert "vae step 75/100" in capsys.readouterr().out


def test_tiny_training_steps_reduce_losses(tmp_path):
    torch.manual_seed(0)
    model = build_toy_ldm(WORDS, tmp_path / "tok", tiny_config())
    images = torch.rand(4, 3, 32, 32) * 2 - 1  # the VAE is convolutional; small crops keep this fast
    opt = torch.optim.Adam(model.vae.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = vae_loss(model.vae, images, TrainConfig(), torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]

    latents = torch.randn(4, 4, 16, 16)
    ids = tokenize(model.tokenizer, sample_captions()[:4])
    params = list(model.unet.parameters()) + list(model.text_encoder.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(8):
        loss = diffusion_loss(model, latents, ids, build_train_scheduler(), 5.0, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


def test_init_from_loads_a_saved_pipelines_weights(tmp_path):
    """`--init-from` (fine-tuning a shipped checkpoint) starts from exactly the saved weights, or names what is missing."""
    saved = build_toy_ldm(WORDS, tmp_path / "tok", tiny_config(), seed=1)
    save_pipeline(saved, tmp_path / "pipe")
    fresh = build_toy_ldm(WORDS, tmp_path / "tok2", tiny_config(), seed=2)
    assert not torch.equal(fresh.unet.conv_in.weight, saved.unet.conv_in.weight)
    load_initial_weights(fresh, tmp_path / "pipe")
    for name in ("vae", "unet", "text_encoder"):
        a, b = getattr(saved, name).state_dict(), getattr(fresh, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="unet/diffusion_pytorch_model.safetensors is missing"):
        load_initial_weights(fresh, tmp_path / "pipe")


def generate(folder: Path) -> np.ndarray:
    pipe = load_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["a red sphere on a grey plain floor", "a blue cube left of a green cone in a room with a white tiled floor"],
               height=64, width=64, num_inference_steps=2, guidance_scale=7.5, output_type="np",
               generator=torch.Generator().manual_seed(0))
    return out.images


def test_save_load_and_generate_with_stock_pipeline(tmp_path):
    from diffusers import LMSDiscreteScheduler, StableDiffusionPipeline

    model = build_toy_ldm(WORDS, tmp_path / "tok", tiny_config())
    save_pipeline(model, tmp_path / "pipe")
    assert (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "pipe"))
    assert isinstance(pipe.scheduler, LMSDiscreteScheduler)
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.vae_scale_factor == 4
    images = generate(tmp_path / "pipe")
    assert images.shape == (2, 64, 64, 3) and np.isfinite(images).all()


@pytest.mark.skipif(not (CHECKPOINT / "model_index.json").exists(), reason="no trained toy checkpoint")
def test_committed_checkpoint_loads_generates_and_is_small():
    size = sum(f.stat().st_size for f in CHECKPOINT.rglob("*") if f.is_file())
    assert size <= 25 * 2**20
    images = generate(CHECKPOINT)
    assert images.shape == (2, 64, 64, 3) and np.isfinite(images).all()
    assert images.std() > 0.02  # not a blank image
    pipe = load_pipeline(CHECKPOINT)
    assert 0.2 < pipe.vae.config.scaling_factor < 5.0
