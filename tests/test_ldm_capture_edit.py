import numpy as np
import pytest
import torch

from ldm.capture import ArraySink, capture, vae_mid_attention
from ldm.control import permute_weights
from ldm.edit import edit
from ldm.hooks import hooked
from ldm.loading import load_model

PROMPTS, SEEDS = ["a red sphere", "a blue cube"], [3, 4]
STEPS = 3


@pytest.fixture(scope="module")
def model(sd1_path):
    return load_model(str(sd1_path), steps=STEPS)


@pytest.fixture(scope="module")
def reference(model):
    return model.generate(PROMPTS, SEEDS)


def test_capture_shapes_every_step_and_hook(model, reference):
    sink = ArraySink()
    with capture(model, sink):
        images = model.generate(PROMPTS, SEEDS)
    np.testing.assert_array_equal(images, reference)  # capture leaves images bit-identical
    arrays = sink.arrays
    assert set(arrays) == {p.name for p in model.hook_points}
    for p in model.hook_points:
        assert arrays[p.name].shape == (2, STEPS, p.height, p.width, p.channels), p.name
        assert np.isfinite(arrays[p.name]).all()


def test_capture_is_deterministic_and_batch_independent(model):
    first, second = ArraySink(), ArraySink()
    with capture(model, first, hooks=["up_1_0"], extras=()):
        model.generate(PROMPTS, SEEDS)
    with capture(model, second, hooks=["up_1_0"], extras=()):
        model.generate(PROMPTS[1:], SEEDS[1:])
    assert set(first.arrays) == {"up_1_0"}
    np.testing.assert_allclose(first.arrays["up_1_0"][1], second.arrays["up_1_0"][0], rtol=1e-5, atol=1e-6)


def test_capture_takes_the_conditional_half(model):
    """With guidance, the captured activation is the second half of the U-Net batch."""
    halves = []
    handle = model.unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0").register_forward_hook(
        lambda m, i, o: halves.append(o.detach().clone())
    )
    sink = ArraySink()
    try:
        with capture(model, sink, hooks=["mid_0"], extras=(), steps=[0]):
            model.generate(PROMPTS, SEEDS)
    finally:
        handle.remove()
    cond = halves[0][2:].reshape(2, 2, 2, -1).numpy()
    np.testing.assert_array_equal(sink.arrays["mid_0"][:, 0], cond)
    assert not np.allclose(halves[0][:2].numpy(), halves[0][2:].numpy())


def test_extras_latent_x0_and_vae(model):
    sink = ArraySink()
    with capture(model, sink, hooks=[], steps=[0, 2]):
        model.generate(PROMPTS, SEEDS)
    latent = sink.arrays["latent"]
    assert latent.shape == (2, 2, 16, 16, 4)
    noise = model.initial_noise(SEEDS) * model.pipe.scheduler.init_noise_sigma
    np.testing.assert_allclose(latent[:, 0], noise.permute(0, 2, 3, 1).numpy(), rtol=1e-6)
    assert not np.allclose(sink.arrays["x0"][:, 1], latent[:, 1])
    direct = vae_mid_attention(model.pipe.vae, torch.from_numpy(latent[:, 1]).permute(0, 3, 1, 2))
    np.testing.assert_allclose(sink.arrays["vae_mid"][:, 1], direct.numpy(), rtol=1e-5, atol=1e-6)


def test_identity_edit_is_exact_and_real_edit_changes_image(model, reference):
    with edit(model, lambda step, name, act: act, hooks=["up_1_0", "up_3_2"], steps=[0, 1]):
        same = model.generate(PROMPTS, SEEDS)
    np.testing.assert_array_equal(same, reference)
    with edit(model, lambda step, name, act: act + 5.0, hooks=["up_3_2"], steps=[0]):
        changed = model.generate(PROMPTS, SEEDS)
    assert np.abs(changed.astype(int) - reference.astype(int)).mean() > 1.0


def test_edit_applies_only_at_chosen_steps_and_layers(model):
    calls = []
    with edit(model, lambda step, name, act: calls.append((step, name, tuple(act.shape))) or act, hooks=["mid_0"], steps=[1]):
        model.generate(PROMPTS, SEEDS)
    assert calls == [(1, "mid_0", (2, 2, 2, 16))]


def test_edit_is_seen_by_capture_downstream(model):
    sink = ArraySink()
    with edit(model, lambda s, n, a: torch.zeros_like(a), hooks=["down_0_0"], steps=[0]):
        with capture(model, sink, hooks=["down_0_0"], extras=(), steps=[0]):
            model.generate(PROMPTS, SEEDS)
    # capture hooks registered after the edit hook see the edited output
    assert np.abs(sink.arrays["down_0_0"]).max() == 0.0


def test_one_hook_mechanism_reads_and_writes(model, reference):
    """capture and edit are both `hooked`: reads never change the image, and a write is seen by every later hook."""
    with hooked(model, lambda s, n, a: torch.zeros_like(a), hooks=["up_3_2"]):
        np.testing.assert_array_equal(model.generate(PROMPTS, SEEDS), reference)  # without write, returns are ignored
    plain = {}

    def identity(step, name, act):
        plain[name] = act.clone()
        return act

    with hooked(model, identity, hooks=["down_0_0", "up_3_2"], steps=[0], write=True):
        np.testing.assert_array_equal(model.generate(PROMPTS, SEEDS), reference)  # an identity write is exact
    edited, sink = {}, ArraySink()

    def zero_first_read_last(step, name, act):
        if name == "down_0_0":
            return torch.zeros_like(act)
        edited[name] = act.clone()  # returning None leaves this activation as it is

    with hooked(model, zero_first_read_last, hooks=["down_0_0", "up_3_2"], steps=[0], write=True):
        with hooked(model, sink, hooks=["down_0_0"], steps=[0]):  # entered later on the same module: runs after
            model.generate(PROMPTS, SEEDS)
    assert np.abs(sink.arrays["down_0_0"]).max() == 0.0
    assert sorted(edited) == ["up_3_2"] and edited["up_3_2"].shape == plain["up_3_2"].shape == (2, 16, 16, 8)
    assert not torch.allclose(edited["up_3_2"], plain["up_3_2"])  # the later hook sees the edited forward pass


def test_permutation_keeps_each_tensors_values(sd1_path):
    model = load_model(str(sd1_path), steps=2)
    before = {n: p.detach().clone() for n, p in model.unet.named_parameters()}
    permute_weights(model.unet, seed=1)
    changed = 0
    for name, param in model.unet.named_parameters():
        if name.endswith("bias"):
            torch.testing.assert_close(param, before[name], rtol=0, atol=0)
            continue
        torch.testing.assert_close(param.flatten().sort().values, before[name].flatten().sort().values, rtol=0, atol=0)
        changed += not torch.equal(param, before[name])
    assert changed > 50
    again = load_model(str(sd1_path), steps=2, permute_seed=1)
    for name, param in again.unet.named_parameters():
        torch.testing.assert_close(param, dict(model.unet.named_parameters())[name], rtol=0, atol=0)
