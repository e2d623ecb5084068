"""Label stage and probe grid on a synthetic store whose answer is known (no model, no Ray)."""

import numpy as np
import pytest
import zarr

from ldm.errors import UserError
from synthetic_run import build, fake_labelers
from workflows.stages.grid import (
    ProbeGroup, finished_groups, fit_group, load_probe, plan_groups, prepare_grid_data, read_metrics, run_grid,
)
from workflows.stages.labels import label_shards, labelled_shards, read_labels
from workflows.store import open_store


def label_all(output):
    for target, labeler in fake_labelers().items():
        label_shards(output, target, labeler)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("grid") / "run")
    build(output)
    label_all(output)
    return output


def test_labels_are_stored_with_their_labeler(run):
    labels = read_labels(run, "saliency")
    assert labels.shape == (24, 16, 16) and set(np.unique(labels)) <= {0.0, 1.0}
    arr = open_store(run)["labels/depth"]
    assert arr.attrs["labeler"] == "fake-depth" and arr.attrs["version"] == "v1"
    assert labelled_shards(run, "depth") == set(range(6))


def test_labels_resume_and_refuse_another_labeler(run):
    assert label_shards(run, "depth", fake_labelers()["depth"]) == []  # nothing left to do
    other = fake_labelers()["depth"]
    other.version = "v2"
    with pytest.raises(UserError, match="made by fake-depth v1, not fake-depth v2"):
        label_shards(run, "depth", other)


def test_incomplete_shards_are_neither_labelled_nor_probed(tmp_path):
    output = str(tmp_path / "run")
    build(output, complete_shards=[0, 1, 2, 3, 5])
    label_all(output)
    assert labelled_shards(output, "saliency") == {0, 1, 2, 3, 5}
    with pytest.raises(UserError, match=r"4 images have no saliency labels \(images 16, 17, 18, 19\)"):
        read_labels(output, "saliency", np.arange(24))
    data = prepare_grid_data(output)
    assert not set(data.train) & set(range(16, 20)) and not set(data.test) & set(range(16, 20))


def test_grid_finds_the_planted_layer_and_beats_controls(run):
    data = prepare_grid_data(run, n_boot=200)
    assert set(data.train).isdisjoint(data.test) and len(data.test) == 8
    table = run_grid(run, plan_groups(run), data)
    rows = table.to_pylist()
    assert len(rows) == 2 * 2 * 2 * 2 + 2  # (hook x step) x target x (probe, shuffled) + position per target
    get = {(r["variant"], r["hook"], r["step"], r["target"]): r for r in rows}
    good, noise = get[("ldm", "good", 1, "saliency")], get[("ldm", "noise", 1, "saliency")]
    assert good["dice"] > 0.9 and noise["dice"] < 0.75
    assert good["dice_lo"] <= good["dice"] <= good["dice_hi"]
    assert get[("ldm", "good", 0, "depth")]["r2_pos"] > 0.8
    assert get[("ldm", "noise", 0, "depth")]["r2_pos"] < 0.3
    assert get[("shuffled", "good", 0, "depth")]["r2_pos"] < 0.3  # shuffled labels: nothing image-specific to learn
    assert get[("position", "-", -1, "depth")]["r2_pos"] == pytest.approx(0.0, abs=0.05)
    assert read_metrics(run).num_rows == len(rows)


def test_probe_weights_round_trip(run):
    probe = load_probe(run, "ldm", "saliency", "good", 1)
    acts = zarr.open_group(f"{run}/store.zarr")["acts/good/act"][:4, 1].astype(np.float32)
    logits = acts @ probe.raw_weight + probe.raw_bias
    assert ((logits > 0) == (acts[..., 0] > 0)).mean() > 0.9
    with pytest.raises(UserError, match="no fitted probe"):
        load_probe(run, "permuted", "saliency", "good", 1)


def test_grid_resumes_without_refitting(run, monkeypatch):
    before = finished_groups(run)
    assert len(before) == 4
    monkeypatch.setattr("workflows.stages.grid.fit_group", lambda *a: pytest.fail("refit a finished group"))
    data = prepare_grid_data(run, n_boot=200)
    assert run_grid(run, plan_groups(run), data).num_rows == 18


def test_non_finite_activations_are_flagged_per_probe(tmp_path):
    output = str(tmp_path / "run")
    build(output)
    label_all(output)
    root = zarr.open_group(f"{output}/store.zarr", mode="r+")
    root["acts/noise/act"][0, 0, 0, 0, 0] = np.nan
    rows = fit_group(output, ProbeGroup("ldm", "noise", 0), prepare_grid_data(output, n_boot=50))
    assert all(r["error"] and "non-finite" in r["error"] for r in rows)


