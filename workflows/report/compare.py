"""Two probed runs side by side: where each model represents each target, by step and by relative depth in its
network (e.g. the toy U-Net against the toy DiT on the same captions and seeds).

    sceneprobe compare runs/toy runs/toy-dit-run                  (Markdown on stdout)
    sceneprobe compare runs/toy runs/toy-dit-run --html runs/compare.html --svg docs/toy-compare

Per target both runs probed, with its headline metric (`findings.HEADLINE`) on each run's test split:

* **by step**: each run's LDM at the layer chosen on its held-out training images (`findings.select_hook`, never the
  test split), its permuted-weights control (at that control's own chosen layer) and the noisy latent x_t, with 95%
  intervals; the first step from which each run's LDM beats its permuted control and its x_t (paired lower bound
  above 0 at that step and every later one: `findings.first_step_above`); and, where both runs hold the same test
  items (prompt and seed, in order), the paired difference B - A per step. That pairing is over captions and noise
  seeds: each model drew its own image of them and was probed against labels of that image.
* **by relative depth**: each hook point's place in its network's forward order (`ldm.hooks.hook_position`; 0 the
  first hook, 100 the last, extras excluded), the test metric per image averaged over every probed step, with a
  bootstrap interval over images, so a 16-layer U-Net and a 16-point DiT read on one axis.

Each run's claims against its own controls are in `sceneprobe findings RUN`; this view adds nothing that could be
won by one run's easier labels except the paired B - A, which says so in its caption.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ldm.errors import UserError
from ldm.hooks import hook_position
from probes.metrics import bootstrap_ci
from workflows.config import EXTRAS
from workflows.config.schema import flatten, to_dict
from workflows.report.figures import PALETTE, Series, line_chart_svg
from workflows.report.findings import CONSTANT, HEADLINE, compare, first_step_above, paired_margin, signed, step_text
from workflows.store import load_run_config, read_manifest

N_BOOT = 2000


@dataclass
class ProbedRun:
    """What the view needs of one run: its name, its metrics rows, its test items (prompt, seed) in order and its
    stored config."""

    name: str
    output: str
    rows: list[dict]
    test_items: list[tuple[str, int]]
    config: dict = field(default_factory=dict)


def load_run(output: str, letter: str) -> ProbedRun:
    """A run whose probe stage is done, named by its letter and model ("A: toy")."""
    from workflows.stages.grid import read_metrics

    cfg = to_dict(load_run_config(output))  # a folder without a run: the store's own NoRunError
    rows = read_metrics(output).to_pylist()
    manifest = read_manifest(output).to_pylist()
    items = [(r["prompt"], int(r["seed"])) for r in sorted(manifest, key=lambda r: r["image"]) if r["split"] == "test"]
    return ProbedRun(f"{letter}: {cfg.get('model', output)}", output, rows, items, cfg)


def config_differences(a: ProbedRun, b: ProbedRun) -> list[str]:
    """`key (A / B)` for every setting the two runs' stored configs differ in, except where they are stored and how
    they intervene (this view compares probes)."""
    fa, fb = flatten(a.config), flatten(b.config)
    keys = [k for k in {**fa, **fb} if k != "output" and not k.startswith("interventions.") and fa.get(k) != fb.get(k)]
    return [f"{k} ({fa.get(k)} / {fb.get(k)})" for k in keys]


def relative_depths(rows: list[dict]) -> dict[str, float]:
    """hook -> its place in the network's forward order, 0 (first hook point) to 100 (last); extras excluded."""
    hooks = sorted({r["hook"] for r in rows if r["variant"] == "ldm" and r["hook"] not in EXTRAS}, key=hook_position)
    return {h: 100.0 * i / max(len(hooks) - 1, 1) for i, h in enumerate(hooks)}


def layer_profile(rows: list[dict], target: str, variant: str = "ldm") -> list[tuple[str, float, tuple]]:
    """(hook, relative depth, (mean, lo, hi)) per hook point of `variant`: the headline metric per test image averaged
    over every probed step, then a bootstrap interval over images."""
    metric = HEADLINE[target][0]
    depth = relative_depths(rows)
    out = []
    for hook, d in depth.items():
        sel = [r for r in rows if r["target"] == target and r["variant"] == variant and r["hook"] == hook
               and r["step"] >= 0 and r.get(metric) is not None and r.get("per_image") is not None]
        if sel:
            per_image = np.mean([np.asarray(r["per_image"], np.float64) for r in sel], axis=0)  # (test image,)
            est = bootstrap_ci(per_image, n_boot=N_BOOT)
            out.append((hook, d, (est.mean, est.lo, est.hi)))
    return out


