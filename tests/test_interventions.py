"""Interventions on a tiny random-weight SD1 run: edit mechanics, the stage, resume and bad input.

The tiny pipeline makes 32x32 images at 3 steps; labelers here are simple image statistics, so the test checks the
plumbing (edits happen, are stored, scored and resumed), not that the random model follows the edits.
"""

import io
import os

import numpy as np
import pytest
import torch

from ldm.capture import ArraySink, capture
from ldm.errors import UserError
from ldm.labelers import Labeler
from ldm.loading import load_model
from probes.linear import LinearProbe
from workflows.config import PromptsConfig, RunConfig
from workflows.stages.edits import EditStats, make_edit_fn, run_edits, score
from workflows.stages.grid import plan_groups, run_grid
from workflows.stages.grid_data import prepare_grid_data
from workflows.config import EditSettings, InterventionConfig
from workflows.stages.interventions import run_interventions, unit_records
from workflows.store.paths import edited_images as images_path
from workflows.stages.labels import label_shards
from workflows.stages.generate import generate
from workflows.store import open_store, read_file
from workflows.config import TargetSpec

STEPS = 3
HOOKS = ["up_2_2", "up_3_2"]


def fake_labelers() -> dict[str, Labeler]:
    """Deterministic stand-ins: saliency = brighter than the image's median; depth = brightness."""

    def saliency(images: np.ndarray) -> np.ndarray:
        gray = images.astype(np.float32).mean(-1)
        return (gray > np.median(gray, axis=(1, 2), keepdims=True)).astype(np.float32)

    def depth(images: np.ndarray) -> np.ndarray:
        return images.astype(np.float32).mean(-1) / 255.0

    return {"saliency": Labeler("test-saliency", "v1", "saliency", saliency),
            "depth": Labeler("test-depth", "v1", "depth", depth)}


def build_tiny_run(model_path, output, num_images: int = 12, test_fraction: float = 0.25, probe: bool = True) -> str:
    """A generated, labelled and (optionally) probed run of the tiny pipeline; returns its output path."""
    cfg = RunConfig(model=str(model_path), steps=STEPS, num_images=num_images, test_fraction=test_fraction,
                    output=str(output), shard_size=4, batch_size=4, extras=[], hooks=None,
                    prompts=PromptsConfig(source="toy"))
    generate(cfg, stream=io.StringIO())
    for task, labeler in fake_labelers().items():
        label_shards(str(output), task, labeler)
    if probe:
        data = prepare_grid_data(str(output))
        run_grid(str(output), plan_groups(str(output), hooks=HOOKS, steps=[0, 1]), data)
    return str(output)


@pytest.fixture(scope="module")
def model(sd1_path):
    return load_model(str(sd1_path), steps=STEPS)


@pytest.fixture(scope="module")
def tiny_run(sd1_path, tmp_path_factory):
    return build_tiny_run(sd1_path, tmp_path_factory.mktemp("run") / "out")


def small_cfg(**kw) -> InterventionConfig:
    base = dict(saliency_hooks=HOOKS, saliency_steps=[0, 1], depth_hooks=["up_3_2"], depth_steps=[0],
                targets=TargetSpec(count=2), iters=4)
    return InterventionConfig(**{**base, **kw})


def channel_probe(kind: str, c: int, channel: int = 0) -> LinearProbe:
    """A probe reading one raw channel: output = a[..., channel]."""
    w = np.zeros(c)
    w[channel] = 1.0
    return LinearProbe(kind=kind, method="ridge", weight=w, bias=0.0, mean=np.zeros(c), scale=np.ones(c))


def test_closed_form_makes_an_identity_probe_read_the_target():
    probe = channel_probe("depth", 6, channel=2)
    act = torch.randn(2, 4, 4, 6)
    target = np.random.default_rng(0).normal(size=(2, 4, 4)).astype(np.float32)
    stats = EditStats(norm=np.zeros(2))
    fn = make_edit_fn({("h", 0): probe}, "closed-form", target, "depth", stats=stats)
    new = fn(0, "h", act)
    np.testing.assert_allclose(new[..., 2].numpy(), target, atol=1e-6)
    np.testing.assert_array_equal(new[..., [0, 1, 3, 4, 5]].numpy(), act[..., [0, 1, 3, 4, 5]].numpy())
    expected_norm = np.abs(target - act[..., 2].numpy()).mean(axis=(1, 2))
    np.testing.assert_allclose(stats.norm, expected_norm, rtol=1e-5)
    # The paper's optimiser moves the reading towards the target; the random control keeps the closed form's norm.
    paper = make_edit_fn({("h", 0): probe}, "paper", target, "depth", EditSettings((), (), iters=64, lr=0.05))(0, "h", act)
    assert np.abs(paper[..., 2].numpy() - target).mean() < 0.5 * np.abs(act[..., 2].numpy() - target).mean()
    rand = make_edit_fn({("h", 0): probe}, "random", target, "depth")(0, "h", act)
    np.testing.assert_allclose((rand - act).norm(dim=-1).numpy(), (new - act).norm(dim=-1).numpy(), rtol=1e-4)
    assert not torch.allclose(rand, new)
    with pytest.raises(ValueError, match="unknown edit method"):
        make_edit_fn({}, "nudge", target, "depth")


