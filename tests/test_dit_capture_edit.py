"""Capture and edit on diffusion transformers, with the U-Net guarantees: the conditional half of a guidance batch
(SD3, PixArt) or the whole batch (Flux-dev, guidance distilled), step = denoiser call, bit-identical images, exact
identity edits, batch-independent noise, the permuted control, and no capture under diffusers' step caches."""

import numpy as np
import pytest
import torch

from ldm.capture import ArraySink, capture, vae_mid_attention
from ldm.edit import edit
from ldm.errors import UserError
from ldm.hooks import hooked
from ldm.loading import load_model

PROMPTS, SEEDS = ["a red sphere", "a blue cube"], [3, 4]
STEPS = 3
SETTINGS = {  # family -> (scheduler, size): flow matching where the real model uses it
    "sd3": ("flow_euler", 32), "flux": ("flow_euler", 32), "pixart": ("ddim", 32),
}
FAMILIES = list(SETTINGS)


_LOADED: dict = {}


def _load(family: str, request):
    if family not in _LOADED:  # one model per family for the whole module
        scheduler, size = SETTINGS[family]
        path = request.getfixturevalue(f"{family}_path")
        _LOADED[family] = load_model(str(path), scheduler=scheduler, steps=STEPS, guidance_scale=4.0, height=size,
                                     width=size)
    return _LOADED[family]


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return _load(request.param, request)


@pytest.fixture(params=["sd3", "flux"])
def joint_model(request):
    """The families whose points read joint text/image outputs."""
    return _load(request.param, request)


@pytest.fixture(params=["sd3", "flux"])
def flow_model(request):
    """The flow-matching families."""
    return _load(request.param, request)


@pytest.fixture(scope="module")
def reference(model):
    return model.generate(PROMPTS, SEEDS)


def _points(model):
    return [p for p in model.hook_points if p.kind != "extra"]


def test_capture_every_step_and_hook_leaves_images_bit_identical(model, reference):
    sink = ArraySink()
    with capture(model, sink):
        images = model.generate(PROMPTS, SEEDS)
    np.testing.assert_array_equal(images, reference)
    arrays = sink.arrays
    assert set(arrays) == {p.name for p in model.hook_points}
    for p in model.hook_points:
        assert arrays[p.name].shape == (2, STEPS, p.height, p.width, p.channels), p.name
        assert np.isfinite(arrays[p.name]).all()
    # the prompts differ, so a per-image activation must too (a broadcast or a mixed-up batch would not)
    assert not np.allclose(arrays[_points(model)[-1].name][0], arrays[_points(model)[-1].name][1])


def test_step_is_the_denoiser_call_index(model):
    calls, seen = [], []
    handle = model.denoiser.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        with hooked(model, lambda step, name, act: seen.append((step, name)), hooks=[_points(model)[0].name]):
            model.generate(PROMPTS, SEEDS)
            model.generate(PROMPTS[:1], SEEDS[:1])  # a new generation counts from 0 again
    finally:
        handle.remove()
    name = _points(model)[0].name
    assert len(calls) == 2 * STEPS  # one denoiser call per step: no extra calls to count (Flux: no true-CFG call)
    assert seen == [(s, name) for s in range(STEPS)] * 2
    only = []
    with hooked(model, lambda step, name, act: only.append(step), hooks=[name], steps=[1]):
        model.generate(PROMPTS, SEEDS)
    assert only == [1]


def _raw_output(model, point, step: int = 0):
    """What the hooked module itself returns at `step`, by a plain forward hook."""
    outputs = []
    module = model.denoiser.get_submodule(point.module_path)
    handle = module.register_forward_hook(lambda m, i, o: outputs.append(o))
    try:
        sink = ArraySink()
        with capture(model, sink, hooks=[point.name], extras=(), steps=[step]):
            model.generate(PROMPTS, SEEDS)
    finally:
        handle.remove()
    return outputs[step], sink.arrays[point.name][:, 0]


