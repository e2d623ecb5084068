"""The HTML report: on a synthetic probes-only output, on an empty folder, and on a tiny complete run."""

import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from workflows.report.figures import Series, heatmap_svg, line_chart_svg, ramp
from workflows.report.page import COMMANDS, build_report, hook_order

HOOKS = ["down_0_0", "mid_0", "up_1_0", "up_3_2"]
COLUMNS = [m + s for m in ("dice_tuned", "r2_pos") for s in ("", "_lo", "_hi")]


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.svgs = [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])
        self.svgs += tag == "svg"


def parse(path: Path) -> Tags:
    tags = Tags()
    tags.feed(path.read_text())
    return tags


def fake_metric_rows(steps: int = 4) -> list[dict]:
    """Rows per docs/CONTRACTS.md: dice rises with step for the LDM, stays flat for the controls."""
    rng = np.random.default_rng(0)
    rows = []
    for variant in ("ldm", "permuted", "shuffled"):
        for hook in HOOKS:
            for step in range(steps):
                base = 0.5 + 0.1 * step if variant == "ldm" else 0.3
                for target, metric, value in (("saliency", "dice_tuned", base), ("depth", "r2_pos", base - 0.3)):
                    v = value + rng.normal(0, 0.01)
                    rows.append({"variant": variant, "hook": hook, "step": step, "target": target, "mode": "ours",
                                 **dict.fromkeys(COLUMNS), metric: v, f"{metric}_lo": v - 0.05,
                                 f"{metric}_hi": v + 0.05, "n_train": 30,
                                 "n_test": 10, "error": None, "val_score": v + 0.05})
    for target, metric in (("saliency", "dice_tuned"), ("depth", "r2_pos")):
        rows.append({"variant": "position", "hook": "-", "step": -1, "target": target, "mode": "-",
                     **dict.fromkeys(COLUMNS), metric: 0.4,
                     f"{metric}_lo": 0.35, f"{metric}_hi": 0.45, "n_train": 30, "n_test": 10, "error": None})
    return rows


def test_figures_are_valid_svg_and_ramp():
    svg = heatmap_svg(np.array([[0.1, np.nan], [0.5, 0.9]]), ["a", "b"], [0, 1], title="t <x>", better="lower")
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "n/a" in svg and "t &lt;x&gt;" in svg
    chart = line_chart_svg([Series("s", np.arange(3), np.array([0.1, np.nan, 0.3]), np.zeros(3), np.ones(3))])
    assert chart.count("<polyline") == 1 and "<polygon" in chart
    colours = ramp(np.array([0.0, 1.0, np.nan]), 0, 1)
    assert tuple(colours[0]) == (68, 1, 84) and tuple(colours[1]) == (253, 231, 37) and tuple(colours[2]) == (170,) * 3
    assert sorted(HOOKS[::-1], key=hook_order) == HOOKS


def test_probes_only_output_shows_figures_and_says_what_is_missing(tmp_path):
    out = tmp_path / "run"
    (out / "probes").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(fake_metric_rows()), out / "probes" / "metrics.parquet")
    path = build_report(str(out))
    text = path.read_text()
    tags = parse(path)
    # Heatmaps for 2 targets x 3 variants, and 2 curve charts per target.
    assert tags.svgs == 6 + 4
    assert "up_3_2" in text and "Position control (a probe on the position basis)" in text
    for stage in ("generate", "interventions", "animate"):
        assert COMMANDS[stage] in text
    assert tags.imgs == []
    # The best-probe table picks the last step for the LDM (dice rises with step).
    for target in ("saliency", "depth"):  # dice and R2 rise with step for the LDM
        best = re.search(rf"<td>{target}</td><td>ldm</td><td>(\w+)</td><td>(\d+)</td>", text)
        assert best and best.group(2) == "3", target
    assert text.split("<h2>Tables</h2>")[1].count(">n/a<") == 0


