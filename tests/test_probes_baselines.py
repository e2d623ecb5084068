import numpy as np

from probes.baselines import (
    PermutedImages,
    derangement,
    fit_control_probe,
    position_map,
    position_prediction,
    selectivity,
    with_position,
)
from probes.fit import fit_probe
from probes.metrics import score_depth, score_saliency
from test_probes_linear import planted


def test_derangement_has_no_fixed_points_and_is_seeded():
    for n in (2, 3, 10, 101):
        p = derangement(n, seed=n)
        assert sorted(p) == list(range(n))
        assert (p != np.arange(n)).all()
    np.testing.assert_array_equal(derangement(30, 1), derangement(30, 1))


def test_permuted_images_indexing():
    x = np.arange(5)[:, None, None] * np.ones((5, 2, 2))
    perm = np.array([4, 0, 1, 2, 3])
    v = PermutedImages(x, perm)
    assert v.shape == (5, 2, 2)
    assert v[0][0, 0] == 4
    np.testing.assert_array_equal(v[1:3][:, 0, 0], [0, 1])


def test_position_baseline_is_mean_map_and_scores_zero_r2():
    rng = np.random.default_rng(0)
    d = rng.standard_normal((7, 8, 8)).astype(np.float32) + np.linspace(-1, 1, 8)[:, None]
    m = position_map(d, images_per_chunk=3)
    np.testing.assert_allclose(m, d.mean(0), rtol=1e-5, atol=1e-6)
    pred = position_prediction(m, 7, 8, 8)
    sc = score_depth(pred, d, m, n_boot=50)
    assert abs(sc.estimates["layer/r2_beyond_position"].mean) < 1e-5


def test_shuffled_label_control_is_less_selective_than_the_task():
    a, _, _, depth, prob = planted(n=40, noise=0.5)
    tr, te = slice(0, 30), slice(30, None)
    m = position_map(depth[tr])
    task = score_depth(fit_probe(a[tr], depth[tr], "depth").predict(a[te]), depth[te], m, n_boot=50)
    ctrl = score_depth(fit_control_probe(a[tr], depth[tr], "depth", seed=0).predict(a[te]), depth[te], m, n_boot=50)
    key = "image/r2_beyond_position"
    assert task.estimates[key].mean > 0.5
    assert ctrl.estimates[key].mean < 0.1
    assert selectivity(task.estimates[key].mean, ctrl.estimates[key].mean) > 0.4
    sal = fit_control_probe(a[tr], prob[tr], "saliency", seed=0)
    s = score_saliency(sal.predict(a[te]), prob[te], n_boot=50)
    assert s.estimates["image/dice_fg"].mean < 0.8


def test_positioned_probe_measures_what_activations_add_to_position():
    """Depth = a row ramp (position, invisible to the activations) + a planted linear signal. The plain probe cannot
    see the ramp, so it looks worse than the mean map; the probe with the map as a channel scores the signal's share."""
    rng = np.random.default_rng(3)
    n, h, c = 40, 8, 6
    acts = rng.standard_normal((n, h, h, c)).astype(np.float32)
    ramp = np.linspace(-2, 2, h, dtype=np.float32)[:, None].repeat(h, 1)
    depth = ramp + acts @ rng.standard_normal(c).astype(np.float32) * 0.5 + 0.1 * rng.standard_normal((n, h, h))
    depth = depth.astype(np.float32)
    tr, te = slice(0, 30), slice(30, n)
    m = position_map(depth[tr])
    aug = with_position(acts, m)
    assert aug.shape == (n, h, h, c + 1) and np.allclose(aug[..., -1], m, atol=1e-6)
    plain = fit_probe(acts[tr], depth[tr], "depth").predict(acts[te])
    positioned = fit_probe(aug[tr], depth[tr], "depth").predict(aug[te])
    r2_plain = score_depth(plain, depth[te], m, n_boot=50).estimates["layer/r2_beyond_position"].mean
    r2 = score_depth(plain, depth[te], m, n_boot=50, positioned=positioned).estimates["layer/r2_beyond_position"].mean
    assert r2_plain < 0 < 0.9 < r2
    noise = rng.standard_normal(acts.shape).astype(np.float32)  # activations that know nothing: about zero
    aug_noise = with_position(noise, m)
    useless = fit_probe(aug_noise[tr], depth[tr], "depth").predict(aug_noise[te])
    r2_noise = score_depth(plain, depth[te], m, n_boot=50, positioned=useless).estimates["layer/r2_beyond_position"]
    assert abs(r2_noise.mean) < 0.1