def test_conditional_half_or_whole_batch(model):
    """SD3 and PixArt run `[unconditional, conditional]`; the capture is the second half. Flux-dev runs one
    conditional batch (guidance is an embedding): the capture is all of it, and there is no unconditional half.
    The last plain point: PixArt's first self-attention comes before any text (its cross-attention follows it)."""
    point = [p for p in _points(model) if p.take == "all"][-1]
    raw, captured = _raw_output(model, point)
    h, w, c = point.height, point.width, point.channels
    if model.family == "flux":
        assert raw.shape[0] == 2
        np.testing.assert_array_equal(captured, raw.reshape(2, h, w, c).numpy())
        uncond = []
        with hooked(model, lambda s, n, a: uncond.append(a), hooks=[point.name], half="uncond"):
            model.generate(PROMPTS, SEEDS)
        assert uncond == []
    else:
        assert raw.shape[0] == 4
        np.testing.assert_array_equal(captured, raw[2:].reshape(2, h, w, c).numpy())
        assert not np.allclose(raw[:2].numpy(), raw[2:].numpy())


def test_image_tokens_of_joint_outputs(joint_model):
    """Flux single-stream points take the last h*w tokens of the `[text, image]` sequence; SD3's block outputs the
    image element of the block's `(text, image)` pair."""
    model = joint_model
    point = [p for p in _points(model) if p.take != "all"][-1]
    raw, captured = _raw_output(model, point)
    h, w, c = point.height, point.width, point.channels
    if model.family == "flux":
        assert raw.shape[1] > h * w  # text tokens come first
        image = raw[:, -h * w:]
    else:
        assert isinstance(raw, tuple) and raw[0] is None  # the last joint block ends the text stream
        image = raw[1]
    np.testing.assert_array_equal(captured, image[-2:].reshape(2, h, w, c).numpy())


def test_identity_edit_is_exact_and_a_real_edit_changes_the_image(model, reference):
    names = [p.name for p in _points(model)]
    with edit(model, lambda step, name, act: act, hooks=names):
        np.testing.assert_array_equal(model.generate(PROMPTS, SEEDS), reference)
    # a flipped, amplified activation everywhere (a constant offset would vanish in the next LayerNorm)
    with edit(model, lambda step, name, act: -3 * act, hooks=names, steps=[0]):
        changed = model.generate(PROMPTS, SEEDS)
    assert np.abs(changed.astype(int) - reference.astype(int)).mean() > 1.0


def test_a_write_is_seen_by_later_hooks(model):
    first, last = _points(model)[0], _points(model)[-1]
    plain, after = ArraySink(), ArraySink()
    with capture(model, plain, hooks=[last.name], extras=(), steps=[0]):
        model.generate(PROMPTS, SEEDS)
    with edit(model, lambda s, n, a: torch.zeros_like(a), hooks=[first.name], steps=[0]):
        with capture(model, after, hooks=[first.name, last.name], extras=(), steps=[0]):
            model.generate(PROMPTS, SEEDS)
    assert np.abs(after.arrays[first.name]).max() == 0.0  # entered later on the same module: sees the write
    assert not np.allclose(after.arrays[last.name], plain.arrays[last.name])


def test_capture_is_batch_independent(model):
    both, alone = ArraySink(), ArraySink()
    name = _points(model)[-1].name
    with capture(model, both, hooks=[name], extras=("latent",)):
        model.generate(PROMPTS, SEEDS)
    with capture(model, alone, hooks=[name], extras=("latent",)):
        model.generate(PROMPTS[1:], SEEDS[1:])
    np.testing.assert_allclose(both.arrays[name][1], alone.arrays[name][0], rtol=1e-4, atol=1e-5)
    # step 0's latent is the image's own seeded noise (unpacked for Flux), times the scheduler's initial sigma
    noise = model.initial_noise(SEEDS) * getattr(model.pipe.scheduler, "init_noise_sigma", 1.0)  # flow matching: 1
    np.testing.assert_allclose(both.arrays["latent"][:, 0], noise.permute(0, 2, 3, 1).numpy(), rtol=1e-6)