def test_bad_grid_requests(run):
    with pytest.raises(UserError, match="hook point\\(s\\) up_9 not in the store; stored: good, noise"):
        plan_groups(run, hooks=["up_9"])
    with pytest.raises(UserError, match="step\\(s\\) \\[5\\] not in the store"):
        plan_groups(run, steps=[5])


def test_ray_grid_matches_local(run, tmp_path):
    """The Ray fan-out gives the same rows as the in-process grid."""
    import ray

    from workflows.ray.tasks import fit_groups_with_ray, label_with_ray

    output = str(tmp_path / "run")
    build(output)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # labels through Ray tasks with a labeler spec; the fake labelers are not loadable by spec, so label here
        label_all(output)
        data = prepare_grid_data(output, n_boot=200)
        table = run_grid(output, plan_groups(output), data, fit_many=fit_groups_with_ray(output, data))
        with pytest.raises(Exception, match="unknown depth labeler"):
            list(label_with_ray(output, "depth", {"kind": "nope"}, [0]))
    finally:
        ray.shutdown()
    local = {(r["variant"], r["hook"], r["step"], r["target"]): r["dice"] for r in read_metrics(run).to_pylist()}
    remote = {(r["variant"], r["hook"], r["step"], r["target"]): r["dice"] for r in table.to_pylist()}
    assert local.keys() == remote.keys()
    for key in local:
        assert local[key] == pytest.approx(remote[key], nan_ok=True, abs=1e-9)


def test_block_sum_scores_equal_the_full_scorers_and_controls_share_x_statistics(run):
    from probes.metrics import score_depth, score_saliency
    from workflows.stages.grid import read_activations
    from workflows.stages.grid_data import GroupActs
    from workflows.stages.grid_fit import fit_and_score
    from workflows.stages.grid_scores import score_prediction

    data = prepare_grid_data(run, n_boot=50)
    every = read_activations(run, ProbeGroup("ldm", "good", 1), np.concatenate([data.train, data.test]))
    acts = GroupActs(every[: len(data.train)], every[len(data.train):], data)
    rng = np.random.default_rng(0)
    h, w = every.shape[1:3]
    for split, n in ((1, len(data.test)), (0, len(data.train))):
        prob, depth = rng.random((n, h, w)), rng.normal(size=(n, h, w))
        positioned = data.mean_map_at("depth", h, w) + rng.normal(size=(n, h, w))
        kw = {"n_boot": 50, "seed": data.seed} if split else {"n_boot": 1, "resolutions": ("image",)}
        tuned = 0.35 if split else None  # dice_tuned (test only): the block path's equals the upsampled arrays'
        want = [score_saliency(prob, data.labels["saliency"][split], tuned_threshold=tuned, ranking=bool(split), **kw),
                score_depth(depth, data.labels["depth"][split], data.mean_maps["depth"], positioned=positioned,
                            ranks=bool(split), **kw)]
        got = [score_prediction("saliency", prob, data, split=split, threshold=tuned),
               score_prediction("depth", depth, data, positioned, split=split)]
        for g, wnt in zip(got, want):
            assert g.estimates.keys() == wnt.estimates.keys() and g.flags == wnt.flags
            assert ({"image/auroc", "image/ap"} < g.estimates.keys()) == (split == 1 and "image/dice_fg" in g.estimates)
            for key, est in wnt.estimates.items():
                for field in ("mean", "lo", "hi"):
                    assert getattr(g.estimates[key], field) == pytest.approx(getattr(est, field), rel=1e-5, abs=1e-9,
                                                                             nan_ok=True), (split, key, field)
    assert {k[0] for k in data._memo} >= {"blocks"}  # the block-sum path was taken
    bad = rng.random((len(data.test), h, w))
    bad[2, 0, 0] = np.nan  # non-finite predictions still take the full scorer, which names the image
    with pytest.raises(Exception, match=r"images \[2\]"):
        score_prediction("saliency", bad, data)
    # the shuffled-label control shares the group's standardised blocks, and with them x's ridge statistics
    fit_and_score(acts, "depth", data)
    memo = dict(acts.fit_kwargs()["blocks"].memo)
    control, _ = fit_and_score(acts, "depth", data, shuffled=True)
    assert control["error"] is None and acts.fit_kwargs()["blocks"].memo.keys() == memo.keys()


