"""Vector probes (normals per pixel, light per image): planted directions are recovered, noise and shuffled labels
score no better than the position-only baselines, the baselines score well where position explains the target, and
the angular metrics are exact on hand-made cases."""

import numpy as np
import pytest
import safetensors.numpy

from probes.angular import angular_error, score_directions, score_normals, weighted_angular_metrics
from probes.baselines_vectors import (
    direction_position_prediction,
    fit_direction_control,
    fit_normal_control,
    mean_direction,
    mean_normal_map,
    normal_position_prediction,
)
from probes.chunks import NonFiniteError
from probes.linear import fit_ridge
from probes.positional import position_features
from probes.resample import upsample_nearest
from probes.vectors import (
    VectorProbe,
    fit_direction_ridge,
    fit_normal_ridge,
    normal_targets,
    pool_activations,
    unit,
)

TRAIN = slice(0, 45)
TEST = slice(45, None)


def _up(field: np.ndarray, up: int) -> np.ndarray:
    """`(image, h, w, 3)` -> `(image, h * up, w * up, 3)` by nearest neighbour."""
    n, h, w, _ = field.shape
    return upsample_nearest(field.transpose(0, 3, 1, 2), h * up, w * up).transpose(0, 2, 3, 1)


def planted_normals(n=60, h=8, w=8, c=20, up=2, noise=0.05, sky=0.2, seed=0):
    """Activations that linearly encode a random normal field: a = n M + offset + noise (3 of c channels' worth of
    signal spread over all channels). Normals at image resolution (H = up h) with a random sky mask (normal 0)."""
    rng = np.random.default_rng(seed)
    field = unit(rng.standard_normal((n, h, w, 3)) + [0.0, 0.0, 1.5])  # (image, h, w, 3) upper hemisphere
    mixing = rng.standard_normal((3, c)) * rng.uniform(0.5, 3, c)
    acts = field @ mixing + rng.uniform(-5, 5, c) + noise * rng.standard_normal((n, h, w, c))
    normals = _up(field, up).astype(np.float32)
    valid = rng.random(normals.shape[:3]) > sky
    normals[~valid] = 0.0
    return acts.astype(np.float32), normals, valid


def planted_lights(n=200, h=8, w=8, c=24, noise=1.0, seed=0):
    """Activations whose every pixel carries the image's light direction linearly, under per-pixel noise."""
    rng = np.random.default_rng(seed)
    light = unit(rng.standard_normal((n, 3)) + [0.0, 1.0, 0.0])
    mixing = rng.standard_normal((3, c))
    acts = (light @ mixing)[:, None, None] + rng.uniform(-3, 3, c) + noise * rng.standard_normal((n, h, w, c))
    return acts.astype(np.float32), light.astype(np.float32)


def _score(pred, normals, valid, key="image/angular_mean"):
    return score_normals(pred, normals, valid, n_boot=200).estimates[key]


# Metrics.


def test_angular_error_on_known_pairs():
    p = np.array([[1.0, 0, 0], [1, 0, 0], [2, 2, 0], [0, 0, 0], [1, 0, 0]])
    t = np.array([[0.0, 1, 0], [1, 1, 0], [1, 0, 0], [1, 0, 0], [-1, 0, 0]])
    np.testing.assert_allclose(angular_error(p, t), [90, 45, 45, 90, 180], atol=1e-9)


def test_weighted_metrics_by_hand():
    e = np.array([[5.0, 20.0, 25.0, 40.0], [1.0, 2.0, 3.0, 4.0], [7.0, 8.0, 9.0, 10.0]])
    q = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    d = weighted_angular_metrics(e, q)
    np.testing.assert_allclose(d["angular_mean"][:2], [22.5, (2 + 12) / 4])
    np.testing.assert_allclose(d["angular_median"][:2], [20.0, 4.0])  # weight 3 of 4 sits on 4 degrees
    np.testing.assert_allclose(d["within_11.25"][:2], [0.25, 1.0])
    np.testing.assert_allclose(d["within_22.5"][:2], [0.5, 1.0])
    np.testing.assert_allclose(d["within_30"][:2], [0.75, 1.0])
    assert all(np.isnan(d[k][2]) for k in ("angular_mean", "angular_median", "within_30"))
    assert d["no_surface"].tolist() == [False, False, True]


