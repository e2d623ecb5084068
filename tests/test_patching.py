"""Activation patching on the tiny random-weight SD1 run of test_interventions: the hook mechanics (both guidance
halves, batched cells), the stage's map, records and resume, `hooks: causal`, bad input, and that a destroyed image
never counts as a success. The random model has no scene to move: these check the plumbing, not a finding."""

import io
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from ldm.errors import UserError
from test_interventions import HOOKS, build_tiny_run, fake_labelers, small_cfg
from workflows.config import ConfigError, PatchingConfig
from workflows.stages.causal import causal_cells, resolve_causal
from workflows.stages.patching import Cell, Pair, PatchWorker, generate_patched, make_cells, record_halves, \
    score_patched
from workflows.stages.patching_stage import gather_pairs, local_runner, pair_records, run_patching
from workflows.store.paths import PATCHING_CELLS, PATCHING_MAP

PATCH = dict(pairs=3, candidates=2, max_overlap=1.0, layers=HOOKS, steps=[0, 1], batch=8)


def patch_cfg(**kw):
    return small_cfg(patching=PatchingConfig(**{**PATCH, **kw}))


@pytest.fixture(scope="module")
def model(sd1_path):
    from ldm.loading import load_model

    return load_model(str(sd1_path), steps=3)


@pytest.fixture(scope="module")
def tiny_run(sd1_path, tmp_path_factory):
    return build_tiny_run(sd1_path, tmp_path_factory.mktemp("patch-run") / "out")


def test_patching_copies_both_halves_into_the_right_images(model):
    prompt, seed = "a red sphere", 1_000_003
    unpatched = model.generate([prompt] * 4, [seed] * 4)
    image, own = record_halves(model, prompt, seed, HOOKS, 1)
    assert set(own) == {"uncond", "cond"} and len(own["cond"]) == len(own["uncond"]) == 2 * 2
    cells = make_cells(HOOKS, [0, 1], ("cell",))  # 4 cells: one batch
    # the base's own activations (recorded alone, so up to the batch's float rounding) copied back change nothing,
    # in every image of the batch
    same = generate_patched(model, prompt, seed, own, cells).astype(int)
    assert np.abs(same - unpatched).max() <= 1 and (same != unpatched).mean() < 1e-3
    _, other = record_halves(model, prompt, seed + 1, HOOKS, 1)
    patched = generate_patched(model, prompt, seed, other, [Cell("cell", "up_2_2", 0), Cell("window", "up_2_2", 0),
                                                           Cell("window", "up_3_2", 1), Cell("cell", "up_3_2", 1)])
    np.testing.assert_array_equal(patched[0], patched[1])  # a window 0..0 is the cell at step 0
    assert np.abs(patched[0].astype(int) - unpatched[0]).max() > 0  # another seed's activation changes the image
    assert not np.array_equal(patched[2], patched[3])  # the window copies step 0 as well
    # copying only the conditional half is another generation: both halves are copied
    from contextlib import ExitStack

    from ldm.hooks import hooked
    from workflows.stages.patching import patcher

    with ExitStack() as stack:
        stack.enter_context(hooked(model, patcher(other["cond"], cells[:1]), ["up_2_2"], steps=[0], half="cond",
                                   write=True))
        cond_only = model.generate([prompt], [seed])
    assert not np.array_equal(cond_only[0], patched[0])