def test_edits_through_ldm_change_the_image_and_zero_norm_edits_do_not(model):
    hook, prompt, seed = "up_3_2", "a red sphere", 1_000_003
    c = next(p.channels for p in model.hook_points if p.name == hook)
    probe = channel_probe("depth", c, channel=1)
    sink = ArraySink()
    with capture(model, sink, hooks=[hook], extras=(), steps=[0]):
        reference = model.generate([prompt], [seed])
    act = torch.from_numpy(sink.arrays[hook][:, 0])  # (1, h, w, c) at step 0
    # A target equal to what the probe already reads: the closed-form edit (and a random one of its norm) is zero.
    reading = (act.float() @ torch.from_numpy(probe.raw_weight).float() + probe.raw_bias).numpy()
    at = EditSettings(hooks=(hook,), steps=(0,))
    for method in ("closed-form", "random"):
        same = run_edits(model, {(hook, 0): probe}, method, reading, prompt, seed, "depth", at)
        np.testing.assert_array_equal(same, reference)
    stats_cf, stats_rand = EditStats(norm=np.zeros(1)), EditStats(norm=np.zeros(1))
    moved = run_edits(model, {(hook, 0): probe}, "closed-form", reading + 3.0, prompt, seed, "depth", at,
                      stats=stats_cf)
    assert np.abs(moved.astype(int) - reference.astype(int)).max() > 0
    run_edits(model, {(hook, 0): probe}, "random", reading + 3.0, prompt, seed, "depth", at, stats=stats_rand)
    np.testing.assert_allclose(stats_rand.norm, stats_cf.norm, rtol=1e-4)  # same norm, other direction
    np.testing.assert_allclose(stats_cf.norm, 3.0, rtol=1e-4)  # one channel moved by exactly 3 everywhere
    with pytest.raises(KeyError, match="up_3_2@1"):
        run_edits(model, {(hook, 0): probe}, "closed-form", reading, prompt, seed, "depth",
                  EditSettings(hooks=(hook,), steps=(0, 1)))


def test_score_directions():
    target = np.zeros((2, 8, 8), np.float32)
    target[:, :4, :4] = 1
    original = np.zeros((8, 8), np.float32)
    original[4:, 4:] = 1
    new = np.stack([target[0], original])
    s = score("saliency", new, original, target)
    np.testing.assert_allclose(s["score_before"], [0, 0])
    np.testing.assert_allclose(s["score_after"], [1, 0])
    np.testing.assert_allclose(s["gain"], [1, 0])
    np.testing.assert_allclose(s["score_to_original"], [0, 1])
    d = score("depth", new, original, target)
    assert d["gain"][0] > 0 and d["gain"][1] == 0  # lower RMSE to the target = positive gain