def test_score_normals_counts_valid_pixels_only_and_agrees_across_resolutions():
    rng = np.random.default_rng(1)
    field = unit(rng.standard_normal((6, 4, 4, 3)) + [0, 0, 2.0]).astype(np.float32)
    normals, valid = _up(field, 4), np.ones((6, 16, 16), bool)
    pred = unit(field + 0.3 * rng.standard_normal(field.shape)).astype(np.float32)
    sc = score_normals(pred, normals, valid, n_boot=100)
    for k in ("angular_mean", "angular_median", "within_11.25", "within_30"):  # block-constant truth: equal
        np.testing.assert_allclose(sc.per_image[f"image/{k}"], sc.per_image[f"layer/{k}"], atol=1e-9)
    per_pixel = angular_error(_up(pred, 4), normals).reshape(6, -1).mean(1)
    np.testing.assert_allclose(sc.per_image["image/angular_mean"], per_pixel, atol=1e-9)
    est = sc.estimates["image/angular_mean"]
    assert est.lo <= est.mean <= est.hi and est.n == 6
    # a pixel without a normal never counts: turn half the frame to sky and break the prediction only there
    valid[:, :, :8] = False
    normals_sky = np.where(valid[..., None], normals, 0.0)
    broken = pred.copy()
    broken[:, :, :2] = -broken[:, :, :2]  # layer columns 0-1 = image columns 0-7
    a = score_normals(pred, normals_sky, valid, n_boot=50).per_image["image/angular_mean"]
    b = score_normals(broken, normals_sky, valid, n_boot=50).per_image["image/angular_mean"]
    np.testing.assert_allclose(a, b, atol=1e-9)
    # an image without any surface is undefined, excluded and counted
    valid[0] = False
    normals_sky[0] = 0
    sc = score_normals(pred, normals_sky, valid, n_boot=50)
    assert sc.flags["n_no_surface"] == 1 and sc.estimates["image/angular_mean"].n_undefined == 1
    assert np.isnan(sc.per_image["layer/within_22.5"][0])


