"""The toy DiT (ldm.toy.dit, ldm.toy.train_dit): the objective matches its scheduler, training resumes exactly, the
folder is an ordinary SD3 pipeline folder, and the shipped checkpoint loads as `model: toy-dit`."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ldm.errors import UserError
from ldm.toy.dit import TOY_DIT_CHECKPOINT, encode_ids
from ldm.toy.train_dit import DiTTrainConfig, sample_sigmas, train
from ldm.toy.train_ldm import tokenize

JOINT = [n for k in range(8) for n in (f"joint_{k}", f"joint_{k}_out")]


def test_the_training_target_is_the_velocity_the_flow_scheduler_integrates():
    """x_t = (1 - s) x0 + s noise and v = noise - x0: one flow-Euler step from s to 0 with that v lands on x0."""
    from ldm.toy.dit import build_flow_scheduler

    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 4, 16, 16, generator=gen)
    sched = build_flow_scheduler()
    sched.set_timesteps(1)
    s = float(sched.sigmas[0])
    x_t = (1 - s) * x0 + s * noise
    out = sched.step(noise - x0, sched.timesteps[0], x_t).prev_sample
    assert torch.allclose(out, x0, atol=1e-5)
    sigmas = sample_sigmas(10_000, DiTTrainConfig(), 1.0, gen)
    assert 0 < sigmas.min() and sigmas.max() < 1 and abs(float(sigmas.median()) - 0.5) < 0.02  # logit-normal(0, 1)


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory):
    """4 steps in one go, and 2 steps + a resume to 4, on 32 training scenes (one state folder each)."""
    root = tmp_path_factory.mktemp("toy-dit")
    base = DiTTrainConfig(data=str(root / "renders"), n_scenes=32, batch=4, warmup=2, save_every_s=1e9)
    whole = replace(base, out=str(root / "whole"), state_dir=str(root / "whole-state"), steps=4)
    split = replace(base, out=str(root / "split"), state_dir=str(root / "split-state"), steps=2)
    train(whole)
    train(split)
    train(replace(split, steps=4), resume=True)
    return Path(whole.out), Path(whole.state_dir), Path(split.out), Path(split.state_dir)


def test_a_resumed_run_equals_an_uninterrupted_one(short_runs):
    _, whole_state, _, split_state = short_runs
    for name in ("transformer", "text_encoder", "ema", "opt"):
        a, b = load_file(str(whole_state / f"{name}.safetensors")), load_file(str(split_state / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    weights, ema = load_file(str(whole_state / "transformer.safetensors")), load_file(str(whole_state / "ema.safetensors"))
    assert any(not torch.equal(ema[f"transformer.{k}"], v) for k, v in weights.items())  # the EMA lags the weights


def test_the_folder_is_a_stock_sd3_pipeline_that_sceneprobe_loads(short_runs):
    from diffusers import StableDiffusion3Pipeline

    from ldm.loading import load_model

    folder = short_runs[0]
    lm = load_model(str(folder), scheduler="flow_euler", steps=2, guidance_scale=5.0)
    assert type(lm.pipe).__name__ == "ToySD3Pipeline" and lm.family == "sd3"
    points = [p for p in lm.hook_points if p.kind != "extra"]
    assert [p.name for p in points] == JOINT and {(p.height, p.width) for p in points} == {(8, 8)}
    images = lm.generate(["a red sphere on a grey floor", ""], [1, 2])
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
    # the text the transformer sees is the CLIP tokens only, as in training
    caps = ["a red sphere on a grey floor", ""]
    with torch.no_grad():
        seq, _, pooled, _ = lm.pipe.encode_prompt(caps, caps, caps, do_classifier_free_guidance=False)
        ours = encode_ids(lm.pipe.text_encoder, lm.pipe.text_encoder_2, tokenize(lm.pipe.tokenizer, caps))
    assert seq.shape == (2, 24, 128) and torch.equal(seq, ours[0]) and torch.equal(pooled, ours[1])
    # the stock class loads the same folder and, with max_sequence_length=0, samples the same image
    stock = StableDiffusion3Pipeline.from_pretrained(str(folder), text_encoder_3=None, tokenizer_3=None)
    stock.set_progress_bar_config(disable=True)
    kw = dict(height=64, width=64, num_inference_steps=2, guidance_scale=5.0, output_type="np")
    a = stock(caps[:1], max_sequence_length=0, generator=torch.Generator().manual_seed(0), **kw).images
    b = lm.pipe(caps[:1], generator=torch.Generator().manual_seed(0), **kw).images
    assert np.array_equal(a, b)
    with pytest.raises(UserError, match="scheduler 'lms' cannot run this model"):
        load_model(str(folder), scheduler="lms")



def test_init_from_starts_a_fresh_run_at_a_folders_weights(short_runs, tmp_path):
    whole_out = short_runs[0]
    cfg = DiTTrainConfig(data=str(short_runs[0].parent / "renders"), n_scenes=32, batch=4, steps=0,
                         out=str(tmp_path / "out"), state_dir=str(tmp_path / "state"), init_from=str(whole_out))
    train(cfg)  # zero steps: the saved pipeline is the folder it started from
    a = load_file(str(whole_out / "transformer" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "out" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_shipped_toy_dit_checkpoint():
    """ldm/toy/dit: at most 25 MB, loads as `model: toy-dit` with its 16 hook points on the 8x8 token grid."""
    from ldm.architecture import describe_hook_points, native_scheduler

    size = sum(f.stat().st_size for f in TOY_DIT_CHECKPOINT.rglob("*") if f.is_file())
    assert size <= 25e6, f"{size / 1e6:.1f} MB"
    assert native_scheduler("toy-dit") == "FlowMatchEulerDiscreteScheduler"
    points = [p for p in describe_hook_points("toy-dit") if p.kind != "extra"]
    assert [p.name for p in points] == JOINT and {(p.height, p.width, p.channels) for p in points} == {(8, 8, 128)}
