"""Two runs side by side (workflows/report/compare.py, `sceneprobe compare`) on metric rows whose answer is known."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from workflows.cli import main
from workflows.report.compare import ProbedRun, compare_runs, format_comparison, layer_profile, relative_depths

UNET = ("down_0_0", "mid_0", "up_1_0", "up_2_0")  # forward order; up_2_0 is best on the training split
DIT = ("joint_0", "joint_0_out", "joint_1", "joint_1_out")
NOISE = np.array([-0.1, 0.0, 0.1, 0.0, 0.05, -0.05])  # 6 test images around each mean


def rows(hooks, best: str, level: float, emerge: int, steps: int = 6) -> list[dict]:
    """Saliency rows: `best` is chosen on the training split and scores `level` from step `emerge` on (0.1 before);
    every other layer scores 0.2; the permuted control 0.15, x_t 0.1 (constant prediction at step 0)."""
    out = []
    for step in range(steps):
        for variant, hook, val, test in (
            *(("ldm", h, 0.9 if h == best else 0.5, (level if step >= emerge else 0.1) if h == best else 0.2)
              for h in hooks),
            ("ldm", "latent", 0.95, 0.1), ("permuted", hooks[0], 0.3, 0.15),
        ):
            out.append({"variant": variant, "hook": hook, "step": step, "target": "saliency", "val_score": val,
                        "dice_tuned": test, "dice_tuned_lo": test - 0.05, "dice_tuned_hi": test + 0.05,
                        "per_image": list(test + NOISE), "constant_prediction": hook == "latent" and step == 0})
    return out


def run(letter, hooks, best, level, emerge, items=None) -> ProbedRun:
    return ProbedRun(f"{letter}: model", f"runs/{letter}", rows(hooks, best, level, emerge),
                     items or [(f"caption {i}", i) for i in range(len(NOISE))])


def test_relative_depth_is_the_networks_forward_order_without_extras():
    assert relative_depths(rows(("up_2_0", "down_0_0", "mid_0", "up_1_0"), "mid_0", 0.6, 2)) == {
        "down_0_0": 0.0, "mid_0": 100 / 3, "up_1_0": 200 / 3, "up_2_0": 100.0}
    assert list(relative_depths(rows(DIT, "joint_1", 0.6, 2))) == list(DIT)


def test_each_run_at_its_own_training_chosen_layer_with_paired_difference():
    a, b = run("A", UNET, "up_2_0", 0.6, 2), run("B", DIT, "joint_0_out", 0.8, 3)
    (c,) = compare_runs(a, b)
    assert c.hooks == {"A: model": {"ldm": "up_2_0", "permuted": "down_0_0"},
                       "B: model": {"ldm": "joint_0_out", "permuted": "joint_0"}}
    assert c.depth == {"A: model": 100.0, "B: model": 100 / 3}
    assert c.emerges["A: model"] == {"permuted": 2, "latent": 2}
    assert c.emerges["B: model"] == {"permuted": 3, "latent": 3}
    # the same test items: B - A paired image by image, so the shared per-image scatter cancels
    diff = np.array(c.difference)
    assert np.allclose(diff[:, 0], [0, 0, -0.5, 0.2, 0.2, 0.2]) and np.allclose(diff[:, 1], diff[:, 2])
    assert c.values["A: model"]["latent"][0] is None  # x_t's constant prediction at step 0 is not a number
    text = format_comparison(a, b, [c])
    assert "constant prediction" in text and "`up_2_0` (relative depth 100 of 100)" in text
    assert "beats its permuted control from step 3 on" in text and "B - A (paired)" in text
    assert "beats x_t from step 3 on where it is testable (a constant prediction at step 0)" in text


def test_other_test_items_are_not_paired():
    a = run("A", UNET, "up_2_0", 0.6, 2)
    b = run("B", DIT, "joint_0_out", 0.8, 3, items=[(f"other {i}", i) for i in range(len(NOISE))])
    (c,) = compare_runs(a, b)
    assert c.difference is None
    assert "B - A (paired)" not in format_comparison(a, b, [c]) and "differ" in format_comparison(a, b, [c])


def test_layer_profile_averages_each_image_over_steps():
    profile = {h: v for h, _, v in layer_profile(rows(UNET, "up_2_0", 0.7, 3), "saliency")}
    assert np.isclose(profile["up_2_0"][0], (3 * 0.1 + 3 * 0.7) / 6) and np.isclose(profile["mid_0"][0], 0.2)
    assert profile["up_2_0"][1] < profile["up_2_0"][0] < profile["up_2_0"][2]


def write_run(root, hooks, best, level, emerge, model):
    root.mkdir()
    (root / "config.yaml").write_text(yaml.safe_dump({"model": model}))
    items = [{"image": i, "prompt": f"caption {i}", "seed": i, "split": "test", "shard": 0, "status": "complete"}
             for i in range(len(NOISE))]
    pq.write_table(pa.Table.from_pylist(items), root / "manifest.parquet")
    (root / "probes").mkdir()
    pq.write_table(pa.Table.from_pylist(rows(hooks, best, level, emerge)), root / "probes" / "metrics.parquet")


def test_the_command_prints_markdown_and_writes_the_page_and_charts(tmp_path, capsys):
    write_run(tmp_path / "unet", UNET, "up_2_0", 0.6, 2, "toy")
    write_run(tmp_path / "dit", DIT, "joint_0_out", 0.8, 3, "toy-dit")
    html, prefix = tmp_path / "cmp.html", tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "unet"), str(tmp_path / "dit"), "--html", str(html),
                 "--svg", str(prefix)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# A: toy") and "B: toy-dit" in out and "| 5 |" in out
    assert "The runs differ in: model (toy / toy-dit)." in out
    page = html.read_text()
    assert page.count("<svg") == 2 and "joint_0_out" in page
    assert (tmp_path / "cmp-saliency-by-step.svg").read_text().count("<polyline") == 6  # 2 runs x LDM, permuted, x_t
    assert (tmp_path / "cmp-saliency-by-depth.svg").read_text().count("<polyline") == 2


@pytest.mark.parametrize("what", ["no run", "no probes"])
def test_a_folder_without_a_probed_run_is_one_error(what, tmp_path, capsys):
    write_run(tmp_path / "unet", UNET, "up_2_0", 0.6, 2, "toy")
    other = tmp_path / "other"
    other.mkdir()
    if what == "no probes":
        (other / "config.yaml").write_text("model: toy\n")
    assert main(["compare", str(tmp_path / "unet"), str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(other) in err