def test_bad_normals_and_predictions_raise():
    pred = np.zeros((2, 4, 4, 3), np.float32) + [0, 0, 1]
    normals, valid = np.zeros((2, 8, 8, 3), np.float32) + [0, 0, 1], np.ones((2, 8, 8), bool)
    normals[1, 3, 3] = [0, 0, 2]  # not unit on a valid pixel
    with pytest.raises(ValueError, match=r"not unit vectors on valid pixels of images \[1\]"):
        score_normals(pred, normals, valid)
    valid[1, 3, 3] = False  # ...is fine where the pixel has no normal
    score_normals(pred, normals, valid, n_boot=10)
    normals[0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        score_normals(pred, normals, valid)
    normals[0, 0, 0] = [0, 0, 1]
    with pytest.raises(ValueError, match="mask"):
        fit_normal_ridge(np.zeros((2, 4, 4, 5), np.float32), normals, valid[:, :4])
    nan_pred = pred.copy()
    nan_pred[1, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        score_normals(nan_pred, normals, valid)
    flagged = score_normals(nan_pred, normals, valid, on_nonfinite="flag", n_boot=10)
    assert flagged.flags["n_nonfinite"] == 1 and np.isnan(flagged.per_image["image/angular_mean"][1])
    with pytest.raises(ValueError, match="directions"):
        score_directions(np.ones((3, 3)), np.ones((3, 3)))


def test_score_directions():
    t = np.array([[0, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]], np.float32)
    p = np.array([[0, 1, 0], [1, 1, 0], [1, 0.1, 0], [0, 0, -1]], np.float32)
    sc = score_directions(p, t, n_boot=100)
    expected = [0, 45, np.degrees(np.arctan(0.1)), 180]
    np.testing.assert_allclose(sc.per_image["angular_error"], expected, atol=1e-4)
    assert sc.estimates["within_11.25"].mean == pytest.approx(0.5)
    assert sc.estimates["within_30"].mean == pytest.approx(0.5)
    assert sc.estimates["angular_error"].mean == pytest.approx(np.mean(expected), abs=1e-4)


# Per-pixel normal probes.


def test_multi_output_ridge_equals_one_scalar_ridge_per_component():
    acts, normals, valid = planted_normals(n=20, up=1, sky=0.0, noise=1.0)  # well conditioned: float32 sums agree
    probe = fit_normal_ridge(acts, normals, valid, alphas=(1e-2,))
    for k in range(3):
        scalar = fit_ridge(acts, normals[..., k], alphas=(1e-2,))
        np.testing.assert_allclose(probe.weight[:, k], scalar.weight, atol=1e-5)  # float32 GEMMs differ in order
        assert probe.bias[k] == pytest.approx(scalar.bias, abs=1e-5)
    # several alphas: the choice minimises the validation error summed over the three outputs
    probe = fit_normal_ridge(acts, normals, valid)
    assert probe.alpha == probe.alpha_grid[np.argmin(probe.val_losses)]


def test_planted_normals_are_recovered_and_beat_the_baselines():
    acts, normals, valid = planted_normals()
    probe = fit_normal_ridge(acts[TRAIN], normals[TRAIN], valid[TRAIN])
    pred = probe.predict(acts[TEST])
    assert pred.shape == (15, 8, 8, 3)
    np.testing.assert_allclose(np.linalg.norm(pred, axis=-1), 1, atol=1e-5)  # unit-normalised
    sc = score_normals(pred, normals[TEST], valid[TEST], n_boot=200)
    assert sc.estimates["image/angular_mean"].hi < 1.5  # 0.42 degrees [0.41, 0.44]
    assert sc.estimates["image/within_11.25"].mean > 0.97
    # the position-only map and the shuffled-label control are far worse
    m = mean_normal_map(normals[TRAIN], valid[TRAIN])
    np.testing.assert_allclose(np.linalg.norm(m, axis=-1), 1, atol=1e-6)
    base = _score(normal_position_prediction(m, 15, 8, 8), normals[TEST], valid[TEST])
    control = fit_normal_control(acts[TRAIN], normals[TRAIN], valid[TRAIN], seed=0)
    ctrl = _score(control.predict(acts[TEST]), normals[TEST], valid[TEST])
    assert base.lo > 20 and ctrl.lo > 20
    # held-out predictions come from the fit without the validation images
    held = probe.predict(acts[TRAIN], held_out=True)
    assert held.shape == (45, 8, 8, 3) and not np.allclose(held, probe.predict(acts[TRAIN]))


def test_sky_pixels_never_enter_the_fit():
    acts, normals, valid = planted_normals(sky=0.4)
    garbage = normals.copy()
    garbage[~valid] = [1.0, 0.0, 0.0]  # unit, so only the mask keeps them out
    a = fit_normal_ridge(acts[TRAIN], normals[TRAIN], valid[TRAIN])
    b = fit_normal_ridge(acts[TRAIN], garbage[TRAIN], valid[TRAIN])
    np.testing.assert_allclose(a.weight, b.weight, rtol=1e-6, atol=1e-9)
    # layer targets: the mean of the cell's valid normals, weighted by its valid share
    t, q = normal_targets(normals, valid, 8, 8)
    cell = normals[0, :2, :2][valid[0, :2, :2]]
    np.testing.assert_allclose(q[0, 0, 0], valid[0, :2, :2].mean())
    if len(cell):
        np.testing.assert_allclose(t[0, 0, 0], unit(cell.sum(0)), atol=1e-6)


def test_noise_activations_score_no_better_than_the_mean_map():
    """Normals that position explains (a fixed field plus per-image jitter): the mean map scores well, a probe on
    activations that know nothing cannot beat it, and a probe on the position basis alone can match it."""
    rng = np.random.default_rng(4)
    n, h = 60, 8
    v, u = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(h) + 0.5) / h, indexing="ij")
    field = unit(np.stack([2 * (u - 0.5), 2 * (0.5 - v), np.ones_like(u)], -1))  # (h, w, 3): facing out of the frame
    jitter = 0.1 * rng.standard_normal((n, h, h, 3))
    normals = _up(unit(field + jitter), 2).astype(np.float32)
    valid = np.ones(normals.shape[:3], bool)
    m = mean_normal_map(normals[TRAIN], valid[TRAIN])
    base = _score(normal_position_prediction(m, 15, h, h), normals[TEST], valid[TEST])
    assert base.hi < 8.0  # position alone explains the target: the baseline must be hard to beat
    noise = rng.standard_normal((n, h, h, 16)).astype(np.float32)
    probe = _score(fit_normal_ridge(noise[TRAIN], normals[TRAIN], valid[TRAIN]).predict(noise[TEST]),
                   normals[TEST], valid[TEST])
    assert probe.mean > base.mean + 5  # the global mean normal is not the map
    pos = position_features(n, h, h)
    positional = _score(fit_normal_ridge(pos[TRAIN], normals[TRAIN], valid[TRAIN]).predict(pos[TEST]),
                        normals[TEST], valid[TEST])
    assert positional.mean < base.mean + 1.5
    # noise activations on the random field of the planted test, where position explains nothing
    acts, normals, valid = planted_normals(seed=2)
    noise = rng.standard_normal(acts.shape).astype(np.float32)
    m = mean_normal_map(normals[TRAIN], valid[TRAIN])
    base = _score(normal_position_prediction(m, 15, 8, 8), normals[TEST], valid[TEST])
    probe = _score(fit_normal_ridge(noise[TRAIN], normals[TRAIN], valid[TRAIN]).predict(noise[TEST]),
                   normals[TEST], valid[TEST])
    assert probe.mean > base.mean - 1.0


