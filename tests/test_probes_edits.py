import numpy as np
import torch

from probes.edits import closed_form_edit, optimise_edit, probe_loss, random_edit
from probes.linear import LinearProbe


def probe(kind="depth", c=16, seed=0):
    g = np.random.default_rng(seed)
    return LinearProbe(kind=kind, method="ridge", weight=g.standard_normal(c), bias=0.3,
                       mean=g.standard_normal(c), scale=g.uniform(0.5, 2, c))


def test_closed_form_edit_reads_exact_target_minimally():
    p = probe()
    a = torch.randn(2, 4, 4, 16) * 3
    target = torch.randn(2, 4, 4)
    e = closed_form_edit(a, p.raw_weight, p.raw_bias, target)
    w = torch.from_numpy(p.raw_weight).float()
    np.testing.assert_allclose((e @ w + p.raw_bias).numpy(), target.numpy(), atol=1e-4, rtol=1e-4)
    delta = e - a  # the minimal edit is parallel to w at every position
    cos = (delta @ w) / (delta.norm(dim=-1) * w.norm())
    np.testing.assert_allclose(cos.abs().numpy(), 1.0, atol=1e-4)


def test_closed_form_edit_in_standardised_units_is_minimal_there():
    p = probe()
    a = torch.randn(2, 4, 4, 16) * 3
    target = torch.randn(2, 4, 4)
    e = closed_form_edit(a, p.raw_weight, p.raw_bias, target, scale=p.scale)
    w = torch.from_numpy(p.raw_weight).float()
    np.testing.assert_allclose((e @ w + p.raw_bias).numpy(), target.numpy(), atol=1e-4, rtol=1e-4)
    dz = (e - a) / torch.from_numpy(p.scale).float()  # the edit in the probe's standardised units ...
    wz = torch.from_numpy(p.weight).float()  # ... is parallel to the standardised weight
    cos = (dz @ wz) / (dz.norm(dim=-1) * wz.norm())
    np.testing.assert_allclose(cos.abs().numpy(), 1.0, atol=1e-4)
    raw = closed_form_edit(a, p.raw_weight, p.raw_bias, target)
    assert ((raw - a) / torch.from_numpy(p.scale).float()).norm() > dz.norm()  # raw-minimal is longer there


def test_closed_form_saliency_uses_clipped_logit_and_keeps_dtype():
    p = probe("saliency")
    a = torch.randn(1, 4, 4, 16).half()
    target = torch.zeros(1, 16, 16)  # image-resolution mask: area-averaged to the layer
    target[:, :8] = 1.0
    e = closed_form_edit(a, p.raw_weight, p.raw_bias, target, kind="saliency")
    assert e.dtype == torch.float16
    z = e.float() @ torch.from_numpy(p.raw_weight).float() + p.raw_bias
    want = torch.full((1, 4, 4), float(np.log(0.02 / 0.98)))
    want[:, :2] = float(np.log(0.98 / 0.02))
    # float16 rounding of the edited activation costs a little precision
    np.testing.assert_allclose(z.numpy(), want.numpy(), atol=0.1, rtol=0.02)


def test_random_edit_has_same_norm():
    a = torch.randn(2, 3, 3, 16)
    ref = torch.randn(2, 3, 3, 16)
    for like in (ref, ref.norm(dim=-1)):
        for shared in (False, True):
            r = random_edit(a, like, seed=1, shared=shared)
            np.testing.assert_allclose((r - a).norm(dim=-1).numpy(), ref.norm(dim=-1).numpy(), atol=1e-4, rtol=1e-4)
    d = random_edit(a, ref, seed=1) - a
    assert not torch.allclose(d / d.norm(dim=-1, keepdim=True), ref / ref.norm(dim=-1, keepdim=True))
    assert torch.equal(random_edit(a, ref, seed=2), random_edit(a, ref, seed=2))


def test_optimise_edit_reduces_loss():
    for kind in ("depth", "saliency"):
        p = probe(kind)
        a = torch.randn(1, 4, 4, 16).half()
        target = (torch.rand(1, 16, 16) > 0.5).float() if kind == "saliency" else torch.randn(1, 16, 16)
        w = torch.from_numpy(p.raw_weight).float()
        before = probe_loss(a.float() @ w + p.raw_bias, target, kind)
        e = optimise_edit(a, p, target, lr=5e-2, iters=24)
        assert e.dtype == torch.float16 and e.shape == a.shape
        after = probe_loss(e.float() @ w + p.raw_bias, target, kind)
        assert after < 0.7 * before


def test_adam_first_step_is_lr_times_sign():
    from probes.adam import Adam

    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    opt = Adam([x], lr=0.1)
    (x * torch.tensor([2.0, -0.5, 0.0])).sum().backward()
    opt.step()
    np.testing.assert_allclose(x.detach().numpy(), [0.9, -1.9, 3.0], atol=1e-6)
    opt.zero_grad()
    assert x.grad is None
