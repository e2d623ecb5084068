"""The probe grid's headline comparison: the LDM's best layer against the controls, step by step.

    sceneprobe findings runs/toy            (a run whose probe stage is done; prints a Markdown table)

Per target (saliency: Dice; depth: R2 beyond position), the LDM layer is chosen on the *training* split
(`train_score` in probes/metrics.parquet, averaged over steps) and never on the test split; the permuted-weights
control gets its own best layer by the same rule, and the noisy latent x_t is the `latent` extra. For every step the
table gives the test metric with its 95% interval and the LDM's margin over each control. The claim checked
(issue #5): from step `from_step` on the margin over the permuted control is at least `margin`, and in steps
`xt_steps` the margin over x_t is too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from probes.metrics import bootstrap_ci
from probes.selection import best_layer
from workflows.config import EXTRAS
from workflows.report.figures import PALETTE, Series, line_chart_svg

HEADLINE = {"saliency": ("dice", "Dice"), "depth": ("r2_pos", "R2 beyond position")}
LATENT = "latent"
CONSTANT = "constant prediction"  # shown instead of the metric of a row whose predictions are constant


def _value(row: dict | None, key: str) -> float:
    return float("nan") if row is None or row.get(key) is None else float(row[key])


def is_constant_row(row: dict | None) -> bool:
    """Whether a metrics row's test predictions were constant (`constant_prediction`): its metric is then a number
    by construction (e.g. Dice of an empty mask), not a measurement, and is shown as `CONSTANT`."""
    return bool(row and row.get("constant_prediction"))


def select_hook(rows: list[dict], target: str, variant: str) -> str | None:
    """The U-Net layer of `variant` with the best mean training-split score over steps (extras excluded), among
    layers with a headline metric."""
    return best_layer(rows, target, variant, HEADLINE[target][0], exclude=EXTRAS)


@dataclass
class StepComparison:
    step: int
    ldm: tuple[float, float, float]  # (mean, lo, hi) on the test split
    permuted: tuple[float, float, float]
    latent: tuple[float, float, float]
    constant: frozenset[str] = frozenset()  # of "ldm", "permuted", "latent": rows whose predictions were constant
    # control -> (mean, lo, hi) of the LDM's margin, paired over the same test images (`paired_margin`)
    margins: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def margin(self, control: str, i: int = 0) -> float:
        """The paired margin over `control`: its mean (i=0) or the 95% interval's lower (1) / upper (2) bound."""
        return self.margins.get(control, (np.nan,) * 3)[i]

    def shown(self, name: str, i: int = 0) -> float | str:
        """`name`'s (mean, lo, hi)[i] as a table shows it: for a constant prediction, whose metric holds by
        construction, `CONSTANT` instead of the mean and a blank interval."""
        if name in self.constant:
            return CONSTANT if i == 0 else ""
        return getattr(self, name)[i]


