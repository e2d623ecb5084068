import numpy as np
import pytest

from probes.chunks import NonFiniteError
from probes.metrics import DepthScaler, bootstrap_ci, depth_metrics, dice_iou, score_depth, score_saliency


def test_dice_iou_of_known_masks():
    truth = np.zeros((3, 4, 4), bool)
    pred = np.zeros((3, 4, 4), bool)
    truth[0, 0, :2] = True  # 2 pixels
    pred[0, 0, 1:3] = True  # 2 pixels, 1 shared
    pred[2, 3, 3] = True  # image 2: empty truth, one false positive; image 1: both empty
    d = dice_iou(pred, truth)
    np.testing.assert_allclose(d["dice_fg"], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(d["iou"], [1 / 3, 1.0, 0.0])
    np.testing.assert_allclose(d["dice_bg"], [2 * 13 / 28, 1.0, 2 * 15 / 31])
    np.testing.assert_array_equal(d["empty_truth"], [False, True, True])


def test_depth_metrics_of_known_arrays():
    t = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    mono = np.exp(t / 4)  # monotone, not linear
    d = depth_metrics(mono, t, np.zeros((4, 4)))
    assert d["spearman"][0] == pytest.approx(1.0)
    assert 0.8 < d["pearson"][0] < 0.99
    off = depth_metrics(t + 2, t, np.zeros((4, 4)))
    assert off["rmse"][0] == pytest.approx(2.0)
    assert off["pearson"][0] == pytest.approx(1.0)
    neg = depth_metrics(-t, t, np.zeros((4, 4)))
    assert neg["spearman"][0] == pytest.approx(-1.0)


def test_r2_beyond_position_is_zero_for_mean_map_and_one_for_truth():
    rng = np.random.default_rng(0)
    m = rng.standard_normal((8, 8))
    t = m + rng.standard_normal((5, 8, 8))
    assert np.allclose(depth_metrics(np.broadcast_to(m, t.shape), t, m)["r2_beyond_position"], 0.0)
    assert np.allclose(depth_metrics(t, t, m)["r2_beyond_position"], 1.0)
    half = depth_metrics(m + 0.5 * (t - m), t, m)["r2_beyond_position"]
    assert np.allclose(half, 0.75)  # residual (t-m)/2 leaves a quarter of the sum of squares
    assert np.isnan(depth_metrics(t, np.broadcast_to(m, t.shape), m)["r2_beyond_position"]).all()


def test_constant_depth_is_undefined_and_counted():
    t = np.random.default_rng(1).standard_normal((4, 8, 8)).astype(np.float32)
    t[1] = 0.3
    pred = t + 0.1
    sc = score_depth(pred, t, np.zeros((8, 8)), resolutions=("image",), n_boot=200)
    assert np.isnan(sc.per_image["image/spearman"][1])
    assert sc.flags["n_constant_depth"] == 1
    e = sc.estimates["image/spearman"]
    assert (e.n, e.n_undefined) == (3, 1)
    assert np.isfinite(e.mean)


def test_bootstrap_ci_contains_mean_and_shrinks_with_n():
    rng = np.random.default_rng(2)
    small = bootstrap_ci(rng.normal(1, 1, 20), seed=0)
    big = bootstrap_ci(rng.normal(1, 1, 2000), seed=0)
    for e in (small, big):
        assert e.lo < e.mean < e.hi
    assert (big.hi - big.lo) < 0.4 * (small.hi - small.lo)
    assert bootstrap_ci([1.0, 2.0, 3.0], seed=5) == bootstrap_ci([1.0, 2.0, 3.0], seed=5)
    with_nan = bootstrap_ci([1.0, np.nan, 3.0])
    assert (with_nan.mean, with_nan.n, with_nan.n_undefined) == (2.0, 2, 1)
    assert np.isnan(bootstrap_ci([np.nan]).mean)


def test_score_saliency_both_resolutions():
    masks = np.zeros((2, 16, 16), np.float32)
    masks[:, :8, :8] = 1  # the top-left quarter, aligned with the 4x4 layer grid
    prob = np.zeros((2, 4, 4), np.float32)
    prob[:, :2, :2] = 0.9
    sc = score_saliency(prob, masks, n_boot=100)
    for res in ("image", "layer"):
        assert sc.estimates[f"{res}/dice_fg"].mean == pytest.approx(1.0)
        assert sc.estimates[f"{res}/iou"].mean == pytest.approx(1.0)
    prob[1, 0, 0] = 0.1  # drop a quarter of image 1's foreground
    sc = score_saliency(prob, masks, n_boot=100)
    assert sc.per_image["image/dice_fg"][1] == pytest.approx(2 * 48 / (48 + 64))
    assert sc.flags == {"n_nonfinite": 0, "n_empty_mask": 0, "n_degenerate_mask": 0}
    assert sc.per_image["image/auroc"][1] == pytest.approx(1.0)  # 0.9 > 0.1 = 0 still ranks every fg pixel first


def test_nonfinite_predictions_raise_or_are_flagged():
    masks = np.ones((3, 8, 8), np.float32)
    prob = np.full((3, 4, 4), 0.9, np.float32)
    prob[1, 2, 2] = np.nan
    with pytest.raises(NonFiniteError) as e:
        score_saliency(prob, masks)
    assert e.value.images == [1]
    sc = score_saliency(prob, masks, on_nonfinite="flag", n_boot=50)
    assert sc.flags["n_nonfinite"] == 1
    assert sc.estimates["image/dice_fg"].n == 2 and sc.estimates["image/dice_fg"].n_undefined == 1
    depth = np.random.default_rng(0).standard_normal((3, 8, 8)).astype(np.float32)
    sd = score_depth(prob, depth, np.zeros((8, 8)), on_nonfinite="flag", n_boot=50)
    assert sd.flags["n_nonfinite"] == 1 and np.isnan(sd.per_image["layer/rmse"][1])


def test_depth_scaler_uses_given_split():
    d = np.random.default_rng(0).normal(15.7, 9.3, (6, 8, 8))
    sc = DepthScaler.fit(d, images_per_chunk=4)
    assert sc.mean == pytest.approx(d.mean()) and sc.std == pytest.approx(d.std())
    z = sc.transform(d)
    assert abs(z.mean()) < 1e-5 and z.std() == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(sc.inverse(z), d, rtol=1e-5)


def test_r2_beyond_position_scores_the_positioned_probe_when_given():
    """A depth probe that misses position (predicts 0) and a positioned probe that finds map + deviation: R2 is the
    positioned probe's, while RMSE/Spearman stay the plain prediction's."""
    rng = np.random.default_rng(2)
    m = np.linspace(-1, 1, 8)[:, None].repeat(8, 1).astype(np.float32)  # a "ground plane" ramp
    dev = rng.standard_normal((6, 8, 8)).astype(np.float32)
    t = m + dev
    plain = score_depth(np.zeros_like(t), t, m, resolutions=("image",), n_boot=50)
    assert plain.estimates["image/r2_beyond_position"].mean < -0.1  # worse than the free mean map
    good = score_depth(np.zeros_like(t), t, m, resolutions=("image",), n_boot=50, positioned=t)
    assert good.estimates["image/r2_beyond_position"].mean == pytest.approx(1.0)
    assert good.estimates["image/rmse"].mean == pytest.approx(plain.estimates["image/rmse"].mean)
    none = score_depth(np.zeros_like(t), t, m, resolutions=("image",), n_boot=50,
                       positioned=np.broadcast_to(m, t.shape))
    assert none.estimates["image/r2_beyond_position"].mean == pytest.approx(0.0, abs=1e-6)
    bad = t.copy()
    bad[2, 0, 0] = np.nan
    flagged = score_depth(t, t, m, resolutions=("image",), n_boot=50, positioned=bad, on_nonfinite="flag")
    assert flagged.flags["n_nonfinite"] == 1 and np.isnan(flagged.per_image["image/rmse"][2])


def test_positioned_probe_that_only_knows_position_scores_zero_at_both_resolutions():
    rng = np.random.default_rng(4)
    m = rng.standard_normal((16, 16)).astype(np.float32)  # a mean map with detail finer than the 4x4 layer
    t = (m + rng.standard_normal((5, 16, 16))).astype(np.float32)
    layer_map = m.reshape(4, 4, 4, 4).mean((1, 3))
    sc = score_depth(np.zeros((5, 4, 4), np.float32), t, m, n_boot=20,
                     positioned=np.broadcast_to(layer_map, (5, 4, 4)))
    assert sc.estimates["image/r2_beyond_position"].mean == pytest.approx(0.0, abs=1e-5)
    assert sc.estimates["layer/r2_beyond_position"].mean == pytest.approx(0.0, abs=1e-5)


def test_depth_scores_without_ranks_skip_only_spearman():
    rng = np.random.default_rng(5)
    t = rng.standard_normal((4, 8, 8)).astype(np.float32)
    pred = (t + 0.3 * rng.standard_normal((4, 8, 8))).astype(np.float32)
    full = score_depth(pred, t, np.zeros((8, 8)), n_boot=20)
    fast = score_depth(pred, t, np.zeros((8, 8)), n_boot=20, ranks=False)
    assert np.isnan(fast.estimates["image/spearman"].mean) and full.estimates["image/spearman"].mean > 0.8
    for k in ("rmse", "pearson", "r2_beyond_position"):
        assert fast.estimates[f"image/{k}"].mean == pytest.approx(full.estimates[f"image/{k}"].mean)


@pytest.mark.parametrize("size", [16, 10])  # an integer upsampling factor (ranks from the layer) and not
def test_spearman_at_image_resolution_matches_scipy_and_shared_truth_ranks(size):
    from scipy.stats import spearmanr

    from probes.metrics import depth_truth_ranks
    from probes.resample import upsample_nearest

    rng = np.random.default_rng(0)
    pred = rng.integers(0, 5, (6, 4, 4)).astype(np.float32)  # ties within and across upsampled blocks
    depth = rng.normal(size=(6, size, size)).astype(np.float32)
    sc = score_depth(pred, depth, np.zeros((size, size)), n_boot=20, images_per_chunk=4)
    up = upsample_nearest(pred, size, size)
    expected = [spearmanr(up[i].ravel(), depth[i].ravel())[0] for i in range(6)]
    assert np.allclose(sc.per_image["image/spearman"], expected)
    shared = score_depth(pred, depth, np.zeros((size, size)), n_boot=20, images_per_chunk=4,
                         truth_ranks=depth_truth_ranks(depth, 4, 4))
    for key in ("image/spearman", "layer/spearman"):
        assert np.allclose(shared.per_image[key], sc.per_image[key])


def test_bootstrap_many_matches_one_metric_at_a_time():
    from probes.metrics import bootstrap_many

    rng = np.random.default_rng(2)
    values = {"a": rng.normal(size=30), "b": np.r_[rng.normal(size=28), np.nan, np.nan], "c": rng.random(30),
              "none": np.full(3, np.nan)}
    together = bootstrap_many(values, n_boot=500, seed=4)
    assert list(together) == list(values)
    for key, v in values.items():
        alone = bootstrap_many({key: v}, n_boot=500, seed=4)[key]
        assert together[key].n == alone.n and together[key].n_undefined == alone.n_undefined
        assert np.allclose([together[key].lo, together[key].hi], [alone.lo, alone.hi], equal_nan=True)
    assert together["b"].n_undefined == 2 and together["a"].lo < together["a"].mean < together["a"].hi
    b = values["b"][:28]  # the plain percentile bootstrap, resampling with this seed's draws
    means = b[np.random.default_rng(4).integers(0, 28, size=(500, 28))].mean(1)
    assert np.allclose([together["b"].lo, together["b"].hi], np.percentile(means, [2.5, 97.5]))


def test_block_sums_equal_the_image_resolution_metrics():
    """upsampled_saliency_metrics / upsampled_depth_metrics against the metrics of nearest-upsampled arrays."""
    from scipy.stats import rankdata

    from probes.blocks import block_truth, upsampled_depth_metrics, upsampled_saliency_metrics
    from probes.metrics import saliency_metrics
    from probes.resample import downsample_area, upsample_nearest

    rng = np.random.default_rng(0)
    n, h, w, H, W = 5, 4, 2, 16, 8
    masks = (rng.random((n, H, W)) < 0.3).astype(np.float32)
    masks[1] = 0  # an empty mask ...
    prob = rng.random((n, h, w))
    prob[1] = 0  # ... predicted empty: Dice 1
    prob[2] = 1  # everything foreground: background Dice 0
    want = dice_iou(upsample_nearest(prob, H, W) > 0.5, masks > 0.5)
    got = upsampled_saliency_metrics(prob, block_truth(masks, h, w))
    for k in ("dice_fg", "dice_bg", "iou"):
        np.testing.assert_allclose(got[k], want[k], atol=1e-12)
    assert got["dice_fg"][1] == 1.0
    # threshold-free and tuned-threshold metrics from block sums (each layer pixel weighted by its block's counts)
    prob[3] = np.round(prob[3], 1)  # ties within an image
    want = saliency_metrics(upsample_nearest(prob, H, W), masks, tuned=0.3)
    got = upsampled_saliency_metrics(prob, block_truth(masks, h, w), tuned=0.3)
    for k in ("auroc", "ap", "dice_tuned", "degenerate"):
        np.testing.assert_allclose(got[k], want[k], atol=1e-12, err_msg=k)
    assert np.isnan(got["auroc"][1]) and np.isfinite(got["auroc"][[0, 2, 3, 4]]).all()
    depth, mean_map = rng.normal(size=(n, H, W)), rng.normal(size=(H, W))
    depth[3] = 2.0  # constant depth: correlations undefined
    m_layer = downsample_area(mean_map[None], h, w)[0]
    pred, deviation = rng.normal(size=(n, h, w)), rng.normal(size=(n, h, w))
    pred[4] = 0.5  # a constant prediction
    positioned = upsample_nearest(m_layer + deviation, H, W) + (mean_map - upsample_nearest(m_layer[None], H, W)[0])
    want = depth_metrics(upsample_nearest(pred, H, W), depth, mean_map, positioned)
    got = upsampled_depth_metrics(pred, block_truth(depth, h, w, mean_map), deviation,
                                  rankdata(pred.reshape(n, -1), axis=1))
    for k in ("rmse", "pearson", "spearman", "r2_beyond_position", "constant_truth"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-9, err_msg=k)  # downsample_area: float32
    assert np.isnan(got["pearson"][3]) and np.isnan(got["spearman"][4]) and got["constant_truth"][3]
    with pytest.raises(ValueError, match="not a multiple"):
        block_truth(masks, 3, 2)


def pairwise_auroc(score: np.ndarray, truth: np.ndarray) -> float:
    """The definition itself: over every (foreground, background) pair, 1 if ranked right, 1/2 if tied."""
    fg, bg = score[truth][:, None], score[~truth][None, :]
    return float(((fg > bg) + 0.5 * (fg == bg)).mean())


def test_auroc_and_ap_of_known_rankings():
    from probes.metrics import ranking_metrics

    truth = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 1, 0, 1]], bool)
    score = np.array([[0.1, 0.2, 0.8, 0.9],  # perfect ranking
                      [0.3, 0.3, 0.3, 0.3],  # constant: every pair tied
                      [0.9, 0.8, 0.2, 0.1],  # reversed
                      [0.1, 0.5, 0.5, 0.9]])  # one fg/bg tie at 0.5
    r = ranking_metrics(score, truth)
    np.testing.assert_allclose(r["auroc"], [1.0, 0.5, 0.0, 0.875])  # last: pairs (0.5>0.1, 0.5=0.5, 0.9>0.1, 0.9>0.5)
    # AP: perfect 1; constant: precision 1/2 at the one threshold; reversed: fg found at ranks 3, 4 -> (1/3 + 2/4) / 2;
    # last: 0.9 (1 of 1) then {0.5, 0.5} together (2 of 3) -> (1 + 2/3) / 2
    np.testing.assert_allclose(r["ap"], [1.0, 0.5, (1 / 3 + 2 / 4) / 2, (1 + 2 / 3) / 2])
    assert not r["degenerate"].any()