def grid_rows(run) -> dict[tuple, dict]:
    """The module's grid (fit by the tests above, resumed here), rows by (variant, hook, step, target)."""
    table = run_grid(run, plan_groups(run), prepare_grid_data(run, n_boot=200))
    return {(r["variant"], r["hook"], r["step"], r["target"]): r for r in table.to_pylist()}


def group_acts(run, data, hook="good", step=1):
    from workflows.stages.grid import read_activations
    from workflows.stages.grid_data import GroupActs

    every = read_activations(run, ProbeGroup("ldm", hook, step), np.concatenate([data.train, data.test]))
    return GroupActs(every[: len(data.train)], every[len(data.train):], data)


def test_threshold_free_and_tuned_saliency_columns_for_every_variant(run):
    from probes.metrics import THRESHOLDS

    rows = grid_rows(run)
    names = read_metrics(run).schema.names
    for column in ("auroc", "ap", "dice_tuned", "layer_auroc", "threshold", "alpha_at_edge", "alpha_positioned",
                   "alpha_positioned_at_edge", "constant_prediction"):
        assert column in names
    for key, r in rows.items():
        if key[3] == "saliency":  # ldm, shuffled and the position baseline alike
            for m in ("auroc", "ap", "dice_tuned", "layer_auroc", "layer_ap"):
                assert r[f"{m}_lo"] <= r[m] <= r[f"{m}_hi"], (key, m)
            assert r["threshold"] in THRESHOLDS
        else:
            assert r["auroc"] is None and np.isnan(r["threshold"])
    good, noise = rows[("ldm", "good", 1, "saliency")], rows[("ldm", "noise", 1, "saliency")]
    assert good["auroc"] > 0.95 and good["ap"] > 0.9 and good["dice_tuned"] > 0.9
    assert 0.25 < noise["auroc"] < 0.75 and noise["auroc"] < good["auroc"] - 0.2
    assert 0.3 < rows[("position", "-", -1, "saliency")]["auroc"] < 0.8  # the mean map ranks little


def test_dice_threshold_is_chosen_on_training_images_only(run):
    import dataclasses

    from probes.metrics import THRESHOLDS
    from probes.resample import upsample_nearest
    from workflows.stages.grid_fit import fit_and_score

    data = prepare_grid_data(run, n_boot=50)
    acts = group_acts(run, data, "noise", 1)  # a weak probe: its best threshold is not 0.5's neighbourhood by luck
    row, probes = fit_and_score(acts, "saliency", data)
    train_masks, test_masks = data.labels["saliency"]
    up = upsample_nearest(probes["saliency"].predict(acts.train), *train_masks.shape[1:])
    mean_dice = [dice_of(up > t, train_masks).mean() for t in THRESHOLDS]
    assert row["threshold"] == THRESHOLDS[int(np.argmax(mean_dice))]
    test_up = upsample_nearest(probes["saliency"].predict(acts.test), *test_masks.shape[1:])
    assert row["dice_tuned"] == pytest.approx(dice_of(test_up > row["threshold"], test_masks).mean())
    # other test labels: other test scores, the same threshold (the test split never takes part in choosing it)
    flipped = dataclasses.replace(data, labels={**data.labels, "saliency": (train_masks, 1 - test_masks)}, _memo={})
    other, _ = fit_and_score(group_acts(run, flipped, "noise", 1), "saliency", flipped)
    assert other["threshold"] == row["threshold"] and other["dice_tuned"] != pytest.approx(row["dice_tuned"])


def dice_of(pred, masks):
    from probes.metrics import dice_iou

    return dice_iou(pred, masks > 0.5)["dice_fg"]


def position_acts(data):
    from probes.positional import position_features
    from workflows.stages.grid_data import GroupActs

    h, w = 8, 8
    return GroupActs(position_features(len(data.train), h, w), position_features(len(data.test), h, w), data,
                     has_position=True)


