import numpy as np
import pytest
import safetensors.numpy

from probes.chunks import NonFiniteError
from probes.fit import fit_probe
from probes.linear import LinearProbe, fit_logistic, fit_ridge, validation_split
from probes.resample import upsample_nearest


def planted(n=60, h=8, w=8, c=24, up=4, noise=0.1, seed=0):
    """Activations with a planted unit direction u: s = a.u; labels at image resolution (H = up * h)."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(c)
    u /= np.linalg.norm(u)
    a = (rng.standard_normal((n, h, w, c)) * rng.uniform(0.5, 3, c) + rng.uniform(-5, 5, c)).astype(np.float32)
    s = a @ u
    s = (s - s.mean()) / s.std()
    depth = upsample_nearest((s + noise * rng.standard_normal(s.shape)).astype(np.float32), h * up, w * up)
    prob = 1 / (1 + np.exp(-4 * s))
    return a, u, s, depth, prob.astype(np.float32)


def r2(pred, y):
    return 1 - ((pred - y) ** 2).mean() / y.var()


def test_ridge_recovers_planted_direction_on_heldout_images():
    a, u, s, depth, _ = planted()
    tr, te = slice(0, 45), slice(45, None)
    p = fit_ridge(a[tr], depth[tr])
    cos = abs(p.raw_weight @ u) / np.linalg.norm(p.raw_weight)
    assert cos > 0.99
    pred = upsample_nearest(p.predict(a[te]), 32, 32)
    assert r2(pred, depth[te]) > 0.97
    # the chosen alpha is the validation minimiser of the grid
    assert len(p.val_losses) == len(p.alpha_grid)
    assert p.alpha == p.alpha_grid[np.argmin(p.val_losses)]


def test_raw_and_standardised_maps_agree():
    a, *_ , depth, _ = planted(n=10)
    p = fit_ridge(a, depth)
    x = a.reshape(-1, a.shape[-1]).astype(np.float64)
    std = ((x - p.mean) / p.scale) @ p.weight + p.bias
    np.testing.assert_allclose(x @ p.raw_weight + p.raw_bias, std, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(p.decision(a).ravel(), std, rtol=1e-4, atol=1e-4)


def test_ridge_regularisation_chosen_on_validation_split():
    # few pixels, many channels, weak signal: the least-regularised fit overfits, validation must prefer more alpha
    rng = np.random.default_rng(3)
    n, c = 20, 60
    a = rng.standard_normal((n, 3, 3, c)).astype(np.float32)
    y = (0.3 * a[..., 0] + rng.standard_normal((n, 3, 3))).astype(np.float32)
    p = fit_ridge(a, y, seed=1)
    assert p.alpha > p.alpha_grid.min()
    assert p.val_losses[np.argmin(p.alpha_grid)] > p.val_losses.min()


def test_validation_split_by_image_and_seeded():
    v0 = validation_split(50, 0.2, seed=0)
    assert v0.shape == (50,) and v0.sum() == 10
    np.testing.assert_array_equal(v0, validation_split(50, 0.2, seed=0))
    assert (v0 != validation_split(50, 0.2, seed=1)).any()
    assert validation_split(2, 0.01, 0).sum() == 1
    with pytest.raises(ValueError):
        validation_split(1)


def test_streaming_equals_in_memory():
    a, *_, depth, prob = planted(n=20)
    small = dict(chunk_bytes=6 * 8 * 8 * 24 * 4)  # six images per block
    p1, p2 = fit_ridge(a, depth), fit_ridge(a, depth, **small)
    np.testing.assert_allclose(p1.raw_weight, p2.raw_weight, rtol=1e-4, atol=1e-6)
    # beyond cache_bytes the alpha path runs on a pixel sample and only the final fit streams: with one alpha both
    # routes minimise the same objective over all pixels
    one = dict(alphas=(1e-4,), tol=1e-9)
    q1 = fit_logistic(a, prob, **one)
    q2 = fit_logistic(a, prob, cache_bytes=a.size * 4 // 3, **small, **one)
    np.testing.assert_allclose(q1.raw_weight, q2.raw_weight, rtol=1e-3, atol=1e-4)
    q3 = fit_logistic(a, prob, cache_bytes=a.size * 4 // 3)
    assert np.isfinite(q3.val_losses[0]) and q3.alpha in q3.alpha_grid


def test_logistic_recovers_planted_probabilities_and_masks():
    a, u, s, _, prob = planted()
    tr, te = slice(0, 45), slice(45, None)
    p = fit_logistic(a[tr].astype(np.float16), prob[tr])  # fractional targets, float16 activations
    # targets are exact probabilities sigmoid(4 s), so the logit must be ~4 s
    z = p.decision(a[te].astype(np.float16))
    assert np.corrcoef(z.ravel(), 4 * s[te].ravel())[0, 1] > 0.99
    np.testing.assert_allclose(np.polyfit(4 * s[te].ravel(), z.ravel(), 1)[0], 1.0, atol=0.1)
    pred, truth = p.predict(a[te]) > 0.5, prob[te] > 0.5
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert dice > 0.95
    assert p.alpha == p.alpha_grid[np.nanargmin(p.val_losses)]


def test_strided_hessian_reaches_the_same_probe(monkeypatch):
    # the Hessian only steers Newton's steps; the fixed point is set by the exact gradient, so a Hessian estimated on
    # a quarter of the pixels per pass must land on the same weights and validation losses
    import probes.linear

    a, *_, prob = planted(n=30)
    one = dict(alphas=(1e-4,), tol=1e-10)
    exact, exact_path = fit_logistic(a, prob, **one), fit_logistic(a, prob)
    monkeypatch.setattr(probes.linear, "HESSIAN_ROWS", 500)  # every 4th of 1,920 pixels
    strided, strided_path = fit_logistic(a, prob, **one), fit_logistic(a, prob)
    np.testing.assert_allclose(strided.raw_weight, exact.raw_weight, rtol=0, atol=5e-4)  # float32 loss precision
    np.testing.assert_allclose(strided_path.val_losses, exact_path.val_losses, rtol=1e-3)


def test_strided_hessian_sees_every_column_of_features_that_vary_along_the_row(monkeypatch):
    """Rows are pixels in raster order: an even stride over a power-of-two width would estimate the Hessian on a few
    columns only, and Newton crawled on the position basis (132 passes instead of 31 on a toy 16x16 layer)."""
    import probes.linear
    from probes.positional import with_position_features

    a, *_, prob = planted(n=30)
    x = with_position_features(a)  # 8x8 layer: 1,920 rows; HESSIAN_ROWS 480 asks for a stride of 4
    monkeypatch.setattr(probes.linear, "HESSIAN_ROWS", 480)
    real = probes.linear._newton_pass

    def passes() -> list[int]:
        strides: list[int] = []
        monkeypatch.setattr(probes.linear, "_newton_pass", lambda *a, **k: strides.append(a[4]) or real(*a, **k))
        fit_logistic(x, prob)
        return strides

    odd = passes()
    assert set(odd) <= {1, 5} and 5 in odd  # odd: the strided rows cycle through every column
    monkeypatch.setattr(probes.linear, "_odd", lambda stride: stride)
    even = passes()
    assert 4 in even and len(odd) < 0.8 * len(even)  # 83 against 123 passes when measured


def test_logistic_rejects_out_of_range_targets():
    a, *_ = planted(n=6)
    with pytest.raises(ValueError):
        fit_logistic(a, np.full((6, 8, 8), 2.0, np.float32))


def test_nonfinite_activations_raise_with_image_index():
    a, *_, depth, prob = planted(n=8)
    a[5, 1, 2, 3] = np.nan
    for fit, y in ((fit_ridge, depth), (fit_logistic, prob)):
        with pytest.raises(NonFiniteError) as e:
            fit(a, y)
        assert e.value.images == [5]
    depth[2, 0, 0] = np.inf
    with pytest.raises(NonFiniteError):
        fit_ridge(planted(n=8)[0], depth)


def test_probe_roundtrips_through_safetensors(tmp_path):
    a, *_, depth, prob = planted(n=10)
    for p in (fit_probe(a, depth, "depth"), fit_probe(a, prob, "saliency")):
        safetensors.numpy.save_file(p.to_dict(), tmp_path / "p.safetensors")
        q = LinearProbe.from_dict(safetensors.numpy.load_file(tmp_path / "p.safetensors"))
        assert (q.kind, q.method, q.alpha) == (p.kind, p.method, p.alpha)
        np.testing.assert_array_equal(q.predict(a), p.predict(a))


def test_fit_probe_seed_is_reproducible():
    a, *_, depth, _ = planted(n=12)
    np.testing.assert_array_equal(fit_probe(a, depth, "depth", seed=4).weight,
                                  fit_probe(a, depth, "depth", seed=4).weight)
    with pytest.raises(ValueError):
        fit_probe(a, depth, "normals")


def test_ridge_on_shared_blocks_reuses_x_statistics_and_gives_the_same_probes():
    """A second ridge fit on the same StandardisedBlocks (another target, as a shuffled-label control) reuses x'x from
    the first and matches a fit on fresh blocks; the single-alpha logistic fit needs no validation split."""
    from probes.chunks import StandardisedBlocks

    rng = np.random.default_rng(0)
    acts = rng.normal(size=(12, 4, 4, 6)).astype(np.float32)
    y1, y2 = rng.normal(size=(12, 4, 4)), rng.normal(size=(12, 4, 4))
    shared = StandardisedBlocks.with_stats(acts)
    first = fit_ridge(acts, y1, blocks=shared)
    assert len(shared.memo) == 1
    second = fit_ridge(acts, y2, blocks=shared)
    assert len(shared.memo) == 1  # the same validation split: x statistics reused
    fresh = fit_ridge(acts, y2)
    np.testing.assert_allclose(second.weight, fresh.weight, rtol=1e-10)
    assert second.alpha == fresh.alpha and not np.allclose(first.weight, second.weight)
    probe = fit_logistic(acts, (y1 > 0).astype(np.float32), alphas=(1e-3,))
    assert probe.alpha == 1e-3 and np.isnan(probe.val_losses).all()
