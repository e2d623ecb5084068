"""Activation storage dtypes: what goes in comes back through one function, float8 within its rounding, at half the
bytes, and the grid reads every dtype alike."""

import numpy as np
import pytest
import torch

from ldm.errors import UserError
from synthetic_run import build, fake_labelers
from workflows.stages.grid import plan_groups, prepare_grid_data, run_grid
from workflows.stages.labels import label_shards
from workflows.store import open_store, read_acts
from workflows.store.act_dtype import check_act_dtype, decode, encode


def acts(seed: int = 0) -> np.ndarray:
    """(batch, h, w, c) with channels of very different sizes, as self-attention outputs have."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(3, 4, 4, 6)) * np.array([0.01, 0.1, 1, 10, 100, 0])).astype(np.float32)


def test_each_dtype_round_trips_within_its_rounding():
    x = acts()
    f16, scale = encode(x, "float16")
    assert scale is None and np.array_equal(decode(f16.numpy(), "float16"), x.astype(np.float16))
    bits, _ = encode(x, "bfloat16")
    assert bits.dtype == torch.int16
    np.testing.assert_array_equal(decode(bits.numpy(), "bfloat16"), torch.from_numpy(x).bfloat16().float().numpy())
    codes, scale = encode(x, "float8_e4m3")
    assert codes.dtype == torch.uint8 and tuple(scale.shape) == (3, 6)
    back = decode(codes.numpy(), "float8_e4m3", scale.numpy())
    absmax = np.abs(x).max(axis=(1, 2), keepdims=True)
    # e4m3 keeps 3 mantissa bits: within 1/16 of each value for normal numbers, and each channel's own scale keeps
    # a 0.01-sized channel as exact as a 100-sized one
    assert (np.abs(back - x) <= np.abs(x) / 16 + absmax / 2**9 + 1e-12).all()
    assert np.array_equal(back[..., 5], x[..., 5])  # an all-zero channel stays zero
    assert np.allclose(np.abs(back).max(axis=(1, 2)), np.abs(x).max(axis=(1, 2)), rtol=1e-6)  # the max is exact


@pytest.mark.parametrize("act_dtype", ["bfloat16", "float8_e4m3"])
def test_stored_activations_read_back_through_read_acts_and_probe_alike(tmp_path, act_dtype):
    plain, small = str(tmp_path / "float16"), str(tmp_path / act_dtype)
    for output, dtype in ((plain, "float16"), (small, act_dtype)):
        build(output, act_dtype=dtype)
        for target, labeler in fake_labelers().items():
            label_shards(output, target, labeler)
    images = np.arange(24)
    want = read_acts(open_store(plain), "good", images, 1).astype(np.float32)
    got = read_acts(open_store(small), "good", images, 1)
    assert got.dtype == np.float32
    # the writer encodes the float32 input, the float16 run stored it rounded: both within the coarser rounding
    absmax = np.abs(want).max(axis=(1, 2), keepdims=True)
    tolerance = np.abs(want) / (2**8 if act_dtype == "bfloat16" else 16) + absmax / 2**9 + np.abs(want) / 2**10
    assert (np.abs(got - want) <= tolerance).all() and not np.array_equal(got, want)
    root = open_store(small)
    assert root["acts/good/act"].nbytes == open_store(plain)["acts/good/act"].nbytes // (1 + (act_dtype != "bfloat16"))
    assert ("acts/good/scale" in root) == (act_dtype == "float8_e4m3")
    rows = {}
    for output in (plain, small):
        table = run_grid(output, plan_groups(output, hooks=["good"], steps=[1]), prepare_grid_data(output, n_boot=50))
        rows[output] = {(r["variant"], r["target"]): r for r in table.to_pylist() if r["variant"] == "ldm"}
    for target, metric in (("saliency", "dice_tuned"), ("depth", "r2_pos")):
        assert rows[small][("ldm", target)][metric] == pytest.approx(rows[plain][("ldm", target)][metric], abs=0.01)


def test_an_act_dtype_torch_cannot_write_is_refused(monkeypatch):
    check_act_dtype("float8_e4m3")
    monkeypatch.delattr(torch, "float8_e4m3fn")
    with pytest.raises(UserError, match=r"float8_e4m3 needs torch's float8_e4m3fn.*use act_dtype float16 or bfloat16"):
        check_act_dtype("float8_e4m3")
    with pytest.raises(UserError, match="unknown act_dtype 'int4'; choose one of float16, bfloat16, float8_e4m3"):
        check_act_dtype("int4")


def test_a_toy_generation_stores_float8_at_half_the_bytes_close_to_float16(tmp_path):
    from toy_runs import toy_config
    from workflows.cli import main

    outputs = {}
    for dtype in ("float16", "float8_e4m3"):
        config, outputs[dtype] = toy_config(tmp_path / dtype, act_dtype=dtype, hooks=["mid_0", "up_3_2"])
        assert main(["generate", config, "--no-ray"]) == 0
    half, full = (open_store(str(outputs[d])) for d in ("float8_e4m3", "float16"))
    for hook in ("mid_0", "up_3_2"):
        a = read_acts(full, hook, np.arange(4), 0).astype(np.float32)
        b = read_acts(half, hook, np.arange(4), 0)
        absmax = np.abs(a).max(axis=(1, 2), keepdims=True)
        assert (np.abs(b - a) <= np.abs(a) / 16 + absmax / 2**9 + np.abs(a) / 2**10 + 1e-6).all(), hook
        assert half[f"acts/{hook}/act"].dtype == np.uint8