def test_edge_alphas_and_constant_predictions_are_flagged(run):
    import dataclasses

    from probes.baselines import position_map
    from probes.linear import RIDGE_ALPHAS, LinearProbe
    from workflows.stages.grid_data import GroupActs
    from workflows.stages.grid_fit import fit_and_score
    from workflows.stages.grid_scores import alpha_at_edge

    grid = np.asarray(RIDGE_ALPHAS)
    probe = lambda a, g=grid: LinearProbe("depth", "ridge", np.zeros(2), 0.0, np.zeros(2), np.ones(2), a, g)  # noqa
    assert alpha_at_edge(probe(1e-6)) and alpha_at_edge(probe(1e2)) and not alpha_at_edge(probe(1e-2))
    assert alpha_at_edge(probe(0.0, np.zeros(0))) is None and alpha_at_edge(None) is None
    from probes.metrics import is_constant
    from workflows.stages.grid import read_activations

    test_images = prepare_grid_data(run, n_boot=50).test
    for (variant, hook, step, target), r in grid_rows(run).items():
        fitted = load_probe(run, variant, target, hook, step)
        assert r["alpha_at_edge"] == alpha_at_edge(fitted) and r["alpha"] == fitted.alpha
        if variant == "position" or target == "depth":
            # the position control's depth deviation from the mean map is constant: positions are alike in every
            # image; no activation probe's depth is
            assert r["constant_prediction"] is (variant == "position" and target == "depth"), (variant, target)
            continue
        # saliency: constant where every test pixel is on one side of the headline's threshold (the noise layer's
        # probe calls everything foreground: its dice_tuned is the all-foreground mask's)
        pred = fitted.predict(read_activations(run, ProbeGroup("ldm", hook, step), test_images))
        assert r["constant_prediction"] is is_constant(pred, threshold=r["threshold"]), (variant, hook, step)
    # activations that carry nothing: the probes predict constants, which the rows say (AUROC exactly 0.5)
    data = prepare_grid_data(run, n_boot=50)
    real = group_acts(run, data)
    blank = GroupActs(np.zeros_like(real.train), np.zeros_like(real.test), data)
    for target in ("saliency", "depth"):
        row, _ = fit_and_score(blank, target, data)
        assert row["error"] is None and row["constant_prediction"] is True, target
    assert row["r2_pos"] == pytest.approx(0.0, abs=1e-4)
    assert fit_and_score(blank, "saliency", data)[0]["auroc"] == 0.5
    # a mean training mask below 0.5 everywhere (the toy world's): the position probe's Dice at 0.5 is an empty mask,
    # but the headline's threshold, chosen on training masks, finds the layout prior, so it is no constant
    train, test = data.labels["saliency"]
    sparse = train * np.roll(train, 1, axis=0) * np.roll(train, 2, axis=0)  # ~1/8 of each image's blocks
    low = dataclasses.replace(data, labels={**data.labels, "saliency": (sparse, test)},
                              mean_maps={**data.mean_maps, "saliency": position_map(sparse)}, _memo={})
    row, _ = fit_and_score(position_acts(low), "saliency", low)
    assert row["dice"] == pytest.approx(0.0) and row["constant_prediction"] is False
    assert row["threshold"] < 0.5 and row["dice_tuned"] > 0.3 and row["dev_pos"] == pytest.approx(0.0, abs=1e-9)


def test_positioned_depth_probe_is_stored_and_reproduces_r2_pos(run):
    from probes.baselines import with_position
    from probes.metrics import score_depth
    from probes.resample import downsample_area
    from workflows.stages.grid import read_activations

    rows = grid_rows(run)
    data = prepare_grid_data(run, n_boot=200)
    m = data.mean_maps["depth"]
    for variant, hook in (("ldm", "good"), ("shuffled", "good"), ("ldm", "noise")):
        row = rows[(variant, hook, 0, "depth")]
        acts = read_activations(run, ProbeGroup("ldm", hook, 0), data.test)
        plain = load_probe(run, variant, "depth", hook, 0)
        positioned = load_probe(run, variant, "depth", hook, 0, positioned=True)
        assert row["alpha_positioned"] == positioned.alpha and positioned.weight.shape[0] == acts.shape[-1] + 1
        h, w = acts.shape[1:3]
        depth = downsample_area(m[None], h, w)[0] + positioned.predict(with_position(acts, m))
        sc = score_depth(plain.predict(acts), data.labels["depth"][1], m, positioned=depth, n_boot=200,
                         seed=data.seed)  # the full scorer, not the grid's block sums
        est = sc.estimates["image/r2_beyond_position"]
        for value, column in ((est.mean, "r2_pos"), (est.lo, "r2_pos_lo"), (est.hi, "r2_pos_hi")):
            assert value == pytest.approx(row[column], rel=1e-5, abs=1e-6), (variant, hook, column)
        assert sc.estimates["layer/r2_beyond_position"].mean == pytest.approx(row["layer_r2_pos"], rel=1e-5, abs=1e-6)
    assert rows[("ldm", "good", 0, "depth")]["r2_pos"] > 0.8  # the reproduced number is the headline one


