"""The headline comparison (workflows/report/findings.py) on metric rows whose answer is known."""

import numpy as np

from workflows.report.findings import check_claim, compare, format_findings, select_hook


def rows(ldm_dice: float = 0.6, test_best: str = "up_1_0") -> list[dict]:
    """Saliency rows: `up_2_0` is best on the training split, `test_best` on the test split (a trap for selection)."""
    out = []
    for step in range(8):
        for variant, hook, train, test in (
            ("ldm", "up_2_0", 0.9, ldm_dice), ("ldm", "up_1_0", 0.5, 0.95 if test_best == "up_1_0" else 0.1),
            ("ldm", "latent", 0.95, 0.1 + 0.04 * step),  # an extra: never the chosen layer
            ("permuted", "up_2_0", 0.2, 0.05), ("permuted", "down_0_0", 0.3, 0.08),
        ):
            per_image = list(test + 0.05 * np.array([-1, 0, 1, 0]))  # 4 test images around the mean
            out.append({"variant": variant, "hook": hook, "step": step, "target": "saliency", "train_score": train,
                        "dice": test, "dice_lo": test - 0.05, "dice_hi": test + 0.05, "per_image": per_image})
    out.append({"variant": "position", "hook": "-", "step": -1, "target": "saliency", "train_score": np.nan,
                "dice": 0.27, "dice_lo": 0.25, "dice_hi": 0.29})
    return out


def test_layers_are_chosen_on_the_training_split_never_the_test_split():
    assert select_hook(rows(), "saliency", "ldm") == "up_2_0"
    assert select_hook(rows(), "saliency", "permuted") == "down_0_0"
    assert select_hook(rows(), "depth", "ldm") is None


def test_claim_holds_and_fails_by_margin():
    hooks, table = compare(rows(), "saliency")
    assert hooks == {"ldm": "up_2_0", "permuted": "down_0_0", "latent": "latent"}
    assert [t.step for t in table] == list(range(8))
    assert np.isclose(table[3].margin("permuted"), 0.6 - 0.08) and np.isclose(table[2].margin("latent"), 0.6 - 0.18)
    assert check_claim(table) == {"vs_permuted": True, "vs_latent": True}
    # x_t at step 7 is 0.38: an LDM at 0.5 beats the permuted control but not x_t there.
    assert check_claim(compare(rows(ldm_dice=0.5), "saliency")[1]) == {"vs_permuted": True, "vs_latent": False}
    assert check_claim(compare(rows(ldm_dice=0.2), "saliency")[1]) == {"vs_permuted": False, "vs_latent": False}


def test_claims_are_judged_on_the_paired_intervals_lower_bound():
    """The same means, but per-image margins that scatter: the point estimate passes 0.15, the interval does not."""
    data = rows()
    for r in data:
        if r["variant"] == "ldm" and r["hook"] == "up_2_0":
            r["per_image"] = [0.6 + d for d in (-0.5, 0.5, -0.45, 0.45)]  # mean 0.6, wildly different images
    table = compare(data, "saliency")[1]
    assert np.isclose(table[3].margin("permuted"), 0.6 - 0.08)  # the paired mean
    assert table[3].margin("permuted", 1) < 0.15 < table[3].margin("permuted")
    assert check_claim(table)["vs_permuted"] is False
    # paired: a margin the two probes share image by image is tight even when both scatter
    tight = rows()
    for r in tight:
        if r["variant"] in ("ldm", "permuted") and r["hook"] in ("up_2_0", "down_0_0"):
            r["per_image"] = [r["dice"] + d for d in (-0.5, 0.5, -0.45, 0.45)]
    t3 = compare(tight, "saliency")[1][3]
    assert np.isclose(t3.margin("permuted", 1), t3.margin("permuted", 2)) and check_claim(
        compare(tight, "saliency")[1])["vs_permuted"] is True


def test_missing_control_fails_the_claim_and_markdown_says_so():
    no_perm = [r for r in rows() if r["variant"] != "permuted"]
    hooks, table = compare(no_perm, "saliency")
    assert hooks["permuted"] is None and check_claim(table)["vs_permuted"] is False
    text = format_findings(rows())
    assert "`up_2_0`" in text and "**yes**" in text and "| 3 | 0.60 [0.55, 0.65]" in text


def test_curve_series_and_svg(tmp_path):
    from workflows.report.findings import curve_series
    from workflows.report.figures import line_chart_svg

    hooks, _ = compare(rows(), "saliency")
    series = curve_series(rows(), "saliency", "dice", hooks)
    assert [s.label for s in series] == ["LDM (up_2_0)", "permuted (down_0_0)", "x_t (latent)", "position"]
    assert np.allclose(series[0].y, 0.6) and np.allclose(series[2].y, 0.1 + 0.04 * np.arange(8))
    assert series[-1].dashed and np.allclose(series[-1].y, 0.27)
    assert line_chart_svg(series).count("<polyline") == 4


def test_constant_controls_read_constant_prediction():
    flagged = [dict(r, constant_prediction=r["hook"] == "latent" and r["step"] < 4) for r in rows()]
    _, table = compare(flagged, "saliency")
    assert [t.constant for t in table[3:5]] == [frozenset({"latent"}), frozenset()]
    assert table[3].shown("latent") == "constant prediction" and table[3].shown("latent", 1) == ""
    assert table[4].shown("latent") == table[4].latent[0]
    text = format_findings(flagged)
    assert "| 3 | 0.60 [0.55, 0.65] | 0.08 [0.03, 0.13] | constant prediction |" in text
    assert "| 4 | 0.60 [0.55, 0.65] | 0.08 [0.03, 0.13] | 0.26 [0.21, 0.31] |" in text


def test_a_claim_against_a_constant_control_is_not_testable():
    data = rows()
    for r in data:
        if r["hook"] == "latent":
            r["constant_prediction"] = True  # x_t predicts one value everywhere: its Dice is 0 by construction
    claim = check_claim(compare(data, "saliency")[1])
    assert claim == {"vs_permuted": True, "vs_latent": None}
    assert "not testable (the control predicts a constant)" in format_findings(data)