def test_flow_matching_x0_and_the_vae_baseline(flow_model):
    """Under flow matching x_t = (1 - sigma) x0 + sigma * noise and the model predicts v = noise - x0; Euler steps
    x_next = x_t + (sigma_next - sigma) v, so x0 = x_t - sigma (x_next - x_t) / (sigma_next - sigma). (PixArt predicts
    epsilon; its x0 is computed as the U-Nets', tests/test_ldm_capture_edit.py.)"""
    model = flow_model
    sink = ArraySink()
    with capture(model, sink, hooks=[]):
        model.generate(PROMPTS, SEEDS)
    latent, x0 = sink.arrays["latent"], sink.arrays["x0"]
    sigmas = model.pipe.scheduler.sigmas.numpy()
    for s in range(STEPS - 1):
        v = (latent[:, s + 1] - latent[:, s]) / (sigmas[s + 1] - sigmas[s])
        np.testing.assert_allclose(x0[:, s], latent[:, s] - sigmas[s] * v, rtol=1e-3, atol=1e-4)
    # vae_mid decodes x_t as the pipeline decodes a latent: z / scaling_factor + shift_factor
    vae, grabbed = model.pipe.vae, []
    handle = vae.decoder.mid_block.attentions[0].to_out[0].register_forward_hook(lambda m, i, o: grabbed.append(o))
    z = torch.from_numpy(latent[:, 1]).permute(0, 3, 1, 2)
    try:
        with torch.no_grad():
            vae.decode(z / vae.config.scaling_factor + vae.config.shift_factor)
    finally:
        handle.remove()
    np.testing.assert_allclose(sink.arrays["vae_mid"][:, 1], grabbed[0].reshape(sink.arrays["vae_mid"][:, 1].shape),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vae_mid_attention(vae, z).numpy(), sink.arrays["vae_mid"][:, 1], rtol=1e-5, atol=1e-6)


def test_permuted_transformer_is_the_control(model, reference):
    scheduler, size = SETTINGS[model.family]
    path = str(model.pipe.config._name_or_path)
    permuted = load_model(path, scheduler=scheduler, steps=STEPS, guidance_scale=4.0, height=size, width=size,
                          permute_seed=1)
    same = dict(model.denoiser.named_parameters())
    changed = 0
    for name, param in permuted.denoiser.named_parameters():
        torch.testing.assert_close(param.flatten().sort().values, same[name].flatten().sort().values, rtol=0, atol=0)
        changed += not torch.equal(param, same[name])
    assert changed > 10
    assert np.abs(permuted.generate(PROMPTS, SEEDS).astype(int) - reference.astype(int)).mean() > 1.0


def test_diffusers_step_caches_are_refused(model):
    from diffusers.hooks import HookRegistry, PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

    if model.family == "flux":  # FluxTransformer2DModel has CacheMixin: enable_cache / disable_cache
        from diffusers.hooks import FirstBlockCacheConfig

        model.denoiser.enable_cache(FirstBlockCacheConfig(threshold=0.2))
        try:
            with pytest.raises(UserError, match=r"step caching on \(FirstBlockCache\).*stale.*"
                                                r"`pipe.transformer.disable_cache\(\)`"):
                with capture(model, ArraySink()):
                    pass
            with pytest.raises(UserError, match="FirstBlockCache"):  # an edit would miss the cached steps
                with edit(model, lambda s, n, a: a, hooks=[_points(model)[0].name]):
                    pass
        finally:
            model.denoiser.disable_cache()
    else:  # SD3 and PixArt have no enable_cache; diffusers' apply_* functions put the same hooks on them
        config = PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                 current_timestep_callback=lambda: 500)
        apply_pyramid_attention_broadcast(model.denoiser, config)
        try:
            with pytest.raises(UserError, match=r"\(PyramidAttentionBroadcast\).*remove_hook\('pyramid_attention_broadcast'"):
                with capture(model, ArraySink()):
                    pass
        finally:
            HookRegistry.check_if_exists_or_initialize(model.denoiser).remove_hook("pyramid_attention_broadcast",
                                                                                   recurse=True)
    sink = ArraySink()  # off again: capture runs
    with capture(model, sink, hooks=[_points(model)[0].name], extras=(), steps=[0]):
        model.generate(PROMPTS[:1], SEEDS[:1])
    assert sink.arrays[_points(model)[0].name].shape[:2] == (1, 1)
