"""The planner against SD v1.4's real architecture (from its published config) and the paper's split files."""

import pytest

from conftest import SHARED
from workflows.config import load_config
from workflows.report.plan import format_plan, plan_run

SPLITS = SHARED / "data" / "paper-splits"


@pytest.fixture
def paper_cfg(monkeypatch, tmp_path):
    if not (SPLITS / "train_split_prompts_seeds.csv").is_file():
        pytest.skip(f"the paper's split files are not at {SPLITS}")
    monkeypatch.setenv("PAPER_SPLITS", str(SPLITS))
    return load_config("configs/paper-sd14.yaml", [f"output={tmp_path / 'run'}"])


def test_paper_plan_sizes(paper_cfg):
    plan = plan_run(paper_cfg, variants=("ldm",))
    assert (plan.n_train, plan.n_test) == (246, 371)
    acts = [a for a in plan.arrays if a.name.startswith("acts/") and a.name != "acts/latent"]
    assert len(acts) == 16
    per_image_step = sum(a.nbytes for a in acts) / 617 / 15
    assert per_image_step == 11_550_720 * 2  # fp16, paper-method.md: 11.55 M values per image per step
    assert 213e9 < sum(a.nbytes for a in acts) < 215e9  # "about 214 GB for 617 images"
    assert next(a for a in plan.arrays if a.name == "acts/down_0_0").shape == (617, 15, 64, 64, 320)
    assert plan.probe_groups == 17 * 15 and plan.probes == (17 * 15 + 2) * 2  # + the position and caption controls


def test_controls_double_the_store_and_costs_give_hours(paper_cfg):
    plain, full = plan_run(paper_cfg, variants=("ldm",)), plan_run(paper_cfg)
    assert full.total_bytes - plain.total_bytes == sum(a.nbytes for a in plain.arrays if a.name.startswith("acts/"))
    assert full.probes == (2 * 17 * 15 + 17 * 15 + 2) * 2
    timed = plan_run(paper_cfg, variants=("ldm",), costs={"generate_s_per_image": 3.6, "fit_s_per_probe": 1.0})
    assert timed.hours["generate"] == pytest.approx(617 * 3.6 / 3600)
    assert "| generate | 617 images x 1 models | 0.62 | 0.62 | 0.15 |" in format_plan(paper_cfg, timed)


def test_the_bill_prices_every_measured_stage_and_names_the_rest():
    from workflows.config import load_config

    cfg = load_config("configs/toy.yaml")  # 96 images (24 test), 3 targets each, 3 methods, calibration, patching
    costs = {"generate_s_per_image": 2.0, "label_s_per_image": 0.1, "fit_s_per_probe": 0.5,
             "edit_s_per_edit": {"closed-form": 1.0, "paper": 30.0}, "patch_s_per_pair": 90.0}
    plan = plan_run(cfg, costs=costs)
    edits = 2 * (24 * 3 + 8 * 3 * 4)  # per method: 2 tasks x (test edits + calibration: 8 images x 3 x 4 strengths)
    assert plan.hours["generate"] == pytest.approx(96 * 2 * 2.0 / 3600)  # the LDM and the permuted control
    assert plan.hours["intervene paper"] == pytest.approx(edits * 30.0 / 3600)
    assert plan.hours["patching"] == pytest.approx(6 * 90.0 / 3600)
    assert plan.unmeasured == ["intervene random"]
    text = format_plan(cfg, plan)
    assert "dominant stage: intervene paper" in text and "not priced (no measured cost in the file): intervene random" in text
    assert f"| intervene paper | {edits} edits (2 tasks, calibration included) | {edits * 30 / 3600:.2f} |" in text


def test_warns_when_output_lacks_space(paper_cfg):
    plan = plan_run(paper_cfg, variants=("ldm",))
    plan.free_bytes = 10**9
    assert "WARNING" in format_plan(paper_cfg, plan) and "s3://" in format_plan(paper_cfg, plan)


def test_plan_command(paper_cfg, capsys, tmp_path):
    from workflows.cli import main

    assert main(["plan", "configs/paper-sd14.yaml", "--set", f"output={tmp_path / 'run'}"]) == 0
    out = capsys.readouterr().out
    assert "246 train + 371 test images" in out and "acts/up_3_2" in out and "probes: 1534 in 510" in out
