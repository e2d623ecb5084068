"""The report's patching section: the causal-effect map of `interventions/patching.parquet` as heatmaps (layer x
step), per view, of the movement towards the counterfactual's mask and of the success rate (moved and intact), with
the strongest cells and their 95% intervals in a table. Hooked into the page by `workflows.report.page`."""

from __future__ import annotations

import html

import numpy as np

from workflows.report.figures import heatmap_svg
from workflows.store import read_table
from workflows.store.paths import PATCHING_MAP

VIEW_NAMES = {"cell": "one (layer, step) copied", "window": "steps 0..s copied at one layer"}
TOP = 8  # cells listed per view
CELL = 34  # px per heatmap cell: room for a signed two-decimal number


def patching_map(table: list[dict], view: str, field: str) -> tuple[np.ndarray, list[str], list[int]]:
    """`(layer, step)` values of `field` for one view; layers in the map's (forward) order, steps ascending."""
    rows = [r for r in table if r["view"] == view]
    hooks = list(dict.fromkeys(r["hook"] for r in rows))
    steps = sorted({int(r["step"]) for r in rows})
    grid = np.full((len(hooks), len(steps)), np.nan)
    for r in rows:
        value = r.get(field)
        grid[hooks.index(r["hook"]), steps.index(int(r["step"]))] = np.nan if value is None else value
    return grid, hooks, steps


def _cells(rows: list[dict]) -> str:
    head = ("layer", "step", "pairs", "Dice before -> after", "gain [95% CI]", "moved", "background / latent ratio",
            "intact", "success [95% CI]")
    body = "".join(
        f"<tr><td>{html.escape(r['hook'])}</td><td>{r['step']}</td><td>{r['n_pairs']}</td>"
        f"<td>{r['score_before']:.3f} -> {r['score_after']:.3f}</td>"
        f"<td>{r['gain']:+.3f} [{r['gain_lo']:+.3f}, {r['gain_hi']:+.3f}]</td><td>{r['moved']:.2f}</td>"
        f"<td>{r['background_ratio']:.2f} / {r['latent_ratio']:.2f}</td><td>{r['intact']:.2f}</td>"
        f"<td>{r['success']:.2f} [{r['success_lo']:.2f}, {r['success_hi']:.2f}]</td></tr>" for r in rows)
    return "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + f"</tr>{body}</table>"


def patching_section(output: str) -> str:
    """The section's HTML; a note naming the command where the map does not exist."""
    found = read_table(output, PATCHING_MAP)
    if found is None:
        return ("<h3>Patching map</h3><p class='missing'>No patching map (interventions/patching.parquet). Produce it "
                "with <code>sceneprobe patch CONFIG</code> (or <code>interventions.patching</code> in the config).</p>")
    table = found.to_pylist()
    parts = ["<h3>Patching map: where the model decides placement</h3><p>Training pairs only: a training image and "
             "the same prompt drawn with another seed whose salient object sits elsewhere (the candidate seed whose "
             "mask overlaps least). The counterfactual's activation (both halves of the guidance batch) replaces the "
             "image's own, then the image is finished and re-labelled. <b>Gain</b>: Dice to the counterfactual's mask, "
             "patched minus unpatched, mean over pairs; <b>success</b>: moved (Dice &ge; the stage's threshold) and "
             "intact (background and object kept, as for the edits). Intervals: 95% bootstrap over pairs.</p>"]
    for view in dict.fromkeys(r["view"] for r in table):
        gain, hooks, steps = patching_map(table, view, "gain")
        success, _, _ = patching_map(table, view, "success")
        limit = max(float(np.nanmax(np.abs(gain))) if np.isfinite(gain).any() else 0.0, 0.05)
        parts.append("<div class='row'>"
                     + heatmap_svg(gain, hooks, steps, title=f"{view}: {VIEW_NAMES.get(view, view)}: gain",
                                   vmin=-limit, vmax=limit, fmt="{:+.2f}", cell=CELL)
                     + heatmap_svg(success, hooks, steps, title=f"{view}: success (moved and intact)", vmin=0.0,
                                   vmax=1.0, cell=CELL) + "</div>")
        best = sorted((r for r in table if r["view"] == view and r["gain"] == r["gain"]), key=lambda r: -r["gain"])
        parts.append(f"<p>{view}: the {TOP} cells that move the object most.</p>" + _cells(best[:TOP]))
    return "".join(parts)
