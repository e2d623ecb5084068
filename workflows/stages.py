"""The stages after generation, each a plain function of the run config: controls, labels, probes.

`workflows.run` chains them (`sceneprobe run CONFIG`); each is resumable on its own and skips finished work.
With `use_ray` the work fans out to Ray tasks; without it, it runs in this process (tests, GPU benchmarks).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import TextIO

from workflows.config import RunConfig
from workflows.grid import plan_groups, prepare_grid_data, run_grid, variant_output
from workflows.labels import label_shards, labelled_shards, load_labeler
from workflows.progress import Progress
from workflows.store import completion_records, require_run, stored_config


def control_configs(cfg: RunConfig) -> dict[str, RunConfig]:
    """The run config of each control model variant: same plan and seeds, its own store under variants/."""
    out = {}
    for variant in cfg.probes.controls:
        if variant == "permuted":
            out[variant] = dataclasses.replace(cfg, output=variant_output(cfg.output, variant),
                                               permute_seed=cfg.probes.permute_seed)
    return out


def run_controls(cfg: RunConfig, use_ray: bool = True, address: str | None = None, stream: TextIO | None = None):
    """Generate every control variant's activations (resuming any that were started). Returns their results."""
    from workflows.run import generate

    results = {}
    for variant, variant_cfg in control_configs(cfg).items():
        print(f"control {variant}: generating into {variant_cfg.output}", file=stream or sys.stderr, flush=True)
        started = stored_config(variant_cfg.output) is not None
        results[variant] = generate(variant_cfg, resume=started, use_ray=use_ray, address=address, stream=stream)
    return results


def _labeler_spec(cfg: RunConfig, target: str) -> dict:
    spec = dataclasses.asdict(getattr(cfg.labels, target))
    return {**spec, "device": cfg.labels.device}


def run_labels(cfg: RunConfig, use_ray: bool = True, stream: TextIO | None = None) -> dict[str, int]:
    """Label every complete, unlabelled shard for each probe target. Returns shards labelled now per target."""
    require_run(cfg, "label")
    stream = stream or sys.stderr
    counts = {}
    for target in cfg.probes.targets:
        todo = sorted(set(completion_records(cfg.output)) - labelled_shards(cfg.output, target))
        start = time.monotonic()
        if use_ray and todo:
            from workflows.ray_grid import label_with_ray

            num_gpus = 1 if cfg.labels.device.startswith("cuda") else 0
            done = [s for batch in label_with_ray(cfg.output, target, _labeler_spec(cfg, target), todo,
                                                  cfg.labels.shards_per_task, num_gpus) for s in batch]
        else:
            done = label_shards(cfg.output, target, load_labeler(target, **_labeler_spec(cfg, target)), todo)
        counts[target] = len(done)
        print(f"labels {target}: {len(done)} shards labelled in {time.monotonic() - start:.1f}s", file=stream, flush=True)
    return counts


def run_probes(cfg: RunConfig, use_ray: bool = True, stream: TextIO | None = None):
    """Fit and score the probe grid for the main model and its control variants; returns the metrics table."""
    require_run(cfg, "probe")
    stream = stream or sys.stderr
    p = cfg.probes
    variants = ("ldm",) + tuple(v for v in p.controls if v in control_configs(cfg))
    data = prepare_grid_data(cfg.output, tuple(p.targets), variants, p.mode, p.seed, p.bootstrap)
    groups = plan_groups(cfg.output, variants, p.hooks, p.steps)
    fit_many = None
    if use_ray:
        from workflows.ray_grid import fit_groups_with_ray

        fit_many = fit_groups_with_ray(cfg.output, data)
    progress = Progress(total=len(groups), unit="probe groups", every=cfg.progress_every, stream=stream)
    table = run_grid(cfg.output, groups, data, fit_many=fit_many, progress=progress.update)
    progress.update(force=True)
    print(f"probes: {table.num_rows} probes scored on {len(data.test)} test images -> "
          f"{cfg.output}/probes/metrics.parquet", file=stream, flush=True)
    return table


def run_intervene(cfg: RunConfig, use_ray: bool = True, address: str | None = None, fresh: bool = False) -> bool:
    """The interventions stage with the config's `interventions` section and the run's labelers, then the
    moving-object GIF (`workflows.animate`) with the same edit settings."""
    from workflows.config import intervention_config
    from workflows.interventions import run_interventions

    require_run(cfg, "intervene")

    specs = {t: dataclasses.asdict(getattr(cfg.labels, t)) for t in cfg.probes.targets}
    icfg = intervention_config(cfg)
    result = run_interventions(cfg.output, icfg, use_ray=use_ray, address=address, labeler_specs=specs, fresh=fresh)
    if result.ok and "saliency" in icfg.tasks:  # the paper's moving object, for the report (seconds: 12 frames)
        if use_ray:
            from workflows.ray_interventions import animate_on_ray

            animate_on_ray(cfg.output, result.config, address)
        else:
            from workflows.animate import animate_run

            animate_run(cfg.output, cfg=result.config)
    return result.ok


def run_report(cfg: RunConfig):
    """Write `<output>/report/index.html` from whatever stages have run; returns its path."""
    from workflows.report import build_report

    require_run(cfg, "report")

    return build_report(cfg.output)