def test_stage_writes_rows_images_and_resumes(tiny_run, model):
    labelers = fake_labelers()
    cfg = small_cfg()
    result = run_interventions(tiny_run, cfg, model=model, labelers=labelers, stream=io.StringIO())
    n_test = 3
    units = n_test * len(cfg.methods) * len(cfg.tasks)
    assert result.ok and result.done == units and result.skipped == 0
    import pyarrow.parquet as pq

    rows = pq.read_table(os.path.join(tiny_run, "interventions", "metrics.parquet")).to_pylist()
    assert len(rows) == units * cfg.targets.count
    assert {r["method"] for r in rows} == {"paper", "closed-form", "random"}
    assert all(np.isfinite(r["score_after"]) and r["edit_norm"] > 0 for r in rows)
    # Random edits copy the closed-form norm at the first edited (hook, step); totals stay close.
    by = {(r["task"], r["method"], r["image"], r["target_index"]): r for r in rows}
    cf = np.array([by[k]["edit_norm"] for k in by if k[1] == "closed-form"])
    rd = np.array([by[(k[0], "random", k[2], k[3])]["edit_norm"] for k in by if k[1] == "closed-form"])
    assert np.all(np.abs(rd / cf - 1) < 0.5)
    summary = pq.read_table(os.path.join(tiny_run, "interventions", "summary.parquet")).to_pylist()
    assert len(summary) == 6
    for s in summary:
        assert s["gain_lo"] <= s["gain"] <= s["gain_hi"] and s["n_images"] == n_test
    store = open_store(tiny_run)
    edited = store[images_path("saliency", "closed-form")]
    assert edited.shape == (12, 2, 32, 32, 3)
    test_ids = sorted({r["image"] for r in rows})
    assert test_ids == [9, 10, 11]
    assert edited[test_ids[0]].max() > 0 and edited[0].max() == 0  # only test images are edited
    # Resume: nothing to do; then a lost record reruns exactly that unit, with the same result.
    again = run_interventions(tiny_run, cfg, model=model, labelers=labelers, stream=io.StringIO())
    assert again.done == 0 and again.skipped == units
    key = "saliency/closed-form/000010"
    before = unit_records(tiny_run).done()[key]
    os.remove(os.path.join(tiny_run, "interventions", "records", key + ".json"))
    third = run_interventions(tiny_run, cfg, model=model, labelers=labelers, stream=io.StringIO())
    assert third.done == 1
    after = unit_records(tiny_run).done()[key]
    assert [r["score_after"] for r in after] == [r["score_after"] for r in before]
    # Other settings on the same output are refused, not mixed in.
    with pytest.raises(UserError, match="other settings.*iters"):
        run_interventions(tiny_run, small_cfg(iters=5), model=model, labelers=labelers, stream=io.StringIO())
    assert read_file(tiny_run, "interventions/config.json") is not None
    from workflows.stages.animate import stage_settings  # the animation's default: the settings the stage used

    assert stage_settings(tiny_run).data_fields() == cfg.data_fields()


def test_missing_probe_for_a_hook_or_step(tiny_run, model):
    with pytest.raises(UserError, match=r"up_3_2@2.*probe stage"):
        run_interventions(tiny_run, small_cfg(saliency_steps=[0, 2]), model=model, labelers=fake_labelers())
    with pytest.raises(UserError, match=r"up_1_0@0"):
        run_interventions(tiny_run, small_cfg(depth_hooks=["up_1_0"]), model=model, labelers=fake_labelers())


def test_no_probes_and_empty_test_split(sd1_path, tmp_path, model):
    unprobed = build_tiny_run(sd1_path, tmp_path / "unprobed", num_images=4, probe=False)
    with pytest.raises(UserError, match="probe stage"):
        run_interventions(unprobed, small_cfg(), model=model, labelers=fake_labelers())
    no_test = build_tiny_run(sd1_path, tmp_path / "no_test", num_images=4, test_fraction=0.0, probe=False)
    with pytest.raises(UserError, match="empty test split"):
        run_interventions(no_test, small_cfg(), model=model, labelers=fake_labelers())
    with pytest.raises(UserError, match="no sceneprobe run"):
        run_interventions(str(tmp_path / "nothing"), small_cfg(), model=model)


def test_animation_gif_and_cli(tiny_run, model, tmp_path):
    from PIL import Image

    from workflows.stages.animate import animate_run
    from workflows.cli import main

    cfg = small_cfg()
    anim = animate_run(tiny_run, frames=3, cfg=cfg, model=model, out=str(tmp_path / "a.gif"))
    assert anim.image == 9 and anim.frames.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(anim.translations[:, 1], 0)
    assert anim.translations[0, 0] < 0 < anim.translations[2, 0]
    assert not np.array_equal(anim.frames[0], anim.frames[2])  # different targets, different images
    gif = Image.open(tmp_path / "a.gif")
    assert gif.n_frames == 3 and gif.size[1] >= 192
    with pytest.raises(UserError, match="not a labelled test image"):
        animate_run(tiny_run, image=0, frames=2, cfg=cfg, model=model, out=str(tmp_path / "b.gif"))
    assert main(["animate", tiny_run, "--frames", "2", "--image", "10", "--steps", "0,1", "--hooks",
                 ",".join(HOOKS)]) == 0
    assert Image.open(os.path.join(tiny_run, "interventions", "moving_object.gif")).n_frames == 2
    assert main(["animate", tiny_run, "--steps", "0,2"]) == 2  # no probe at step 2: a one-line error