def test_positioned_saliency_probe_is_stored_and_reproduces_dev_pos(run):
    from probes.fit import fit_probe
    from probes.metrics import bootstrap_ci, dice_iou
    from probes.positional import position_features, with_position_features
    from probes.resample import upsample_nearest
    from workflows.stages.grid import read_activations

    rows = grid_rows(run)
    data = prepare_grid_data(run, n_boot=200)
    masks = data.labels["saliency"][1] > 0.5

    def cross_entropy(prob):  # the upsampled arrays, not the grid's block sums
        p = np.clip(upsample_nearest(prob, *masks.shape[1:]).astype(np.float64), 1e-6, 1 - 1e-6)
        return -np.where(masks, np.log(p), np.log1p(-p)).mean((1, 2))

    for hook in ("good", "noise"):
        row = rows[("ldm", hook, 0, "saliency")]
        acts = read_activations(run, ProbeGroup("ldm", hook, 0), data.test)
        n, h, w, c = acts.shape
        positioned = load_probe(run, "ldm", "saliency", hook, 0, positioned=True)
        assert positioned.weight.shape == (c + 35,)
        reference = fit_probe(position_features(len(data.train), h, w), data.area_labels("saliency", h, w),
                              "saliency", seed=data.seed).predict(position_features(n, h, w))
        dev = 1 - cross_entropy(positioned.predict(with_position_features(acts))) / cross_entropy(reference)
        est = bootstrap_ci(dev, n_boot=200, seed=data.seed)
        assert row["dev_pos"] == pytest.approx(est.mean, rel=1e-4, abs=1e-6)
        assert row["per_image_beyond"] == pytest.approx(dev.tolist(), rel=1e-4, abs=1e-6)
        plain = load_probe(run, "ldm", "saliency", hook, 0).predict(acts)
        tuned = dice_iou(upsample_nearest(plain, *masks.shape[1:]) > row["threshold"], masks)["dice_fg"]
        assert row["per_image"] == pytest.approx(tuned.tolist(), abs=1e-9)  # the headline: dice_tuned per image
    # the planted layer's object is not where position alone puts it; the noise layer adds nothing (or harms)
    assert rows[("ldm", "good", 0, "saliency")]["dev_pos_lo"] > 0.3
    assert rows[("ldm", "noise", 0, "saliency")]["dev_pos"] < 0.1
    assert rows[("position", "-", -1, "saliency")]["dev_pos"] == pytest.approx(0.0, abs=1e-12)


def test_layers_are_chosen_on_held_out_validation_images(run):
    """`val_score` is the headline on the validation images of the probe's alpha search, predicted by the solution
    fit without them: it matches a ridge fit on the other training images alone, and differs from `train_score`."""
    import dataclasses

    from probes.linear import fit_ridge, validation_split
    from workflows.stages.grid_fit import fit_and_score

    data = prepare_grid_data(run, n_boot=50)
    acts = group_acts(run, data, "noise", 1)
    val = validation_split(len(data.train), 0.2, data.seed)
    assert np.array_equal(val, data.val)
    probe = fit_ridge(acts.train, data.fit_labels("depth", *acts.train.shape[1:3]), seed=data.seed)
    x = ((acts.train - probe.mean) / probe.scale).reshape(len(val), -1, acts.train.shape[-1])
    y = data.fit_labels("depth", *acts.train.shape[1:3]).reshape(len(val), -1)
    xf, yf = x[~val].reshape(-1, x.shape[-1]).astype(np.float64), y[~val].reshape(-1).astype(np.float64)
    xc, yc = xf - xf.mean(0), yf - yf.mean()
    w = np.linalg.solve(xc.T @ xc / len(xc) + probe.alpha * np.eye(x.shape[-1]), xc.T @ yc / len(xc))
    assert probe.val_weight == pytest.approx(w, rel=1e-4, abs=1e-6)  # the FIT images' own ridge solution
    row, _ = fit_and_score(acts, "depth", data)
    assert np.isfinite(row["val_score"]) and row["val_score"] != pytest.approx(row["train_score"])
    # the validation score sees neither the test labels nor, through the fit, the validation labels
    flipped = dataclasses.replace(data, labels={**data.labels, "depth": (data.labels["depth"][0],
                                                                         -data.labels["depth"][1])}, _memo={})
    assert fit_and_score(group_acts(run, flipped, "noise", 1), "depth", flipped)[0]["val_score"] == pytest.approx(
        row["val_score"])
    rows = grid_rows(run)
    assert all(np.isfinite(r["val_score"]) for r in rows.values())
    from probes.selection import best_layer
    assert best_layer(list(rows.values()), "saliency", "ldm", "dice_tuned") == "good"
