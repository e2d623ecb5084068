"""`hooks: causal`: the edits' layers and steps taken from the patching map (`interventions/patching.parquet`), which
is made on training pairs only (`workflows.stages.patching_stage`), so no test image takes part in the choice.

The rule (`causal_cells`), on the map's "cell" view (one (layer, step) copied): a cell qualifies when its movement
towards the counterfactual's mask has a 95% interval above zero (`gain_lo > 0`) and a mean of at least `MIN_GAIN`
(0.02 Dice: layers that change nothing have intervals a hair above zero when every pair moves by ~0.001), and its
patched images stayed intact in at least half of the pairs (`intact >= 0.5`: a cell that moves the object by
redrawing the picture does not count). The `causal_layers` layers with the largest qualifying gain are edited, at every step where one of them
qualifies. Where no cell qualifies, the single cell with the largest mean gain is taken, and the stage says so.
"""

from __future__ import annotations

from dataclasses import replace

from ldm.errors import UserError
from workflows.config import CAUSAL, InterventionConfig, PatchingConfig
from workflows.store import read_table
from workflows.store.paths import PATCHING_MAP

MIN_INTACT = 0.5  # a qualifying cell kept the picture in at least this share of the pairs
MIN_GAIN = 0.02  # and moved the mask towards the counterfactual's by at least this much Dice, on average


def causal_cells(table: list[dict], causal_layers: int) -> tuple[list[str], list[int], bool]:
    """(hooks in the map's order, steps, whether any cell qualified) by the module docstring's rule."""
    cells = [r for r in table if r["view"] == "cell" and r["gain"] == r["gain"]]  # NaN gains never chosen
    if not cells:
        raise UserError("the patching map has no 'cell' view rows; make it with interventions.patching.views "
                        "including cell")
    qualifying = [r for r in cells if r["gain_lo"] > 0 and r["gain"] >= MIN_GAIN and r["intact"] >= MIN_INTACT]
    chosen = qualifying or [max(cells, key=lambda r: r["gain"])]
    best: dict[str, float] = {}
    for r in chosen:
        best[r["hook"]] = max(best.get(r["hook"], float("-inf")), r["gain"])
    layers = set(sorted(best, key=lambda h: -best[h])[:causal_layers])
    hooks = [h for h in dict.fromkeys(r["hook"] for r in cells) if h in layers]
    steps = sorted({int(r["step"]) for r in chosen if r["hook"] in layers})
    return hooks, steps, bool(qualifying)


def read_map(output: str) -> list[dict] | None:
    table = read_table(output, PATCHING_MAP)
    return None if table is None else table.to_pylist()


def resolve_causal(output: str, cfg: InterventionConfig, stream=None) -> InterventionConfig:
    """`cfg` with every `causal` hooks setting replaced by the map's layers and steps (unchanged when none is)."""
    tasks = [t for t in cfg.tasks if cfg.hooks(t) == CAUSAL]
    if not tasks:
        return cfg
    table = read_map(output)
    if table is None:
        raise UserError(f"interventions.{tasks[0]}_hooks: causal takes the layers and steps from the patching map, but "
                        f"{output}/{PATCHING_MAP} does not exist yet: make it first (`sceneprobe patch CONFIG`, or set "
                        "interventions.patching so the intervene stage makes it), or give the hooks and steps")
    hooks, steps, qualified = causal_cells(table, (cfg.patching or PatchingConfig()).causal_layers)
    if stream is not None:
        print(f"hooks: causal -> {', '.join(hooks)} at steps {steps}"
              + ("" if qualified else " (no cell's movement interval lies above zero: the best single cell)"),
              file=stream, flush=True)
    changes = {}
    for task in tasks:
        changes.update({f"{task}_hooks": hooks, f"{task}_steps": steps})
    return replace(cfg, **changes)