@dataclass
class TargetComparison:
    target: str
    hooks: dict[str, dict[str, str | None]]  # run name -> the chosen layers ("ldm", "permuted")
    depth: dict[str, float | None]  # run name -> the chosen LDM layer's relative depth
    steps: list[int]  # steps both runs probed
    # run name -> "ldm" / "permuted" / "latent" -> (mean, lo, hi) per step, None where its predictions were constant
    values: dict[str, dict[str, list[tuple | None]]]
    # run name -> control -> the first step from which the LDM beats it at every later step where it is testable
    emerges: dict[str, dict[str, int | None]]
    untestable: dict[str, dict[str, list[int]]]  # run name -> control -> steps where it predicted a constant
    difference: list[tuple] | None  # per step, B - A paired over the same test items; None when items differ
    profiles: dict[str, list[tuple[str, float, tuple]]]


def compare_target(a: ProbedRun, b: ProbedRun, target: str) -> TargetComparison:
    """Both runs' findings for `target` on the steps both probed, and B - A paired where their test items match."""
    hooks, values, emerges, untestable, depth, tables = {}, {}, {}, {}, {}, {}
    for run in (a, b):
        chosen, table = compare(run.rows, target)
        hooks[run.name] = {k: chosen[k] for k in ("ldm", "permuted")}
        depth[run.name] = relative_depths(run.rows).get(chosen["ldm"])
        tables[run.name] = {t.step: t for t in table}
    steps = sorted(set(tables[a.name]) & set(tables[b.name]))
    for run in (a, b):
        table = [tables[run.name][s] for s in steps]
        values[run.name] = {v: [None if v in t.constant else t.values.get(v, (np.nan,) * 3) for t in table]
                            for v in ("ldm", "permuted", "latent")}
        # a step where the control predicts a constant tests nothing: left out, and listed (`untestable`)
        emerges[run.name] = {c: first_step_above([t for t in table if c not in t.constant], lambda t, c=c:
                                                 t.margin(c, 1)) for c in ("permuted", "latent")}
        untestable[run.name] = {c: [t.step for t in table if c in t.constant] for c in ("permuted", "latent")}
    difference = None
    if a.test_items == b.test_items:
        index = {run.name: {(r["hook"], r["step"]): r for r in run.rows if r["target"] == target
                            and r["variant"] == "ldm"} for run in (a, b)}
        difference = [paired_margin(index[b.name].get((hooks[b.name]["ldm"], s)),
                                    index[a.name].get((hooks[a.name]["ldm"], s))) for s in steps]
    profiles = {run.name: layer_profile(run.rows, target) for run in (a, b)}
    return TargetComparison(target, hooks, depth, steps, values, emerges, untestable, difference, profiles)


def compare_runs(a: ProbedRun, b: ProbedRun) -> list[TargetComparison]:
    """One comparison per target both runs probed; a UserError when they share none."""
    shared = [t for t in HEADLINE if any(r["target"] == t for r in a.rows) and any(r["target"] == t for r in b.rows)]
    if not shared:
        raise UserError(f"{a.output} and {b.output} probed no target in common; probe one of "
                        f"{', '.join(HEADLINE)} in both")
    return [compare_target(a, b, t) for t in shared]


def _cell(v: tuple | None) -> str:
    if v is None:
        return CONSTANT
    return "n/a" if not np.isfinite(v[0]) else f"{v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]"


def _triples(values: list[tuple | None]) -> np.ndarray:
    """(step, 3) for a chart: a constant prediction is drawn as a gap."""
    return np.array([(np.nan,) * 3 if v is None else v for v in values], np.float64).reshape(-1, 3)


def beat_text(step: int | None, untestable: list[int], n_steps: int) -> str:
    """"from step 3 on", with the steps left out because the control predicted a constant there."""
    if len(untestable) == n_steps:
        return "(not testable: the control predicts a constant at every step)"
    if not untestable:
        return step_text(step)
    return (f"{step_text(step)} where it is testable (a constant prediction at step"
            f"{'s' if len(untestable) > 1 else ''} {', '.join(map(str, untestable))})")


def summary_lines(c: TargetComparison) -> list[str]:
    """Per run: the chosen layer and its relative depth, where its value peaks, and from which step it beats its
    permuted control and x_t (paired lower bound above 0; steps where the control is constant left out)."""
    out = []
    for name, v in c.values.items():
        means = _triples(v["ldm"])[:, 0]
        peak = c.steps[int(np.nanargmax(means))] if np.isfinite(means).any() else None
        d = c.depth[name]
        beats = "; ".join(f"beats {shown} {beat_text(c.emerges[name][k], c.untestable[name][k], len(c.steps))}"
                          for k, shown in (("permuted", "its permuted control"), ("latent", "x_t")))
        out.append(f"{name}: layer `{c.hooks[name]['ldm']}` (relative depth {'n/a' if d is None else f'{d:.0f}'} of "
                   f"100), peak at step {peak}; {beats}")
    return out