def test_strength_per_task_and_all_hooks(tiny_run, model, tmp_path):
    from workflows.stages.animate import animate_run
    from workflows.config import ConfigError, from_dict

    cfg = small_cfg(strength={"saliency": 3.0})
    assert cfg.strength_of("saliency") == 3.0 and cfg.strength_of("depth") == 1.0
    assert small_cfg(strength=2).strength_of("depth") == 2.0
    with pytest.raises(ValueError, match="unknown task.*colour"):
        small_cfg(strength={"colour": 2.0})
    with pytest.raises(ValueError, match="saliency_hooks must be a list"):
        small_cfg(saliency_hooks="up_1_0,up_1_1")
    with pytest.raises(ConfigError, match="positive"):
        from_dict({"interventions": {"strength": 0}})
    # the animation edits with the stage's strength: x3 gives other frames than x1
    weak = animate_run(tiny_run, frames=2, cfg=small_cfg(methods=("closed-form",)), model=model,
                       out=str(tmp_path / "weak.gif"))
    strong = animate_run(tiny_run, frames=2, cfg=cfg, model=model, out=str(tmp_path / "strong.gif"))
    assert not np.array_equal(weak.frames, strong.frames)
    # "all" edits every U-Net hook of the run: this run has probes at two of them only, and the error names another
    with pytest.raises(UserError, match=r"down_0_0@0"):
        run_interventions(tiny_run, small_cfg(saliency_hooks="all"), model=model, labelers=fake_labelers())


@pytest.mark.slow
def test_ray_pool_matches_the_local_stage(tiny_run, model, tmp_path):
    """The actor pool runs the same units as the local loop and gets the same scores."""
    import shutil

    import ray

    from workflows.ray.interventions import unit_runner

    cfg = small_cfg(methods=("closed-form",), tasks=("saliency",), max_images=2, actors=2, max_retries=2)
    local = run_interventions(tiny_run, cfg, model=model, labelers=fake_labelers(), stream=io.StringIO())
    assert local.ok
    copy = str(tmp_path / "copy")
    shutil.copytree(tiny_run, copy)
    shutil.rmtree(os.path.join(copy, "interventions", "records"))
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        remote = run_interventions(copy, cfg, run_units=unit_runner(copy, cfg, labelers=fake_labelers()),
                                   stream=io.StringIO())
    finally:
        ray.shutdown()
    assert remote.failed == {} and remote.done == 2
    a, b = unit_records(tiny_run).done(), unit_records(copy).done()
    for key in b:
        assert [r["score_after"] for r in a[key]] == [r["score_after"] for r in b[key]]
        assert [r["edit_norm"] for r in a[key]] == pytest.approx([r["edit_norm"] for r in b[key]], rel=1e-5)
    np.testing.assert_array_equal(open_store(copy)[images_path("saliency", "closed-form")][9],
                                  open_store(tiny_run)[images_path("saliency", "closed-form")][9])


def test_choose_strengths_takes_the_best_success_not_the_best_gain_and_the_weaker_on_ties():
    from workflows.stages.interventions import choose_strengths

    # x32 has the biggest gain but breaks the picture (success 0): the calibration must not prefer it
    table = [{"task": "saliency", "method": "closed-form", "strength": s, "gain": g, "success": ok}
             for s, g, ok in ((16.0, 0.3, 0.6), (4.0, 0.1, 0.2), (8.0, 0.2, 0.6), (32.0, 0.5, 0.0))]
    table += [{"task": "saliency", "method": "paper", "strength": s, "gain": g, "success": 0.0}
              for s, g in ((1.0, -0.2), (2.0, 0.4))]
    assert choose_strengths(table) == {"saliency/closed-form": 8.0, "saliency/paper": 1.0}


