"""`sceneprobe plan CONFIG`: what a run will produce and cost, before anything runs.

Sizes are exact (from the model's configs: no weights are loaded); times come from measured per-unit costs in a
JSON file, never from guesses: `benchmarks/bench_generate.py --costs FILE` (generation with capture, labels, probe
fits) and `benchmarks/bench_edits.py --costs FILE` (seconds per edit by method, per patching pair) on the target
hardware, merged into the same file. The bill gives each stage's device-hours and its wall time on one GPU and on a
4-GPU node (every stage spreads over one actor or task per GPU), names the stage that dominates, and lists the stages
whose cost was not measured instead of guessing them.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

from ldm.architecture import describe_hook_points, image_size
from workflows.config import RunConfig
from workflows.stages.progress import format_bytes
from workflows.stages.labels import MASKED, label_shape
from workflows.stages.image_source import run_plan
from workflows.store import FLOAT32_EXTRAS
from workflows.store.act_dtype import STORED
from workflows.store.paths import IMAGES, VARIANTS, label_mask, labels


@dataclass
class ArrayPlan:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        size = {"float16": 2, "float32": 4, "int16": 2, "uint8": 1, "bool": 1}[self.dtype]
        for n in self.shape:
            size *= n
        return size


@dataclass
class RunPlan:
    n_train: int
    n_test: int
    arrays: list[ArrayPlan]
    probe_groups: int  # (variant, hook, step) slices read once each
    probes: int  # fitted probes, all targets and controls
    hours: dict[str, float] = field(default_factory=dict)  # device-hours per stage, when costs were measured
    units: dict[str, str] = field(default_factory=dict)  # what each stage's hours count, e.g. "1,234 images"
    unmeasured: list[str] = field(default_factory=list)  # stages the run has but the costs file does not price
    free_bytes: int | None = None

    @property
    def total_bytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


def plan_run(cfg: RunConfig, variants: tuple[str, ...] = ("ldm", "permuted", "shuffled"), costs: dict | None = None) -> RunPlan:
    """Sizes and counts of the run `cfg` describes; `costs` (seconds per image / per probe) gives device-hours."""
    items = run_plan(cfg)
    n, n_train = len(items), items.count("train")
    points = {p.name: p for p in describe_hook_points(cfg.model, cfg.height, cfg.width)}
    hooks = [name for name, p in points.items() if p.kind != "extra"] if cfg.hooks is None else list(cfg.hooks)
    recorded = hooks + list(cfg.extras)
    height, width, _ = image_size(cfg.model, cfg.height, cfg.width)
    arrays = [ArrayPlan(IMAGES, (n, height, width, 3), "uint8")]
    for variant in (v for v in variants if v != "shuffled"):
        prefix = "" if variant == "ldm" else f"{VARIANTS}/{variant}/"
        for name in recorded:
            p = points[name]
            act_dtype = "float32" if name in FLOAT32_EXTRAS else cfg.act_dtype
            arrays.append(ArrayPlan(f"{prefix}acts/{name}", (n, cfg.steps, p.height, p.width, p.channels),
                                    STORED.get(act_dtype, act_dtype)))
            if act_dtype == "float8_e4m3":  # one float32 scale per (image, step, channel)
                arrays.append(ArrayPlan(f"{prefix}acts/{name}/scale", (n, cfg.steps, p.channels), "float32"))
    for t in cfg.probes.targets:
        arrays.append(ArrayPlan(labels(t), label_shape(t, n, height, width)[0], "float32"))
        if t in MASKED:
            arrays.append(ArrayPlan(label_mask(t), (n, height, width), "bool"))
    model_variants = [v for v in variants if v in ("ldm", "permuted")]
    groups = len(model_variants) * len(recorded) * cfg.steps
    shuffled = len(recorded) * cfg.steps if "shuffled" in variants else 0  # fit on the model's own slices
    feature_controls = 1 + ("caption" in cfg.probes.controls)  # the position control, and the caption control if asked
    probes = (groups + shuffled + feature_controls) * len(cfg.probes.targets)
    plan = RunPlan(n_train, n - n_train, arrays, groups, probes, free_bytes=free_space(cfg.output))
    if costs:
        bill(plan, cfg, n, n - n_train, len(model_variants), costs)
    return plan


def bill(plan: RunPlan, cfg: RunConfig, n: int, n_test: int, n_models: int, costs: dict) -> None:
    """Device-hours per stage from measured per-unit costs (module docstring); what is not priced is listed."""
    icfg = cfg.interventions
    count = icfg.targets.count
    edited = min(n_test, icfg.max_images or n_test) * count  # edits per (task, method) on the test images
    calibration = {t: len(icfg.calibrate.get(t, ())) if icfg.calibrate else 0 for t in icfg.tasks}
    stages: dict[str, tuple[float, str, float | None]] = {  # stage -> (units, what, seconds per unit)
        "generate": (n * n_models, f"{n} images x {n_models} models", costs.get("generate_s_per_image")),
        "label": (n, f"{n} images", costs.get("label_s_per_image")),
        "probe": (plan.probes, f"{plan.probes} probes", costs.get("fit_s_per_probe")),
    }
    per_edit = costs.get("edit_s_per_edit", {})
    for method in icfg.methods:
        edits = sum(edited + icfg.calibrate_images * count * calibration[t] for t in icfg.tasks)
        stages[f"intervene {method}"] = (edits, f"{edits} edits ({len(icfg.tasks)} tasks, calibration included)",
                                         per_edit.get(method))
    if icfg.patching is not None:
        stages["patching"] = (icfg.patching.pairs, f"{icfg.patching.pairs} pairs", costs.get("patch_s_per_pair"))
    for stage, (units, what, seconds) in stages.items():
        if seconds is None:
            plan.unmeasured.append(stage)
        else:
            plan.hours[stage], plan.units[stage] = units * seconds / 3600, what


def format_bill(plan: RunPlan, gpus: tuple[int, ...] = (1, 4)) -> list[str]:
    """The bill as lines: per stage its units, device-hours and wall hours on each node size; the dominant stage."""
    total = sum(plan.hours.values())
    lines = ["| stage | units | device-hours | " + " | ".join(f"wall h, {g} GPU{'s' * (g > 1)}" for g in gpus)
             + " |", "|---|---|---|" + "---|" * len(gpus)]
    for stage, hours in plan.hours.items():
        lines.append(f"| {stage} | {plan.units[stage]} | {hours:.2f} | "
                     + " | ".join(f"{hours / g:.2f}" for g in gpus) + " |")
    lines.append(f"| total | | {total:.2f} | " + " | ".join(f"{total / g:.2f}" for g in gpus) + " |")
    top = max(plan.hours, key=plan.hours.get)
    lines.append(f"dominant stage: {top} ({plan.hours[top] / total:.0%} of the device-hours, on one GPU and on a "
                 f"{gpus[-1]}-GPU node alike: every stage spreads over its GPUs)")
    if plan.unmeasured:
        lines.append("not priced (no measured cost in the file): " + ", ".join(plan.unmeasured))
    return lines


def free_space(output: str) -> int | None:
    """Free bytes where a local output would go (its nearest existing parent); None for object stores."""
    fs, path = fsspec.core.url_to_fs(output)
    if "file" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return None
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def format_plan(cfg: RunConfig, plan: RunPlan) -> str:
    lines = [f"run: {cfg.model}, {plan.n_train} train + {plan.n_test} test images, {cfg.steps} steps, activations as "
             f"{cfg.act_dtype} -> {cfg.output}", ""]
    width = max(len(a.name) for a in plan.arrays)
    lines += [f"  {a.name:<{width}}  {str(a.shape):<28} {a.dtype:<8} {format_bytes(a.nbytes):>10}"
              for a in plan.arrays]
    n = plan.n_train + plan.n_test
    lines += ["", f"store total: {format_bytes(plan.total_bytes)} (before compression), "
                  f"{format_bytes(plan.total_bytes // max(n, 1))} per image"]
    lines += [f"probes: {plan.probes} in {plan.probe_groups} (variant, hook, step) groups"]
    if plan.hours:
        lines += ["", "the bill, from measured per-unit costs:"] + format_bill(plan)
    else:
        lines += ["device-hours: unknown; measure costs with `python benchmarks/bench_generate.py --costs costs.json` "
                  "on the target hardware and pass `--costs costs.json`"]
    if plan.free_bytes is not None and plan.free_bytes < plan.total_bytes:
        lines += [f"WARNING: {cfg.output} has {format_bytes(plan.free_bytes)} free, the run needs up to "
                  f"{format_bytes(plan.total_bytes)}; point output at larger storage (e.g. s3://bucket/run)"]
    return "\n".join(lines)


def load_costs(path: str | None) -> dict | None:
    return None if path is None else json.loads(Path(path).read_text())
