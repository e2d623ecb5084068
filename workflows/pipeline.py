"""The run, in stage order: generate, controls, label, probe, intervene, report; locally or on Ray.

Every stage is a plain function of the run config (`workflows.stages`) that takes its executor: here is where a run
chooses between this process and Ray's actor pools and tasks (`workflows.ray`). Every stage is resumable on its own
and skips finished work; a stage that leaves work undone (failed shards or units) stops the chain, since later stages
would run on partial data.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import TextIO

from ldm.captions import check_text_encoder
from workflows.config import STAGES, RunConfig
from workflows.ray.generate import shard_runner
from workflows.ray.interventions import animate_on_ray, unit_runner
from workflows.ray.patching import pair_runner
from workflows.ray.session import ensure_ray
from workflows.ray.tasks import fit_groups_with_ray, label_runner
from workflows.report.page import build_report
from workflows.stages.animate import animate_run
from workflows.stages.generate import check_inputs, generate, generate_controls, local_runner
from workflows.stages.grid import probe_run
from workflows.stages.image_source import check_run_inputs, refuse_edits
from workflows.stages.interventions import run_interventions
from workflows.stages.labels import check_run_labelers, label_run
from workflows.stages.patching_stage import run_patching
from workflows.store import check_output, require_run
from workflows.store.lease import Holding


def check_before_start(cfg: RunConfig, stages: tuple[str, ...], resume: bool) -> None:
    """Refuse what can be refused cheaply, before Ray starts: a generation's inputs (model, scheduler, dtype, output,
    prompts), a missing run for the later stages, a probe target without a labeler for this model's images, a caption
    control for a model without a text encoder."""
    if "intervene" in stages:
        refuse_edits(cfg, "intervene")
    if "label" in stages:  # first: a config-only check, before the model is looked up
        check_run_labelers(cfg)
    if "generate" in stages or "controls" in stages:
        check_inputs(cfg, in_ray_job=bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")))
        if "generate" in stages and not check_output(cfg, resume):
            check_run_inputs(cfg)  # a new run's prompts or images: a missing file or column is named now
    else:
        require_run(cfg, stages[0])
    if "probe" in stages and "caption" in cfg.probes.controls:
        check_text_encoder(cfg.model)


def run_pipeline(cfg: RunConfig, stages: tuple[str, ...] = STAGES, *, resume: bool = False, use_ray: bool = True,
                 address: str | None = None, fresh: bool = False, stream: TextIO | None = None) -> str | None:
    """Run `stages` of `cfg`, in the order of STAGES; returns the first stage that left work undone, or None."""
    stream = stream or sys.stderr
    stages = tuple(s for s in STAGES if s in stages)
    if not stages:
        return None
    check_before_start(cfg, stages, resume)
    with Holding(cfg.output, stream=stream) as lease:  # one run per output: a second one is refused by name
        return run_stages(cfg, stages, resume, use_ray, address, fresh, stream, lease.check)


def run_stages(cfg: RunConfig, stages: tuple[str, ...], resume: bool, use_ray: bool, address: str | None,
               fresh: bool, stream: TextIO, still_ours) -> str | None:
    """The stages, in order, while this run holds the output's lease (`still_ours()` raises once it does not)."""
    if use_ray:
        ensure_ray(address)  # one Ray session for every stage

    def shards(c: RunConfig):
        return shard_runner(c, address) if use_ray else local_runner(c)

    # 1. Generate: images and every hook point's activations, shard by shard, into the store.
    if "generate" in stages:
        if not generate(cfg, resume=resume, run_shards=shards(cfg), stream=stream).ok:
            return "generate"
    # 2. Controls: the same prompts and seeds through the permuted-weights U-Net, into variants/.
    still_ours()
    if "controls" in stages:
        if not all(r.ok for r in generate_controls(cfg, runner=shards, stream=stream).values()):
            return "controls"
    # 3. Label: pseudo-labels for every finished shard, per target.
    still_ours()
    if "label" in stages:
        label_run(cfg, label_runner(cfg) if use_ray else None, stream=stream)
    # 4. Probe: the probe grid with its controls, scored on the test split.
    still_ours()
    if "probe" in stages:
        probe_run(cfg, (lambda data: fit_groups_with_ray(cfg.output, data)) if use_ray else None, stream=stream)
    # 5. Intervene: the patching map on training pairs (when enabled), edits along the probes, re-labelled and scored;
    #    then the moving-object GIF.
    still_ours()
    if "intervene" in stages and not intervene(cfg, use_ray, address, fresh, stream):
        return "intervene"
    # 6. Report: <output>/report/index.html from whatever stages have run.
    still_ours()
    if "report" in stages:
        require_run(cfg, "report")
        print(f"report: {build_report(cfg.output)}", file=stream, flush=True)
    return None


def intervene(cfg: RunConfig, use_ray: bool, address: str | None, fresh: bool, stream: TextIO) -> bool:
    """The interventions stage with the config's `interventions` section and the run's labelers, then the
    moving-object GIF with the same edit settings (the paper's application, for the report)."""
    require_run(cfg, "intervene")
    specs = {t: dataclasses.asdict(getattr(cfg.labels, t)) for t in cfg.probes.targets}
    icfg = cfg.interventions
    # the map is resumed even with --fresh, which discards the edits only: it costs more than the edits, and a map made
    # with other settings is refused by name (`sceneprobe patch CONFIG --fresh` starts it over)
    if icfg.patching is not None and not patch(cfg, use_ray, address, False, stream):
        return False
    runner = unit_runner(cfg.output, icfg, labeler_specs=specs, address=address) if use_ray else None
    result = run_interventions(cfg.output, icfg, run_units=runner, fresh=fresh, stream=stream, labeler_specs=specs)
    if result.ok and "saliency" in icfg.tasks:
        if use_ray:
            animate_on_ray(cfg.output, result.config, address)
        else:
            animate_run(cfg.output, cfg=result.config)
    return result.ok


def patch(cfg: RunConfig, use_ray: bool, address: str | None, fresh: bool, stream: TextIO) -> bool:
    """The patching map (`interventions.patching`) on the run's training pairs, on the actor pool or in this process
    (`sceneprobe patch CONFIG`; the intervene stage runs it first when the section is set)."""
    require_run(cfg, "patch")
    specs = {"saliency": dataclasses.asdict(cfg.labels.saliency)}
    icfg = cfg.interventions
    runner = pair_runner(cfg.output, icfg, labeler_specs=specs, address=address) if use_ray else None
    return run_patching(cfg.output, icfg, run_pairs=runner, fresh=fresh, stream=stream, labeler_specs=specs).ok