def format_comparison(a: ProbedRun, b: ProbedRun, comparisons: list[TargetComparison]) -> str:
    """Markdown: per target, the summary, the by-step table and the by-depth table."""
    parts = [f"# {a.name} ({a.output}) against {b.name} ({b.output})\n",
             f"The runs differ in: {'; '.join(config_differences(a, b)) or 'nothing but their output'}.\n"]
    if comparisons and comparisons[0].difference is None:
        parts.append("The runs' test items (prompt, seed) differ: B - A is not paired and is left out.\n")
    for c in comparisons:
        label = HEADLINE[c.target][1]
        parts.append(f"## {c.target}: {label} (test split, 95% intervals over images)\n")
        parts += [f"- {line}" for line in summary_lines(c)]
        names = list(c.values)
        head = " | ".join(f"{n} {v}" for n in names for v in ("LDM", "permuted", "x_t"))
        diff = " | B - A (paired)" if c.difference is not None else ""
        parts.append(f"\n| step | {head}{diff} |\n|---|" + "---|" * (3 * len(names) + bool(diff)))
        for i, step in enumerate(c.steps):
            cells = " | ".join(_cell(c.values[n][v][i]) for n in names for v in ("ldm", "permuted", "latent"))
            parts.append(f"| {step} | {cells}{' | ' + signed(c.difference[i]) if diff else ''} |")
        parts.append("\nBy relative depth (the metric per image averaged over all probed steps):\n\n"
                     "| run | hook | relative depth | mean over steps |\n|---|---|---|---|")
        for name in names:
            parts += [f"| {name} | `{h}` | {d:.0f} | {_cell(v)} |" for h, d, v in c.profiles[name]]
        parts.append("")
    return "\n".join(parts)


def charts(comparisons: list[TargetComparison]) -> dict[str, tuple[str, str]]:
    """target -> (by-step chart, by-depth chart) as SVG."""
    out = {}
    for c in comparisons:
        label = HEADLINE[c.target][1]
        by_step, by_depth = [], []
        for k, name in enumerate(c.values):
            letter = name.split(":")[0]
            for j, (variant, shown) in enumerate((("ldm", "LDM"), ("permuted", "permuted"), ("latent", "x_t"))):
                v = _triples(c.values[name][variant])  # a run's controls dashed, in their own colours
                by_step.append(Series(f"{letter} {shown} {c.hooks[name].get(variant) or ''}", np.array(c.steps),
                                      *v.T, color=PALETTE[3 * k + j], dashed=j > 0))
            profile = c.profiles[name]
            if profile:
                v = np.array([p[2] for p in profile], np.float64)
                by_depth.append(Series(name, np.array([p[1] for p in profile]), *v.T, color=PALETTE[3 * k]))
        out[c.target] = (line_chart_svg(by_step, title=f"{c.target} by step", xlabel="denoising step", ylabel=label),
                         line_chart_svg(by_depth, title=f"{c.target} by relative depth (mean over steps)",
                                        xlabel="relative depth in the network (0 first, 100 last hook)",
                                        ylabel=label))
    return out


def write_charts(comparisons: list[TargetComparison], prefix: str) -> list[str]:
    """`<prefix>-<target>-by-step.svg` and `<prefix>-<target>-by-depth.svg`; returns the paths written."""
    paths = []
    for target, svgs in charts(comparisons).items():
        for kind, svg in zip(("by-step", "by-depth"), svgs):
            path = f"{prefix}-{target}-{kind}.svg"
            Path(path).write_text(svg)
            paths.append(path)
    return paths


def write_page(a: ProbedRun, b: ProbedRun, comparisons: list[TargetComparison], path: str) -> Path:
    """A static HTML page: the Markdown's tables with both charts per target."""
    from workflows.report.page import CSS

    svgs = charts(comparisons)
    body = [f"<h1>{html.escape(a.name)} against {html.escape(b.name)}</h1><p>A: <code>{html.escape(a.output)}"
            f"</code>, B: <code>{html.escape(b.output)}</code>. Layers chosen on each run's held-out training images; "
            "values on its test split with 95% intervals over images. What it shows: docs/report.md, \"Comparing two "
            "runs\".</p>"]
    for c in comparisons:
        body.append(f"<h2>{c.target}: {html.escape(HEADLINE[c.target][1])}</h2><ul>"
                    + "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(c)) + "</ul>"
                    f"<div class='row'>{svgs[c.target][0]}{svgs[c.target][1]}</div>")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>sceneprobe comparison</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}<h2>Tables</h2><pre>"
            f"{html.escape(format_comparison(a, b, comparisons))}</pre></body></html>")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
