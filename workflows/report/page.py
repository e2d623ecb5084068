"""The run report: `<output>/report/index.html`, a static page with its images beside it in `report/assets/`.

    sceneprobe report CONFIG         (the report stage: <output>/report/index.html)

It shows whatever stages have run; a section whose inputs are missing says which command produces them. Figures are
inline SVG (`workflows.report.figures`), pictures are PNG files, so the page opens from disk in any browser without a server.
What each figure means: docs/report.md.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ldm.errors import UserError
from ldm.hooks import hook_position
from probes.resample import upsample_nearest
from probes.selection import best_probe
from probes.targets import make_targets
from probes.baselines_vectors import with_normal_map
from workflows.report.findings import (BEYOND, CONSTANT, HEADLINE, beyond_text_and_layout, ceiling_of, ceiling_text,
                                       claim_text, compare, curve_series, is_constant_row, margin_text, select_hook,
                                       signed, step_text, step_zero_text)
from workflows.report.figures import (Series, depth_image, heatmap_svg, line_chart_svg, mask_image, normal_image,
                                      png_bytes)
from workflows.report.patching import patching_section
from workflows.stages.grid import load_probe
from workflows.stages.ceilings import read_ceilings
from workflows.stages.grid_data import prepare_grid_data
from workflows.store import open_store, read_acts, read_file, read_manifest, read_table, stored_config
from workflows.store.paths import (CALIBRATION_TABLE, INTERVENTION_METRICS, INTERVENTION_SUMMARY, MOVING_OBJECT_GIF,
                                   PROBE_METRICS, activations, edited_images)

PRIMARY = {target: (metric, "higher", label) for target, (metric, label) in HEADLINE.items()}  # higher is better
VARIANTS = ("ldm", "permuted", "shuffled")
VARIANT_NAMES = {"ldm": "LDM", "permuted": "permuted-weights control", "shuffled": "shuffled-label control"}
COMMANDS = {  # what produces each input (the same names as the other stages' error messages)
    "generate": "sceneprobe run CONFIG",
    "labels": "sceneprobe label CONFIG",
    "probes": "sceneprobe probe CONFIG",
    "interventions": "sceneprobe intervene CONFIG",
    "animate": "sceneprobe animate RUN",
}
METHOD_ORDER = ("closed-form", "paper", "random")  # the order tables and figures show them
CSS = """body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}figure{display:inline-block;margin:.3em;
vertical-align:top;text-align:center}figcaption{font-size:11px;max-width:220px}
table{border-collapse:collapse;display:block;overflow-x:auto;max-width:100%;font-size:12px;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f3f3f3}
.missing{background:#fff6e0;border:1px solid #e0c070;padding:.5em 1em}.row{display:flex;flex-wrap:wrap;
align-items:flex-start}code{background:#f3f3f3;padding:0 3px}"""


@dataclass
class Page:
    """What sections add to: HTML parts, and the PNG files written into `assets/`."""

    output: str
    out_dir: Path
    parts: list[str] = field(default_factory=list)
    n_images: int = 0

    def img(self, name: str, image: np.ndarray, caption: str = "", min_side: int = 128) -> str:
        """Write `image` `(H, W[, 3])` as assets/<name>.png; return a <figure> showing it."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        (self.out_dir / "assets").mkdir(parents=True, exist_ok=True)
        (self.out_dir / "assets" / f"{safe}.png").write_bytes(png_bytes(image, min_side))
        self.n_images += 1
        return (f'<figure><img src="assets/{safe}.png" alt="{html.escape(caption or name)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def missing(self, what: str, stage: str) -> None:
        self.parts.append(f'<p class="missing">{html.escape(what)} Produce it with <code>'
                          f"{html.escape(COMMANDS[stage])}</code>.</p>")


def read_rows(output: str, relpath: str) -> list[dict] | None:
    """A Parquet table of the run as rows, or None where it does not exist (the stage has not run)."""
    table = read_table(output, relpath)
    return None if table is None else table.to_pylist()


def hook_order(name: str) -> tuple:
    """The network's own forward order (`ldm.hooks.hook_position`): a U-Net's down < mid < up, Flux's double-stream
    blocks before its single-stream ones, SD3's `joint_k` before `joint_k_out`; extras last."""
    return hook_position(name)


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def html_table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# ---------------------------------------------------------------- sections


def overview(page: Page, cfg: dict | None, probes: list[dict] | None, inter: list[dict] | None) -> None:
    page.parts.append("<h2>Run</h2>")
    if cfg is None:
        page.missing(f"No generated run at {page.output} (no config.yaml).", "generate")
        return
    manifest = read_manifest(page.output).to_pylist()
    done = sum(r["status"] == "complete" for r in manifest)
    tests = sum(r["split"] == "test" for r in manifest)
    facts = {"model": cfg.get("model"), "scheduler": cfg.get("scheduler"), "steps": cfg.get("steps"),
             "guidance scale": cfg.get("guidance_scale"), "images": f"{done} of {len(manifest)} generated",
             "split": f"{len(manifest) - tests} train, {tests} test",
             "probes": "fitted" if probes else "not yet", "interventions": "done" if inter else "not yet"}
    page.parts.append(html_table([facts], list(facts)))


def grid_of(rows: list[dict], target: str, variant: str, metric: str) -> tuple[np.ndarray, list[str], list[int], str]:
    """`(hook, step)` values, hooks in forward order, steps, and the mode, for one target and variant."""
    sel = [r for r in rows if r["target"] == target and r["variant"] == variant and r["step"] >= 0]
    hooks = sorted({r["hook"] for r in sel}, key=hook_order)
    steps = sorted({r["step"] for r in sel})
    values = np.full((len(hooks), len(steps)), np.nan)
    for r in sel:
        if r.get(metric) is not None:
            values[hooks.index(r["hook"]), steps.index(r["step"])] = r[metric]
    return values, hooks, steps, (sel[0]["mode"] if sel else "")


def heatmaps(rows: list[dict], target: str, metric: str, label: str, better: str) -> list[str]:
    """One (hook x step) heatmap of `metric` per variant that has any value of it, on one shared colour scale."""
    grids = {v: grid_of(rows, target, v, metric) for v in VARIANTS}
    finite = np.concatenate([g[0][np.isfinite(g[0])] for g in grids.values()])
    if not finite.size:
        return []
    lo, hi = float(finite.min()), float(finite.max())
    return [heatmap_svg(values, hooks, steps, title=f"{target} {label}: {VARIANT_NAMES[variant]} ({mode})",
                        vmin=lo, vmax=hi, better=better)
            for variant, (values, hooks, steps, mode) in grids.items() if hooks]


def probe_heatmaps(page: Page, rows: list[dict] | None) -> None:
    page.parts.append("<h2>Probe accuracy by layer and step</h2>")
    if not rows:
        page.missing("No probe metrics (probes/metrics.parquet).", "probes")
        return
    for target, (metric, better, label) in PRIMARY.items():
        if not any(r["target"] == target for r in rows):
            continue
        figures = heatmaps(rows, target, metric, label, better)
        beyond, beyond_label = BEYOND[target]
        if beyond != metric:  # saliency: also what each probe adds to the layout prior (0 for position alone)
            figures += heatmaps(rows, target, beyond, beyond_label, better)
        note = ""
        for name, what in (("position", "a probe on the position basis"),
                           ("caption", "a probe on the caption's text embedding x position")):
            row = next((r for r in rows if r["target"] == target and r["variant"] == name), None)
            if row is not None:
                value = CONSTANT if is_constant_row(row) else fmt(row.get(metric))
                note += f" {name.capitalize()} control ({what}): {label} {value}."
        page.parts.append(f'<h3>{target}</h3><p>Test-split {label} of each probe; brighter is better, one colour scale '
                          f"for all variants.{html.escape(note)}</p><div class='row'>{''.join(figures)}</div>")


def probe_curves(page: Page, rows: list[dict] | None, ceilings: list[dict] | None = None) -> None:
    page.parts.append("<h2>Probe accuracy over denoising steps</h2>")
    if not rows:
        page.missing("No probe metrics (probes/metrics.parquet).", "probes")
        return
    for target, (metric, _, label) in PRIMARY.items():
        hook = select_hook(rows, target, "ldm")
        if hook is None:
            continue
        series = curve_series(rows, target, metric, {"ldm": hook, "permuted": select_hook(rows, target, "permuted")},
                              ceilings)
        ceiling = ceiling_of(ceilings, target, metric)
        note = "" if ceiling is None else (
            f" Black dashed: the labeler's own {ceiling['metric']} against exact truth on {ceiling['n_images']} "
            "held-out renders (the label ceiling: what the pseudo-labels can tell about the scene).")
        by_hook = []
        values, hooks, steps, _ = grid_of(rows, target, "ldm", metric)
        for i, h in enumerate(hooks):
            by_hook.append(Series(h, np.array(steps, float), values[i]))
        page.parts.append(
            f"<h3>{target}</h3><p>Left: {label} at <code>{hook}</code> (the LDM layer best on the training split, "
            "averaged over steps; the permuted control at its own best layer; x_t the noisy latent) with 95% "
            f"bootstrap intervals over test images.{html.escape(note)} Right: every LDM layer.</p>"
            "<div class='row'>"
            + line_chart_svg(series, title=f"{target} at {hook}", xlabel="denoising step", ylabel=label)
            + line_chart_svg(by_hook, title=f"{target}: every layer", xlabel="denoising step", ylabel=label,
                             width=520) + "</div>")


def _grid_data(output: str, targets: tuple[str, ...]):
    """Test images and their labels in the probes' units, or None when labels are missing."""
    try:
        return prepare_grid_data(output, targets=targets, n_boot=1)
    except (UserError, FileNotFoundError, KeyError):
        return None


def _label_picture(target: str, values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if target == "normals":
        return normal_image(values)
    return mask_image(values) if target == "saliency" else depth_image(values, lo, hi)


def predictions(page: Page, rows: list[dict] | None, cfg: dict | None, examples: int) -> None:
    page.parts.append("<h2>Probe predictions beside labels</h2>")
    if not rows or cfg is None:
        page.missing("Needs a generated run with fitted probes.", "probes" if cfg else "generate")
        return
    targets = tuple(t for t in PRIMARY if any(r["target"] == t for r in rows) and t != "light")  # light: no map
    data = _grid_data(page.output, targets)
    if data is None:
        page.missing("No labels for the test images.", "labels")
        return
    store = open_store(page.output)
    for target in targets:
        hook = select_hook(rows, target, "ldm")
        steps = sorted({r["step"] for r in rows
                        if r["target"] == target and r["variant"] == "ldm" and r["hook"] == hook})
        if hook is None or not steps or activations(hook) not in store:
            continue
        picks = sorted({steps[0], steps[len(steps) // 2], steps[-1]})
        try:
            probes = {s: load_probe(page.output, "ldm", target, hook, s) for s in picks}
        except UserError as err:  # e.g. a probe whose fit failed: show the rest of the report
            page.parts.append(f"<p class='missing'>{html.escape(str(err))}</p>")
            continue
        labels = data.labels[target][1]
        lo, hi = (np.percentile(labels, [2, 98]) if target == "depth" else (0.0, 1.0))
        features = ((lambda a: with_normal_map(a, data.mean_maps["normals"])) if target == "normals"  # noqa: E731
                    else (lambda a: a))  # what the target's probe reads (`GroupActs.positioned`)
        lines = []
        for k, image in enumerate(data.test[:examples]):
            cells = [page.img(f"pred_{target}_{image}_image", store["images"][int(image)], f"image {image}"),
                     page.img(f"pred_{target}_{image}_label", _label_picture(target, labels[k], lo, hi), "label")]
            for s in picks:
                act = np.asarray(read_acts(store, hook, np.array([int(image)]), s), np.float32)
                out = probes[s].predict(features(act))  # (1, h, w) or (1, h, w, 3)
                pred = (upsample_nearest(out.transpose(0, 3, 1, 2), *labels.shape[1:3]).transpose(0, 2, 3, 1)
                        if out.ndim == 4 else upsample_nearest(out, *labels.shape[1:]))[0]
                cells.append(page.img(f"pred_{target}_{image}_s{s}", _label_picture(target, pred, lo, hi),
                                      f"probe, step {s}"))
            lines.append(f"<div class='row'>{''.join(cells)}</div>")
        page.parts.append(f"<h3>{target} at <code>{hook}</code></h3><p>Test images; the probe's prediction (upsampled "
                          f"nearest from {store[activations(hook)].shape[2]}x{store[activations(hook)].shape[3]}) at "
                          f"an early, a middle and the last probed step.</p>" + "".join(lines))


def interventions(page: Page, cfg: dict | None, examples: int) -> tuple[list[dict] | None, list[dict] | None]:
    page.parts.append("<h2>Interventions</h2>")
    rows = read_rows(page.output, INTERVENTION_METRICS)
    summary = read_rows(page.output, INTERVENTION_SUMMARY)
    if not rows or cfg is None:
        page.missing("No interventions (interventions/metrics.parquet).", "interventions")
        return rows, summary
    page.parts.append("<p>Mean over test images (each image's targets averaged first) with 95% bootstrap intervals. "
                      "Saliency: Dice with the target mask, before (the unedited image) and after the edit; depth: "
                      "RMSE to the shifted depth map. Gain is the improvement towards the target. A gain alone can be "
                      "won by breaking the picture, so an edit counts as a <b>success</b> only if it <i>moved</i> the "
                      "label past the stated threshold <i>and</i> kept the picture <i>intact</i>: the background "
                      "(pixels and the VAE's latent) changed by at most the stated fraction of what a new seed "
                      "changes (<code>background_ratio</code>, <code>latent_ratio</code>), and the object kept its "
                      "colours (<code>object_distance</code>, and in the toy world the caption's colour). Thresholds: "
                      "docs/interventions.md.</p>")

    def strengths(table: list[dict]) -> list[dict]:  # "x8" rather than "8.000"
        return [{**r, "strength": f"x{r['strength']:g}" if r.get("strength") else None} for r in table]

    page.parts.append(html_table(strengths(summary or []), [
        "task", "method", "metric", "strength", "n_images", "n_edits", "score_before", "score_after", "gain", "gain_lo",
        "gain_hi", "moved", "background_ratio", "latent_ratio", "object_distance", "intact", "success", "success_lo",
        "success_hi", "edit_seconds"]))
    calibration = read_rows(page.output, CALIBRATION_TABLE)
    if calibration:
        page.parts.append("<p>Strengths chosen on training images (never the test images): each candidate's success "
                          "rate (moved and intact) on the first training images; the chosen one is used above "
                          "(random edits take the strength of the edit whose norm they copy). The curves show where "
                          "edits start breaking the picture: the gain may keep rising while success falls.</p>")
        page.parts.append(dose_response(calibration))
        page.parts.append(html_table(strengths(calibration), ["task", "method", "strength", "n_images", "gain",
                                                              "gain_lo", "gain_hi", "moved", "background_ratio",
                                                              "object_distance", "intact", "success", "chosen"]))
    store = open_store(page.output)
    tasks = [t for t in PRIMARY if any(r["task"] == t for r in rows)]
    data = _grid_data(page.output, tuple(tasks))
    for task in tasks:
        methods = [m for m in METHOD_ORDER if any(r["task"] == task and r["method"] == m for r in rows)]
        images = sorted({r["image"] for r in rows if r["task"] == task})[:examples]
        lines = []
        for image in images:
            first = {r["method"]: r for r in rows
                     if r["task"] == task and r["image"] == image and r["target_index"] == 0}
            cells = [page.img(f"iv_{task}_{image}_original", store["images"][image], f"original {image}")]
            if data is not None and image in set(data.test.tolist()):
                label = data.labels[task][1][list(data.test).index(image)]
                r0 = next(iter(first.values()))
                target = make_targets(label, np.array([[r0["tx"], r0["ty"]]]), task)[0]
                lo, hi = np.percentile(label, [2, 98]) if task == "depth" else (0.0, 1.0)
                cells.append(page.img(f"iv_{task}_{image}_target", _label_picture(task, target, lo, hi),
                                      f"target (tx {r0['tx']}, ty {r0['ty']})"))
            for m in methods:
                if m in first and edited_images(task, m) in store:
                    r = first[m]
                    cells.append(page.img(f"iv_{task}_{image}_{m}", store[edited_images(task, m)][image, 0],
                                          f"{m}: {r['metric']} {r['score_before']:.2f} -> {r['score_after']:.2f}"))
            lines.append(f"<div class='row'>{''.join(cells)}</div>")
        page.parts.append(f"<h3>{task}</h3><p>Original image, the target, and the edited result per method "
                          "(first target of each image).</p>" + "".join(lines))
    return rows, summary


def dose_response(calibration: list[dict]) -> str:
    """Per (task, method): strength -> gain and success rate (with intervals) and intact rate, on training images."""
    charts = []
    for task, method in sorted({(r["task"], r["method"]) for r in calibration}):
        sel = sorted((r for r in calibration if (r["task"], r["method"]) == (task, method)), key=lambda r: r["strength"])
        x = np.log2([r["strength"] for r in sel])
        get = lambda key: np.array([np.nan if r.get(key) is None else r[key] for r in sel], float)  # noqa: E731
        series = [Series("gain", x, get("gain"), get("gain_lo"), get("gain_hi")),
                  Series("success", x, get("success"), get("success_lo"), get("success_hi")),
                  Series("intact", x, get("intact"), dashed=True)]
        charts.append(line_chart_svg(series, title=f"{task} {method}: dose-response (training images)",
                                     xlabel="log2 strength", ylabel="gain / rate"))
    return f"<div class='row'>{''.join(charts)}</div>"


def animation(page: Page) -> None:
    page.parts.append("<h2>Moving object</h2>")
    gif = read_file(page.output, MOVING_OBJECT_GIF)
    if gif is None:
        page.missing("No moving-object animation.", "animate")
        return
    (page.out_dir / "assets").mkdir(parents=True, exist_ok=True)
    (page.out_dir / "assets" / "moving_object.gif").write_bytes(gif)
    page.n_images += 1
    page.parts.append("<p>One prompt and seed; each frame edits the generation so the saliency probes read the mask "
                      "on the left, slid across the frame.</p><figure><img src='assets/moving_object.gif' "
                      "alt='moving object'></figure>")


def finding(page: Page, rows: list[dict] | None, ceilings: list[dict] | None = None) -> None:
    """The LDM's training-split-chosen layer against the permuted control and x_t, step by step."""
    if not rows:
        return
    page.parts.append("<h2>Finding: the LDM against its controls</h2><p>Per step, the test metric at the layer chosen "
                      "on held-out training images (never the test split), and the LDM's margin over the "
                      "permuted-weights control (at its own best layer), the noisy latent x_t, and the caption and "
                      "position controls (probes on what the text and the layout prior alone predict), paired over "
                      "the same test images; <i>beyond position</i>: what the LDM's features add to position alone "
                      "(0 for position itself). <code>sceneprobe findings RUN</code> prints the same as Markdown.</p>")
    for target, (metric, label) in HEADLINE.items():
        if not any(r["target"] == target for r in rows):
            continue
        hooks, table = compare(rows, target)
        if hooks["ldm"] is None:
            continue
        beyond = beyond_text_and_layout(table)
        columns = ["step", "LDM", "lo", "hi", "permuted", "x_t", "caption", "position", "LDM - permuted", "LDM - x_t",
                   "LDM - caption", "LDM - position", "beyond position"]
        cells = [dict(zip(columns, (t.step, t.shown("ldm"), t.shown("ldm", 1), t.shown("ldm", 2), t.shown("permuted"),
                                    t.shown("latent"), t.shown("caption"), t.shown("position"),
                                    *(margin_text(t, c) for c in ("permuted", "latent", "caption", "position")),
                                    signed(t.beyond)))) for t in table]
        page.parts.append(
            f"<h3>{target}: {html.escape(label)}</h3><p>LDM layer <code>{hooks['ldm']}</code>, permuted "
            f"<code>{hooks['permuted']}</code>. Margins are paired over the same test images (95% intervals). "
            f"{claim_text(target, table, bold='<b>')} More than the caption control (lower bound above 0): "
            f"<b>{step_text(beyond['caption'])}</b>; more than the position control: "
            f"<b>{step_text(beyond['position'])}</b>; beyond position: <b>{step_text(beyond['beyond'])}</b>. "
            f"{html.escape(step_zero_text(table))} {html.escape(ceiling_text(ceilings, target))}</p>"
            + html_table(cells, columns))


def label_ceilings(page: Page, ceilings: list[dict] | None) -> None:
    """Each labeler against exact truth on held-out renders (toy runs; `workflows.stages.ceilings`)."""
    if not ceilings:
        return
    page.parts.append("<h2>Label ceilings</h2><p>Each labeler of the run scored against the toy renderer's exact truth "
                      "on held-out renders (mean over images, 95% bootstrap intervals): every probe above is fit and "
                      "scored against these pseudo-labels, so their error bounds what a probe score says about the "
                      "scene. <i>curve_metric</i>: the probe metric the value is drawn beside in the curves "
                      "(<code>label_ceilings.parquet</code>).</p>")
    page.parts.append(html_table(ceilings, ["target", "metric", "value", "lo", "hi", "n_images", "n_undefined",
                                            "labeler", "version", "curve_metric"]))


def tables(page: Page, rows: list[dict] | None) -> None:
    page.parts.append("<h2>Tables</h2>")
    if not rows:
        page.missing("No probe metrics.", "probes")
        return
    best = []
    for target, (metric, _, _) in PRIMARY.items():
        for variant in (*VARIANTS, "caption", "position"):
            # chosen on held-out training images (`val_score`), never on the test metric; a feature control is one row
            r = best_probe(rows, target, variant, metric) if variant not in ("caption", "position") else next(
                (r for r in rows if r["target"] == target and r["variant"] == variant), None)
            if r is not None:
                constant = is_constant_row(r)  # a constant's metric holds by construction: say so, not the number
                best.append({"target": target, "variant": variant, "hook": r["hook"], "step": r["step"],
                             "metric": metric, "value": CONSTANT if constant else r[metric],
                             "lo": "" if constant else r[f"{metric}_lo"], "hi": "" if constant else r[f"{metric}_hi"],
                             "n_test": r.get("n_test")})
    page.parts.append("<p>Best probe per target and variant: the (layer, step) with the best score on held-out "
                      "training images (<code>val_score</code>), reported on the test split, so the test value is not "
                      "inflated by the choice; <i>constant prediction</i>: the probe's test predictions were constant "
                      "(for saliency, all on one side of its threshold), so its metric is fixed by construction. "
                      "Every probe: "
                      "<code>probes/metrics.parquet</code>; every edit: "
                      "<code>interventions/metrics.parquet</code>.</p>")
    page.parts.append(html_table(best, ["target", "variant", "hook", "step", "metric", "value", "lo", "hi",
                                        "n_test"]))


def build_report(output: str, examples: int = 4, out: str | None = None) -> Path:
    """Write the report for the run at `output` (a local path, or any fsspec URL with a local `out`)."""
    if out is None and "://" in output:
        raise UserError(f"{output} is not a local folder; give a local --out folder for the report")
    page = Page(output, Path(out or os.path.join(output, "report")))
    page.out_dir.mkdir(parents=True, exist_ok=True)
    cfg = stored_config(output)
    probes = read_rows(output, PROBE_METRICS)
    inter = read_rows(output, INTERVENTION_SUMMARY)
    overview(page, cfg, probes, inter)
    probe_heatmaps(page, probes)
    ceilings = read_ceilings(output)
    probe_curves(page, probes, ceilings)
    finding(page, probes, ceilings)
    label_ceilings(page, ceilings)
    predictions(page, probes, cfg, examples)
    interventions(page, cfg, examples)
    page.parts.append(patching_section(output))
    animation(page)
    tables(page, probes)
    title = f"sceneprobe report: {html.escape(str((cfg or {}).get('model', output)))}"
    doc = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style>"
           f"</head><body><h1>{title}</h1><p>Run output: <code>{html.escape(output)}</code>. What each figure means: "
           f"docs/report.md in the sceneprobe repository.</p>{''.join(page.parts)}</body></html>")
    path = page.out_dir / "index.html"
    path.write_text(doc, encoding="utf-8")
    return path
