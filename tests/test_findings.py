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
            out.append({"variant": variant, "hook": hook, "step": step, "target": "saliency", "val_score": train,
                        "dice_tuned": test, "dice_tuned_lo": test - 0.05, "dice_tuned_hi": test + 0.05, "per_image": per_image})
    out.append({"variant": "position", "hook": "-", "step": -1, "target": "saliency", "val_score": np.nan,
                "dice_tuned": 0.27, "dice_tuned_lo": 0.25, "dice_tuned_hi": 0.29})
    return out


def test_layers_are_chosen_on_the_training_split_never_the_test_split():
    assert select_hook(rows(), "saliency", "ldm") == "up_2_0"
    assert select_hook(rows(), "saliency", "permuted") == "down_0_0"
    assert select_hook(rows(), "depth", "ldm") is None


def test_claim_holds_and_fails_by_margin():
    hooks, table = compare(rows(), "saliency")
    assert hooks == {"ldm": "up_2_0", "permuted": "down_0_0", "latent": "latent", "caption": "-", "position": "-"}
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
            r["per_image"] = [r["dice_tuned"] + d for d in (-0.5, 0.5, -0.45, 0.45)]
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
    series = curve_series(rows(), "saliency", "dice_tuned", hooks)
    assert [s.label for s in series] == ["LDM (up_2_0)", "permuted (down_0_0)", "x_t (latent)", "position"]
    assert np.allclose(series[0].y, 0.6) and np.allclose(series[2].y, 0.1 + 0.04 * np.arange(8))
    assert series[-1].dashed and np.allclose(series[-1].y, 0.27)
    assert line_chart_svg(series).count("<polyline") == 4


def test_constant_controls_read_constant_prediction():
    flagged = [dict(r, constant_prediction=r["hook"] == "latent" and r["step"] < 4) for r in rows()]
    _, table = compare(flagged, "saliency")
    assert [t.constant for t in table[3:5]] == [frozenset({"latent"}), frozenset()]
    assert table[3].shown("latent") == "constant prediction" and table[3].shown("latent", 1) == ""
    assert table[4].shown("latent") == table[4].values["latent"][0]
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


def with_feature_controls(caption: float = 0.4, beyond_from: int = 2) -> list[dict]:
    """rows() plus a caption control at `caption` per image, and the LDM's beyond-position values crossing 0 at
    step `beyond_from`; the LDM's headline rises from 0.3 at step 0 by 0.05 a step."""
    out = []
    for r in rows():
        if r["variant"] == "ldm" and r["hook"] == "up_2_0":
            v = 0.3 + 0.05 * r["step"]
            b = 0.1 * (r["step"] - beyond_from) + 0.05
            r = dict(r, dice_tuned=v, dice_tuned_lo=v - 0.05, dice_tuned_hi=v + 0.05,
                     per_image=list(v + 0.02 * np.array([-1, 0, 1, 0])),
                     dev_pos=b, dev_pos_lo=b - 0.04, dev_pos_hi=b + 0.04,
                     per_image_beyond=list(b + 0.01 * np.array([-1, 0, 1, 0])))
        out.append(r)
    out.append({"variant": "caption", "hook": "-", "step": -1, "target": "saliency", "val_score": np.nan,
                "dice_tuned": caption, "dice_tuned_lo": caption - 0.02, "dice_tuned_hi": caption + 0.02,
                "dev_pos": 0.1, "per_image": list(caption + 0.02 * np.array([1, 0, -1, 0])),
                "per_image_beyond": [0.1] * 4})
    return out


def test_the_step_from_which_the_image_carries_more_than_its_caption_and_layout():
    from workflows.report.findings import NOT_FIT, beyond_text_and_layout

    hooks, table = compare(with_feature_controls(), "saliency")
    assert hooks["caption"] == "-" and np.allclose(table[0].values["caption"], (0.4, 0.38, 0.42))
    # LDM 0.3 + 0.05 step vs caption 0.4: the paired lower bound is above 0 from step 3 (0.45 - 0.4 - noise) on
    assert [t.margin("caption", 1) > 0 for t in table] == [False] * 3 + [True] * 5
    # beyond position: per-image values 0.1 (step - 2) + 0.05 +- 0.01: above 0 from step 2
    assert beyond_text_and_layout(table) == {"caption": 3, "position": NOT_FIT, "beyond": 2}  # no per-image values
    text = format_findings(with_feature_controls())
    assert "More than the caption control (lower bound above 0): **from step 3 on**" in text
    assert "more than the position control: **n/a (no such control in this run)**; beyond position (lower bound above 0): **from step 2 on**" in text
    assert "At step 0 (the input is pure noise" in text and "the caption control 0.40 [0.38, 0.42]" in text
    # a caption the LDM never beats, and no caption control at all
    assert beyond_text_and_layout(compare(with_feature_controls(caption=0.9), "saliency")[1])["caption"] is None
    assert beyond_text_and_layout(compare(rows(), "saliency")[1])["caption"] == NOT_FIT
    # a dip late on resets the step: only a margin that holds from then on counts
    dipped = [dict(r, per_image=[0.0] * 4) if r["variant"] == "ldm" and r["hook"] == "up_2_0" and r["step"] == 6
              else r for r in with_feature_controls()]
    assert beyond_text_and_layout(compare(dipped, "saliency")[1])["caption"] == 7


def test_findings_judge_another_measure_and_refuse_an_unknown_one():
    import pytest

    from ldm.errors import UserError

    _, table = compare(with_feature_controls(), "saliency", "dev_pos")
    assert np.isclose(table[5].values["ldm"][0], 0.35) and np.isclose(table[5].margin("caption"), 0.35 - 0.1)
    assert "cross-entropy beyond position" in format_findings(with_feature_controls(), metric="dev_pos")
    with pytest.raises(UserError, match=r"unknown metric 'dice5'.*saliency: dice_tuned, dev_pos; depth: r2_pos"):
        format_findings(rows(), metric="dice5")
    with pytest.raises(UserError, match="unknown metric 'rmse'"):
        compare(rows(), "saliency", "rmse")  # a column, but without per-image values: no paired margin