def test_auroc_matches_pairwise_definition_and_degenerate_images_are_excluded_and_counted():
    from probes.metrics import ranking_metrics

    rng = np.random.default_rng(3)
    score = rng.integers(0, 6, (5, 50)).astype(np.float64)  # many ties
    truth = rng.random((5, 50)) < 0.4
    truth[3], truth[4] = False, True  # no foreground; no background
    r = ranking_metrics(score, truth)
    np.testing.assert_allclose(r["auroc"][:3], [pairwise_auroc(score[i], truth[i]) for i in range(3)])
    assert np.isnan(r["auroc"][3:]).all() and r["degenerate"].tolist() == [False] * 3 + [True] * 2
    assert np.isnan(r["ap"][3]) and r["ap"][4] == 1.0  # AP needs foreground; all foreground ranks perfectly
    masks = np.zeros((3, 8, 8), np.float32)
    masks[0, :4] = 1
    masks[2] = 1  # image 1: empty; image 2: all foreground
    sc = score_saliency(np.full((3, 4, 4), 0.2, np.float32), masks, n_boot=50)
    e = sc.estimates["image/auroc"]
    assert (e.mean, e.n, e.n_undefined) == (0.5, 1, 2) and sc.flags["n_degenerate_mask"] == 2
    assert sc.estimates["image/dice_fg"].mean == pytest.approx(1 / 3)  # the constant's Dice: 0, 1 (both empty), 0