def test_map_records_and_resume_without_redoing_pairs(tiny_run, model, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(tiny_run, run)
    cfg, labelers = patch_cfg(), fake_labelers()

    inputs = gather_pairs(run, cfg)

    def interrupted(pairs, on_done, on_failed):  # finishes the first pair, then the process "dies"
        local_runner(run, cfg, inputs, model=model, labelers=labelers)(pairs[:1], on_done, on_failed)
        raise KeyboardInterrupt

    assert [p.image for p in inputs.pairs] == [0, 1, 2]  # training images only (the test split is 9-11)
    with pytest.raises(KeyboardInterrupt):
        run_patching(run, cfg, run_pairs=lambda p, d, f: interrupted(p, d, f), stream=io.StringIO())
    assert list(pair_records(run).done()) == ["000000"]
    result = run_patching(run, cfg, model=model, labelers=labelers, stream=io.StringIO())
    assert result.ok and result.done == 2 and result.skipped == 1 and result.usable == 3
    table = pq.read_table(os.path.join(run, PATCHING_MAP)).to_pylist()
    assert len(table) == 2 * 2 * 2  # views x layers x steps
    assert [(r["view"], r["hook"], r["step"]) for r in table[:4]] == [("cell", "up_2_2", 0), ("cell", "up_2_2", 1),
                                                                      ("cell", "up_3_2", 0), ("cell", "up_3_2", 1)]
    for r in table:
        assert r["n_pairs"] == 3 and r["gain_lo"] <= r["gain"] <= r["gain_hi"]
        assert 0 <= r["success"] <= r["moved"] <= 1 and r["success"] <= r["intact"]
    cells = pq.read_table(os.path.join(run, PATCHING_CELLS)).to_pylist()
    assert len(cells) == 3 * 8 and {r["image"] for r in cells} == {0, 1, 2}
    for r in cells:  # the movement is paired: patched Dice to the counterfactual's mask minus the unpatched base's
        assert r["gain"] == pytest.approx(r["score_after"] - r["score_before"])
        assert r["counterfactual_seed"] != r["seed"]
    again = run_patching(run, cfg, model=model, labelers=labelers, stream=io.StringIO())
    assert again.done == 0 and again.skipped == 3
    more = run_patching(run, patch_cfg(pairs=4), model=model, labelers=labelers, stream=io.StringIO())
    assert more.done == 1 and more.skipped == 3  # more pairs: only the new one runs
    assert {r["n_pairs"] for r in more.table} == {4}
    with pytest.raises(UserError, match="other settings.*steps"):
        run_patching(run, patch_cfg(steps=[0]), model=model, labelers=labelers, stream=io.StringIO())
    # hooks: causal takes the map's layers and steps
    causal = resolve_causal(run, small_cfg(saliency_hooks="causal", patching=cfg.patching))
    assert set(causal.saliency_hooks) <= set(HOOKS) and set(causal.saliency_steps) <= {0, 1}
    assert causal.depth_hooks == small_cfg().depth_hooks  # only the tasks asking for it
    from workflows.stages.interventions import run_interventions

    edits = run_interventions(run, small_cfg(saliency_hooks="causal", tasks=("saliency",), methods=("closed-form",),
                                             max_images=1), model=model, labelers=labelers, stream=io.StringIO())
    assert edits.ok and edits.config.saliency_hooks == causal.saliency_hooks  # the edits ran at the map's cells
    import json

    stored = json.loads(open(os.path.join(run, "interventions", "config.json")).read())
    assert stored["saliency_hooks"] == causal.saliency_hooks and stored["saliency_steps"] == causal.saliency_steps
    # the report's section: a gain and a success heatmap per view, and the cells' table
    from workflows.report.patching import patching_section

    section = patching_section(run)
    assert section.count("<svg") == 4 and "window: steps 0..s" in section and "success [95% CI]" in section
    assert "sceneprobe patch CONFIG" in patching_section(tiny_run)  # no map yet: says how to make one


def test_causal_before_the_map_and_too_few_pairs(tiny_run, model):
    with pytest.raises(UserError, match="patching map.*does not exist.*sceneprobe patch"):
        resolve_causal(tiny_run, small_cfg(saliency_hooks="causal"))
    from workflows.stages.interventions import run_interventions

    with pytest.raises(UserError, match="patching map"):
        run_interventions(tiny_run, small_cfg(saliency_hooks="causal"), model=model, labelers=fake_labelers())
    with pytest.raises(ConfigError, match="pairs must be at least 2"):
        PatchingConfig(pairs=1)
    with pytest.raises(ConfigError, match="max_overlap"):
        PatchingConfig(max_overlap=0)
    with pytest.raises(ConfigError, match="views"):
        PatchingConfig(views=("sideways",))
    with pytest.raises(UserError, match="unknown hook"):
        run_patching(tiny_run, patch_cfg(layers=["up_9_9"]), model=model, labelers=fake_labelers())


def test_no_usable_pairs_is_one_error(tiny_run, model, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(tiny_run, run)
    # no counterfactual can overlap the base by Dice <= 1e-6: every pair is unusable, and the error says what to raise
    with pytest.raises(UserError, match="only 0 of 2 training pairs are usable.*candidates"):
        run_patching(run, patch_cfg(pairs=2, candidates=1, max_overlap=1e-6), model=model, labelers=fake_labelers(),
                     stream=io.StringIO())


def test_causal_rule_takes_qualifying_cells_only():
    def row(hook, step, gain, lo, intact=1.0, view="cell"):
        return {"view": view, "hook": hook, "step": step, "gain": gain, "gain_lo": lo, "intact": intact}

    table = [row("a", 0, 0.30, 0.10), row("a", 1, 0.05, -0.1), row("b", 0, 0.50, 0.20, intact=0.2),  # b broke it
             row("c", 2, 0.20, 0.05), row("d", 0, 0.9, 0.5, view="window"),  # windows are not the rule's view
             row("e", 1, 0.001, 0.0001)]  # an interval a hair above zero around no movement
    assert causal_cells(table, 4) == (["a", "c"], [0, 2], True)
    assert causal_cells(table, 1) == (["a"], [0], True)
    none = [row("a", 0, 0.1, -0.1), row("b", 1, 0.2, -0.05)]
    assert causal_cells(none, 4) == (["b"], [1], False)  # nothing qualifies: the best single cell, flagged


def test_destroyed_patched_images_never_count_as_success():
    """Constant, noise and blob images sitting exactly on the counterfactual's mask (Dice 1) are never a success in
    patching either; a patch that moved the object and kept the rest is."""
    from workflows.stages.interventions import judge

    rng = np.random.default_rng(0)
    H = W = 32
    yy, xx = np.mgrid[:H, :W]
    base = np.stack([(xx * 8) % 256, (yy * 8) % 256, np.full((H, W), 90)], -1).astype(np.uint8)  # textured floor
    mask = ((yy - 12) ** 2 + (xx - 10) ** 2 < 25).astype(np.float32)
    base[mask > 0] = (200, 30, 30)
    target = np.roll(mask, 12, axis=1)  # the counterfactual's object sits 12 px to the right
    moved = base.copy()
    moved[mask > 0] = base[0, 0]
    moved[target > 0] = (200, 30, 30)
    blob = base.copy()
    blob[target > 0] = 255
    images = np.stack([moved, np.full((H, W, 3), 255, np.uint8), rng.integers(0, 256, (H, W, 3), np.uint8), blob])

    class Features:  # a stand-in for the VAE: a coarse grid of the image
        def encode(self, x):
            return np.asarray(x, np.float32)[:, ::8, ::8] / 255

    pair = Pair(0, "a red sphere", 5, mask, base)
    worker = PatchWorker(Features(), labeler=None, cfg=patch_cfg(), layers=[], steps=[])
    redrawn = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)  # the seed-reference: another picture
    worker.references[(pair.prompt, pair.seed)] = (redrawn, *Features().encode(np.stack([redrawn, base])))
    labels = np.repeat(target[None], len(images), 0)  # every image's label sits exactly on the target
    scores = score_patched(worker, pair, target, images, labels)
    rows = [judge({"task": "saliency", **{k: float(v[i]) for k, v in scores.items()}}, worker.cfg)
            for i in range(len(images))]
    assert all(r["score_after"] == 1.0 and r["moved"] == 1.0 for r in rows)
    assert [r["success"] for r in rows] == [1.0, 0.0, 0.0, 0.0]  # moved-and-intact only


@pytest.mark.slow
def test_ray_pool_matches_the_local_map(tiny_run, model, tmp_path):
    """The actor pool runs the same pairs as the local loop, with the same rows, and skips a pair already recorded
    (resume on the pool: the interrupted run's finished pair is not redone)."""
    import ray

    from workflows.ray.patching import pair_runner

    cfg = patch_cfg(pairs=2, steps=[0])
    local, remote = str(tmp_path / "local"), str(tmp_path / "remote")
    for path in (local, remote):
        shutil.copytree(tiny_run, path)
    assert run_patching(local, cfg, model=model, labelers=fake_labelers(), stream=io.StringIO()).ok
    partial = run_patching(remote, cfg, model=model, labelers=fake_labelers(), stream=io.StringIO(),
                 run_pairs=lambda pairs, on_done, on_failed: local_runner(remote, cfg, gather_pairs(remote, cfg),
                                                                          model=model, labelers=fake_labelers())(
                     pairs[:1], on_done, on_failed))  # an earlier run that finished only the first pair
    assert partial.failed == {"000001": "not run"} and not partial.ok  # left undone, and said so
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        cfg_ray = patch_cfg(pairs=2, steps=[0])
        cfg_ray.actors, cfg_ray.max_retries = 2, 1
        result = run_patching(remote, cfg_ray, run_pairs=pair_runner(remote, cfg_ray, labelers=fake_labelers()),
                              stream=io.StringIO())
    finally:
        ray.shutdown()
    assert result.ok and result.done == 1 and result.skipped == 1
    a, b = pair_records(local).done(), pair_records(remote).done()
    assert a.keys() == b.keys()
    for key in a:
        assert [r["score_after"] for r in a[key]["rows"]] == [r["score_after"] for r in b[key]["rows"]]