def test_vector_probe_round_trips_through_safetensors(tmp_path):
    acts, normals, valid = planted_normals(n=20)
    probe = fit_normal_ridge(acts, normals, valid)
    path = tmp_path / "p.safetensors"
    safetensors.numpy.save_file(probe.to_dict(), str(path))
    back = VectorProbe.from_dict(safetensors.numpy.load_file(str(path)))
    np.testing.assert_array_equal(back.predict(acts), probe.predict(acts))
    np.testing.assert_array_equal(back.predict(acts, held_out=True), probe.predict(acts, held_out=True))
    raw = acts.astype(np.float64) @ probe.raw_weight + probe.raw_bias
    np.testing.assert_allclose(probe.decision(acts), raw, rtol=1e-4, atol=1e-4)


# Per-image light probes.


def test_pool_activations_means_over_cells():
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((3, 6, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(pool_activations(acts), acts.mean((1, 2)), atol=1e-6)
    two = pool_activations(acts, grid=2, chunk_bytes=acts[0].nbytes)  # one image per block
    assert two.shape == (3, 4 * 5)
    np.testing.assert_allclose(two.reshape(3, 2, 2, 5)[:, 1, 0], acts[:, 3:, :2].mean((1, 2)), atol=1e-6)
    with pytest.raises(ValueError, match="grid"):
        pool_activations(acts, grid=5)


def test_planted_light_is_recovered_and_beats_the_baselines():
    acts, light = planted_lights()
    tr, te = slice(0, 150), slice(150, None)
    feats = pool_activations(acts)
    probe = fit_direction_ridge(feats[tr], light[tr])
    pred = probe.predict(feats[te])
    np.testing.assert_allclose(np.linalg.norm(pred, axis=-1), 1, atol=1e-5)
    sc = score_directions(pred, light[te], n_boot=200)
    assert sc.estimates["angular_error"].hi < 5.0 and sc.estimates["within_11.25"].mean > 0.95
    base = score_directions(direction_position_prediction(mean_direction(light[tr]), 50), light[te], n_boot=200)
    ctrl = score_directions(fit_direction_control(feats[tr], light[tr]).predict(feats[te]), light[te], n_boot=200)
    assert base.estimates["angular_error"].lo > 25 and ctrl.estimates["angular_error"].lo > 25
    noise = np.random.default_rng(9).standard_normal(feats.shape).astype(np.float32)
    blind = score_directions(fit_direction_ridge(noise[tr], light[tr]).predict(noise[te]), light[te], n_boot=200)
    assert blind.estimates["angular_error"].mean > base.estimates["angular_error"].mean - 2.0


def test_mean_light_scores_well_where_lights_agree():
    rng = np.random.default_rng(5)
    light = unit(np.array([0.3, 0.9, 0.2]) + 0.05 * rng.standard_normal((80, 3))).astype(np.float32)
    base = score_directions(direction_position_prediction(mean_direction(light[:60]), 20), light[60:], n_boot=200)
    assert base.estimates["angular_error"].hi < 6.0 and base.estimates["within_11.25"].mean == 1.0
    noise = rng.standard_normal((80, 12)).astype(np.float32)
    blind = score_directions(fit_direction_ridge(noise[:60], light[:60]).predict(noise[60:]), light[60:], n_boot=200)
    assert blind.estimates["angular_error"].mean > base.estimates["angular_error"].mean - 0.5
    with pytest.raises(ValueError, match="not unit"):
        fit_direction_ridge(noise[:60], 2 * light[:60])


def test_streamed_fit_equals_the_cached_fit():
    """Beyond cache_bytes the activations stream a block at a time (float16 here): the same probe."""
    acts, normals, valid = planted_normals(n=24, noise=1.0)
    cached = fit_normal_ridge(acts, normals, valid)
    streamed = fit_normal_ridge(acts.astype(np.float16).astype(np.float32), normals, valid,
                                chunk_bytes=acts[:5].nbytes, cache_bytes=0)
    half = fit_normal_ridge(acts.astype(np.float16), normals, valid, chunk_bytes=acts[:5].nbytes, cache_bytes=0)
    np.testing.assert_allclose(streamed.weight, half.weight, rtol=1e-6, atol=1e-7)
    assert cached.alpha == streamed.alpha
    np.testing.assert_allclose(cached.weight, streamed.weight, atol=2e-3)  # float16 rounding of the inputs only