def test_auroc_and_ap_match_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    from probes.metrics import ranking_metrics

    rng = np.random.default_rng(4)
    score = np.round(rng.random((4, 200)), 1)  # ties
    truth = rng.random((4, 200)) < np.array([[0.05], [0.3], [0.5], [0.9]])
    r = ranking_metrics(score, truth)
    np.testing.assert_allclose(r["auroc"], [metrics.roc_auc_score(t, s) for s, t in zip(score, truth)])
    np.testing.assert_allclose(r["ap"], [metrics.average_precision_score(t, s) for s, t in zip(score, truth)])


def test_threshold_is_the_best_training_dice_and_constants_are_detected():
    from probes.blocks import block_truth, choose_threshold, dice_by_threshold
    from probes.metrics import THRESHOLDS, is_constant

    masks = np.zeros((2, 8, 8), np.float32)
    masks[:, :4] = 1
    prob = np.full((2, 4, 4), 0.1)
    prob[:, :2] = 0.3  # every probability below 0.5: Dice 0 at 0.5, perfect at any threshold in [0.1, 0.3)
    truth = block_truth(masks, 4, 4)
    dice = dice_by_threshold(prob, truth)
    assert dice.shape == (len(THRESHOLDS), 2) and np.allclose(dice[THRESHOLDS.index(0.5)], 0.0)
    assert choose_threshold(prob, truth) == 0.1  # the smallest of the best: 0.1, 0.15, 0.2, 0.25
    assert np.allclose(dice[THRESHOLDS.index(0.25)], 1.0) and np.allclose(dice[THRESHOLDS.index(0.3)], 0.0)
    assert is_constant(prob, threshold=0.5) and not is_constant(prob, threshold=0.2) and not is_constant(prob)
    assert is_constant(np.full((3, 4), 0.156) + 1e-9 * np.arange(4)) and is_constant(np.full(5, 1e4))