def test_best_probe_is_chosen_on_the_training_split(tmp_path):
    rows = fake_metric_rows()
    for r in rows:  # training scores peak at step 1 while the test metric keeps rising: the table must follow them
        if r["variant"] != "position":
            r["val_score"] = 1.0 - abs(r["step"] - 1) * 0.1
    out = tmp_path / "run"
    (out / "probes").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "probes" / "metrics.parquet")
    text = build_report(str(out)).read_text()
    for target in ("saliency", "depth"):
        best = re.search(rf"<td>{target}</td><td>ldm</td><td>(\w+)</td><td>(\d+)</td>", text)
        assert best and best.group(2) == "1", target


def test_empty_folder_report(tmp_path):
    path = build_report(str(tmp_path / "nothing"))
    text = path.read_text()
    assert COMMANDS["generate"] in text and COMMANDS["probes"] in text and "<svg" not in text


_FULL_RUN: dict[str, str] = {}  # built once per session, shared with test_report_browser


def full_run_output(sd1_path, tmp_path_factory) -> str:
    """A tiny run taken through every stage: generate, labels, probes, interventions, animation."""
    if "out" in _FULL_RUN:
        return _FULL_RUN["out"]
    from test_interventions import build_tiny_run, fake_labelers, small_cfg

    from workflows.stages.animate import animate_run
    from workflows.stages.interventions import run_interventions

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = build_tiny_run(sd1_path, tmp_path_factory.mktemp("full") / "out")
        run_interventions(out, small_cfg(iters=2), labelers=fake_labelers(), stream=io.StringIO())
        animate_run(out, frames=3, cfg=small_cfg(iters=2))
    finally:
        torch.set_num_threads(threads)
    _FULL_RUN["out"] = out
    return out


@pytest.fixture(scope="module")
def full_run(sd1_path, tmp_path_factory):
    return full_run_output(sd1_path, tmp_path_factory)


def test_full_run_report_has_every_section_and_its_images(full_run):
    path = build_report(full_run, examples=2)
    text = path.read_text()
    assert 'class="missing"' not in text
    tags = parse(path)
    assert "assets/moving_object.gif" in tags.imgs
    # 2 targets x 2 images x (image, label, 2 steps) predictions + 2 tasks x 2 images x (original, target, 3 methods)
    assert len(tags.imgs) == 2 * 2 * 4 + 2 * 2 * 5 + 1
    for src in tags.imgs:
        with Image.open(path.parent / src) as im:
            im.load()
            assert min(im.size) >= 128
    assert "closed-form: dice" in text and "random: rmse" in text


def test_constant_predictions_show_as_such_not_as_numbers(tmp_path):
    rows = fake_metric_rows()
    for r in rows:  # the permuted control's saliency probes and the saliency baseline predict constants
        r["constant_prediction"] = r["target"] == "saliency" and r["variant"] in ("permuted", "position")
    out = tmp_path / "run"
    (out / "probes").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "probes" / "metrics.parquet")
    text = build_report(str(out)).read_text()
    tables = text.split("<h2>Tables</h2>")[1]
    for variant in ("permuted", "position"):
        assert re.search(rf"<td>saliency</td><td>{variant}</td><td>[\w-]+</td><td>-?\d+</td><td>dice_tuned</td>"
                         r"<td>constant prediction</td><td></td><td></td>", tables), variant
    assert re.search(r"<td>saliency</td><td>ldm</td><td>\w+</td><td>\d+</td><td>dice_tuned</td><td>0\.\d{3}</td>", tables)
    assert re.search(r"<td>depth</td><td>permuted</td><td>\w+</td><td>\d+</td><td>r2_pos</td><td>0\.\d{3}</td>",
                     tables)  # only the flagged rows
    finding = text.split("<h2>Finding")[1].split("<h3>depth")[0]
    assert finding.count("<td>constant prediction</td>") == 8  # the permuted and position columns, one per step
    assert "Position control (a probe on the position basis): Dice (threshold chosen on training images) constant prediction." in text