def paired_margin(ldm: dict | None, control: dict | None, n_boot: int = 2000,
                  seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi) of the per-image difference ldm - control of the headline metric (`per_image`), with a 95%
    bootstrap interval that resamples the same test images for both: paired, so the images both probes find hard do
    not widen it. NaN where either row or its per-image values are missing."""
    a, b = (None if r is None else r.get("per_image") for r in (ldm, control))
    if a is None or b is None or len(a) != len(b):
        return (np.nan,) * 3
    est = bootstrap_ci(np.asarray(a, np.float64) - np.asarray(b, np.float64), n_boot=n_boot, seed=seed)
    return est.mean, est.lo, est.hi


def compare(rows: list[dict], target: str) -> tuple[dict[str, str | None], list[StepComparison]]:
    """The chosen layers and, per step, the LDM's, the permuted control's and x_t's test metric, and the LDM's paired
    margins over the two controls."""
    metric = HEADLINE[target][0]
    hooks = {"ldm": select_hook(rows, target, "ldm"), "permuted": select_hook(rows, target, "permuted"),
             "latent": LATENT}
    index = {(r["variant"], r["hook"], r["step"]): r for r in rows if r["target"] == target}
    steps = sorted({r["step"] for r in rows if r["target"] == target and r["step"] >= 0})
    out = []
    for step in steps:
        get = {name: index.get(("ldm" if name == "latent" else name, hook, step)) for name, hook in hooks.items()}
        triple = {name: tuple(_value(r, metric + s) for s in ("", "_lo", "_hi")) for name, r in get.items()}
        constant = frozenset(name for name, r in get.items() if is_constant_row(r))
        margins = {c: paired_margin(get["ldm"], get[c]) for c in ("permuted", "latent")}
        out.append(StepComparison(step, triple["ldm"], triple["permuted"], triple["latent"], constant, margins))
    return hooks, out


def check_claim(table: list[StepComparison], margin: float = 0.15, from_step: int = 3,
                xt_steps: tuple[int, int] = (2, 7)) -> dict[str, bool | None]:
    """Whether every step from `from_step` beats the permuted control, and every step in `xt_steps` (inclusive)
    beats x_t, by at least `margin`, judged on the *lower bound* of the paired 95% interval of the margin, not its
    point estimate (NaN, e.g. a missing control, fails). None where the control predicted a constant at any of those
    steps: beating a control that cannot score tests nothing."""

    def holds(control: str, steps: list[StepComparison]) -> bool | None:
        if any(control in t.constant for t in steps):
            return None
        return bool(steps) and all(t.margin(control, 1) >= margin for t in steps)

    return {"vs_permuted": holds("permuted", [t for t in table if t.step >= from_step]),
            "vs_latent": holds("latent", [t for t in table if xt_steps[0] <= t.step <= xt_steps[1]])}


def verdict(value: bool | None) -> str:
    return "not testable (the control predicts a constant)" if value is None else "yes" if value else "no"


def format_findings(rows: list[dict], margin: float = 0.15) -> str:
    """Markdown: per target, the chosen layers, a row per step, and whether the claim holds."""

    def fmt(t: StepComparison, name: str) -> str:
        v = getattr(t, name)
        if name in t.constant:
            return CONSTANT
        return "n/a" if not np.isfinite(v[0]) else f"{v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]"

    parts = []
    for target, (metric, label) in HEADLINE.items():
        if not any(r["target"] == target for r in rows):
            continue
        hooks, table = compare(rows, target)
        claim = check_claim(table, margin)
        parts.append(f"### {target}: {label} (test split, 95% intervals over images)\n\n"
                     f"Layers chosen on the training split: LDM `{hooks['ldm']}`, permuted control "
                     f"`{hooks['permuted']}`; x_t is the noisy latent.\n\n"
                     "| step | LDM | permuted | x_t | LDM - permuted (paired) | LDM - x_t (paired) |\n"
                     "|---|---|---|---|---|---|")
        for t in table:
            parts.append(f"| {t.step} | {fmt(t, 'ldm')} | {fmt(t, 'permuted')} | {fmt(t, 'latent')} | "
                         f"{margin_text(t, 'permuted')} | {margin_text(t, 'latent')} |")
        parts.append(f"\nClaim (the paired interval's lower bound at least {margin}): beats the permuted control "
                     "from step 3 on: "
                     f"**{verdict(claim['vs_permuted'])}**; beats x_t in steps 2-7: "
                     f"**{verdict(claim['vs_latent'])}**.\n")
    return "\n".join(parts)


def margin_text(t: StepComparison, control: str) -> str:
    """`+0.52 [+0.41, +0.63]`, or n/a."""
    m = t.margins.get(control, (np.nan,) * 3)
    return "n/a" if not np.isfinite(m[0]) else f"{m[0]:+.2f} [{m[1]:+.2f}, {m[2]:+.2f}]"


def curve_series(rows: list[dict], target: str, metric: str, hooks: dict[str, str | None]) -> list[Series]:
    """Per-step `metric` with its interval for the LDM and the shuffled-label control at `hooks["ldm"]`, the permuted
    control at `hooks["permuted"]`, x_t, and the position-only baseline (dashed): the "when does the scene appear"
    chart (`figures.line_chart_svg`)."""
    lines = [("LDM", "ldm", hooks["ldm"]), ("shuffled", "shuffled", hooks["ldm"]),
             ("permuted", "permuted", hooks.get("permuted")), ("x_t", "ldm", LATENT)]
    series = []
    for k, (name, variant, at) in enumerate(lines):
        sel = sorted((r for r in rows if r["target"] == target and r["variant"] == variant and r["hook"] == at),
                     key=lambda r: r["step"])
        if sel:
            get = {key: np.array([_value(r, key) for r in sel]) for key in ("step", metric, f"{metric}_lo",
                                                                            f"{metric}_hi")}
            series.append(Series(f"{name} ({at})", get["step"], get[metric], get[f"{metric}_lo"],
                                 get[f"{metric}_hi"], PALETTE[k]))
    position = [r for r in rows if r["target"] == target and r["variant"] == "position"]
    if position and series and np.isfinite(_value(position[0], metric)):
        steps = series[0].x
        series.append(Series("position", steps, np.full(len(steps), _value(position[0], metric)), color="#7f7f7f",
                             dashed=True))
    return series


def write_finding_charts(rows: list[dict], prefix: str) -> list[str]:
    """The curves of each target as `<prefix>-<target>.svg`; returns the paths written."""
    paths = []
    for target, (metric, label) in HEADLINE.items():
        hooks, _ = compare(rows, target)
        if hooks["ldm"] is not None:
            chart = line_chart_svg(curve_series(rows, target, metric, hooks), title=f"{target} at {hooks['ldm']}",
                                   xlabel="denoising step", ylabel=label)
            Path(f"{prefix}-{target}.svg").write_text(chart)
            paths.append(f"{prefix}-{target}.svg")
    return paths