def test_calibration_chooses_strength_on_training_images(tiny_run, model, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    from workflows.stages.animate import stage_settings
    from workflows.config import ConfigError, from_dict
    from workflows.stages.interventions import choose_strengths

    with pytest.raises(ValueError, match="unknown task.*colour"):
        small_cfg(calibrate={"colour": [2.0]})
    with pytest.raises(ValueError, match="calibrate.saliency must be a non-empty list"):
        small_cfg(calibrate={"saliency": []})
    with pytest.raises(ValueError, match="either a strength or calibrate"):
        small_cfg(strength={"saliency": 2.0}, calibrate={"saliency": [1.0]})
    with pytest.raises(ConfigError, match="chosen.*calibration"):
        from_dict({"interventions": {"chosen": {"saliency/paper": 2}}})
    run = str(tmp_path / "run")
    shutil.copytree(tiny_run, run)
    cfg = small_cfg(tasks=("saliency",), methods=("closed-form", "random"), calibrate={"saliency": [1.0, 16.0]},
                    calibrate_images=2)
    assert cfg.calibrated_methods("saliency") == ["closed-form"] and cfg.calibrated_methods("depth") == []
    result = run_interventions(run, cfg, model=model, labelers=fake_labelers(), fresh=True, stream=io.StringIO())
    assert result.ok and result.done == 2 * 2 + 3 * 2  # (2 strengths x 2 training images) + 3 test images x 2 methods
    table = pq.read_table(os.path.join(run, "interventions", "calibration.parquet")).to_pylist()
    assert sorted(r["strength"] for r in table) == [1.0, 16.0] and all(r["n_images"] == 2 for r in table)
    chosen = choose_strengths(table)["saliency/closed-form"]
    assert [r["strength"] for r in table if r["chosen"]] == [chosen]
    assert result.config.chosen == {"saliency/closed-form": chosen}
    records = unit_records(run).done()
    calibrated = [k for k in records if k.startswith("calibration/")]
    assert sorted({records[k][0]["image"] for k in calibrated}) == [0, 1]  # training images only
    rows = pq.read_table(os.path.join(run, "interventions", "metrics.parquet")).to_pylist()
    assert {r["image"] for r in rows} == {9, 10, 11} and {r["strength"] for r in rows} == {chosen}
    # x16 edits are ~16x the x1 ones (not exactly: later steps see the trajectory earlier edits changed), and the
    # random control copies the chosen closed form's norm
    norms = {r["strength"]: r["edit_norm"] for r in table}
    assert norms[16.0] == pytest.approx(16 * norms[1.0], rel=0.1)
    test_norms = {m: np.mean([r["edit_norm"] for r in rows if r["method"] == m]) for m in ("closed-form", "random")}
    assert test_norms["random"] == pytest.approx(test_norms["closed-form"], rel=0.5)
    assert open_store(run)[images_path("saliency", "closed-form")][0].max() == 0  # calibration images not kept
    assert stage_settings(run).strength_of("saliency", "random") == chosen
    again = run_interventions(run, cfg, model=model, labelers=fake_labelers(), stream=io.StringIO())
    assert again.done == 0 and again.skipped == 10 and again.config.chosen == result.config.chosen


def test_destroyed_images_never_count_as_success():
    """Constant, noise and blob images that sit exactly on the target score high Dice to it, yet must never be judged
    a success: the background or the object was not kept."""
    from probes.integrity import background_distance, moved_region, object_distance
    from workflows.stages.interventions import judge

    rng = np.random.default_rng(0)
    H = W = 32
    yy, xx = np.mgrid[:H, :W]
    unedited = np.stack([(xx * 8) % 256, (yy * 8) % 256, np.full((H, W), 90)], -1).astype(np.uint8)  # textured floor
    original = ((yy - 12) ** 2 + (xx - 10) ** 2 < 25).astype(np.float32)  # the object's mask
    unedited[original > 0] = (200, 30, 30)  # a red object
    target = np.roll(original, 8, axis=1)  # moved 8 px right
    intact = unedited.copy()
    intact[original > 0] = unedited[0, 0]  # the object's old place painted with background ...
    intact[target > 0] = (200, 30, 30)  # ... and the object drawn at the target: the edit we want
    redrawn = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)  # another seed: a different picture
    blob = unedited.copy()
    blob[target > 0] = 255  # a white blob on the target, background kept
    destroyed = {"constant": np.full((H, W, 3), 255, np.uint8), "noise": rng.integers(0, 256, (H, W, 3), np.uint8),
                 "blob": blob}
    region = moved_region(original, target[None], "saliency")
    cfg = InterventionConfig()

    def row(image: np.ndarray) -> dict:
        latent = image.astype(np.float32)[::8, ::8] / 255  # a stand-in feature map (4 x 4)
        return judge({"task": "saliency", "score_after": 1.0, "gain": 0.9,  # a perfect Dice to the target
                      "background_rmse": background_distance(image[None], unedited, region)[0],
                      "background_rmse_seed": background_distance(redrawn[None], unedited, region)[0],
                      "background_latent": float(np.abs(latent - unedited[::8, ::8] / 255).mean()),
                      "background_latent_seed": float(np.abs(redrawn[::8, ::8] / 255 - unedited[::8, ::8] / 255).mean()),
                      "object_distance": object_distance(unedited, original > 0, image[None], target[None] > 0)[0],
                      "colour_kept": float("nan")}, cfg)

    assert row(intact)["success"] == 1.0  # the check is not a wall every edit fails
    for name, image in destroyed.items():
        judged = row(image)
        assert judged["moved"] == 1.0 and judged["success"] == 0.0, name
