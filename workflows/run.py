"""Run a configured generation: `python -m workflows.run CONFIG [--resume]` (also what `ray job submit` runs).

    python -m workflows.run configs/toy.yaml                  # new run (refuses an output holding another run)
    python -m workflows.run configs/toy.yaml --resume         # continue: regenerate exactly missing and failed shards
    python -m workflows.run --status runs/toy                 # shard states of a run

`sceneprobe run|generate|status` call the same functions. Exit status: 0 when every image is complete, 1 when shards
failed or were left undone (the summary lists them), 2 for a bad config, prompts file or output location.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from ldm.errors import UserError
from workflows.config import STAGES, ConfigError, RunConfig, load_config
from workflows.generate import Shard, describe, generate_shard, load, make_shards
from workflows.progress import Progress
from workflows.ray_session import ensure_ray
from workflows.prompts import build_plan
from workflows.store import (ShardWriter, bytes_on_disk, check_output, completion_records, create_store, require_run,
                             failure_records, load_layout, load_plan, load_run_config, mark_failed, shard_states,
                             write_manifest)

MANIFEST_EVERY = 5.0  # seconds between manifest rewrites while running (it is rewritten once more at the end)


@dataclass
class Result:
    images: int  # generated in this session
    complete: int  # images complete in the store, this session or earlier
    total: int
    failed_shards: list[int] = field(default_factory=list)
    pending_shards: list[int] = field(default_factory=list)
    bytes_written: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.complete == self.total


def check_inputs(cfg: RunConfig) -> None:
    """Fail before Ray or any actor starts on what can be checked cheaply here. (A hub id is only checked by the
    actors: on a cluster the weights may be on the GPU nodes and not on the driver's.)"""
    if cfg.backend == "ldm":
        from ldm.loading import check_options

        check_options(cfg.model, cfg.scheduler, cfg.dtype)
    if "://" not in cfg.output and os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") and not os.path.isabs(cfg.output):
        raise ConfigError(f"output {cfg.output!r} is relative: inside `ray job submit` it would land in the job's "
                          "temporary working directory. Give an absolute path or a URL, e.g. --output $PWD/runs/toy")


def generate(cfg: RunConfig, resume: bool = False, use_ray: bool = True, address: str | None = None,
             stream: TextIO | None = None) -> Result:
    """Generate every image of the run that is not complete yet; see the module docstring for the semantics."""
    stream = stream or sys.stderr
    check_inputs(cfg)
    resumed = check_output(cfg, resume)
    plan = load_plan(cfg.output) if resumed else build_plan(cfg)  # a resumed run keeps its stored items and splits
    shards = make_shards(plan, cfg.shard_size)
    done = completion_records(cfg.output) if resumed else {}
    todo = [s for s in shards if s.index not in done]
    failed: set[int] = set()
    progress = Progress(total=len(plan), already=sum(s.stop - s.start for s in shards if s.index in done),
                        every=cfg.progress_every, stream=stream)
    last_manifest = [time.monotonic()]

    def on_done(shard: Shard, record: dict) -> None:
        done[shard.index] = record
        failed.discard(shard.index)
        progress.update(done=shard.stop - shard.start)
        if time.monotonic() - last_manifest[0] > MANIFEST_EVERY:
            write_manifest(cfg.output, plan, cfg.shard_size, done, failed)
            last_manifest[0] = time.monotonic()

    def on_failed(shard: Shard, error: str) -> None:
        failed.add(shard.index)
        mark_failed(cfg.output, shard.index, {"shard": shard.index, "status": "failed", "error": error})
        print(f"shard {shard.index} (images {shard.start}-{shard.stop - 1}) failed: {error}", file=stream, flush=True)
        progress.update(failed=shard.stop - shard.start)

    print(f"{'resuming' if resumed else 'starting'} run {cfg.output}: {len(plan)} images "
          f"({plan.count('train')} train, {plan.count('test')} test) in {len(shards)} shards, "
          f"{len(todo)} to generate", file=stream, flush=True)
    left: list[Shard] = []
    if todo or not resumed:
        if use_ray:
            left = _run_ray(cfg, resumed, plan, todo, on_done, on_failed, progress, address)
        else:
            left = _run_local(cfg, resumed, plan, todo, on_done, on_failed)
    write_manifest(cfg.output, plan, cfg.shard_size, done, failed)
    progress.update(force=True)
    result = Result(images=progress.done, complete=sum(s.stop - s.start for s in shards if s.index in done),
                    total=len(plan), failed_shards=sorted(failed), pending_shards=sorted(s.index for s in left),
                    bytes_written=bytes_on_disk(cfg.output), seconds=time.monotonic() - progress.start)
    print(progress.summary(result.bytes_written, result.failed_shards, result.pending_shards), file=stream, flush=True)
    return result


def _run_local(cfg, resumed, plan, todo, on_done, on_failed) -> list[Shard]:
    """The same run in this process, one shard after another (tests, debugging, no Ray)."""
    model = load(cfg, device="auto")
    if not resumed:
        create_store(cfg, plan, describe(model, cfg))
    with ShardWriter(cfg.output) as writer:
        for shard in todo:
            for attempt in range(cfg.max_retries + 1):
                try:
                    on_done(shard, generate_shard(model, cfg, shard, writer, attempt))
                    break
                except (OSError, RuntimeError, ValueError) as err:  # disk full, CUDA OOM, ...: retry, then report
                    if attempt == cfg.max_retries:
                        on_failed(shard, f"{type(err).__name__}: {err}")
    return []


def _run_ray(cfg, resumed, plan, todo, on_done, on_failed, progress, address) -> list[Shard]:
    import ray

    from workflows.ray_generate import describe_on, run_shards, start_actors

    ensure_ray(address)
    actors = start_actors(cfg, max_actors=max(len(todo), 1))
    if not resumed:
        create_store(cfg, plan, describe_on(actors[0]))
    else:
        load_layout(cfg.output)  # fails early on a store that is not ours
    try:
        return run_shards(cfg, actors, todo, on_done, on_failed, on_tick=progress.update)
    finally:
        for actor in actors:
            ray.kill(actor)


def print_status(run: str, stream: TextIO | None = None) -> dict[str, int]:
    """Print a run's shard states; `run` is its output location or its config file."""
    stream = stream or sys.stdout
    if run.endswith((".yaml", ".yml", ".toml")) and os.path.isfile(run):
        run = load_config(run).output
    cfg = load_run_config(run)
    states = shard_states(run)
    counts = {s: states.count(s) for s in ("complete", "failed", "pending")}
    print(f"run {run}: {len(states)} shards of {cfg.shard_size} images: "
          + ", ".join(f"{n} {s}" for s, n in counts.items()), file=stream)
    fails = failure_records(run)
    done = completion_records(run)
    for k, state in enumerate(states):
        extra = fails[k].get("error", "") if state == "failed" else f"{done[k]['seconds']}s" if state == "complete" else ""
        print(f"  shard {k:6d}  {state:8s}  {extra}", file=stream)
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run config file (YAML or TOML)")
    parser.add_argument("--resume", action="store_true", help="continue the run in the config's output location")
    parser.add_argument("--output", help="override the config's output location (path or URL)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set num_images=8 --set prompts.first_seed=5")
    parser.add_argument("--address", help="Ray cluster to use, e.g. auto (one started with `ray start` here) or "
                        "HOST:PORT (default: RAY_ADDRESS, else a new local cluster)")
    parser.add_argument("--no-ray", action="store_true", help="run in this process without Ray")


def run_stage(stage: str, cfg: RunConfig, args: argparse.Namespace) -> bool:
    """Run one stage; returns whether it finished everything it had to do."""
    from workflows import stages

    use_ray = not args.no_ray
    if stage == "generate":
        return generate(cfg, resume=args.resume, use_ray=use_ray, address=args.address).ok
    if stage == "controls":
        return all(r.ok for r in stages.run_controls(cfg, use_ray=use_ray, address=args.address).values())
    if stage == "label":
        stages.run_labels(cfg, use_ray=use_ray)
        return True
    if stage == "probe":
        stages.run_probes(cfg, use_ray=use_ray)
        return True
    if stage == "intervene":
        return stages.run_intervene(cfg, use_ray=use_ray, address=args.address, fresh=getattr(args, "fresh", False))
    if stage == "report":
        print(f"report: {stages.run_report(cfg)}", file=sys.stderr, flush=True)
        return True
    raise ValueError(f"unknown stage {stage!r}")


def run_command(args: argparse.Namespace, stages: tuple[str, ...] = STAGES) -> int:
    """`run` / `generate` / single-stage subcommands: returns the exit status.

    A stage that leaves work undone (failed shards) stops the chain: later stages would run on partial data.
    """
    overrides = list(args.set) + ([f"output={args.output}"] if args.output else [])
    cfg = load_config(args.config, overrides)
    chosen = [s for s in stages if len(stages) == 1 or s in cfg.stages]
    # What can be refused cheaply is refused before Ray starts: inputs of a generation, a missing run otherwise.
    if "generate" in chosen or "controls" in chosen:
        check_inputs(cfg)
        if "generate" in chosen and not check_output(cfg, args.resume):
            build_plan(cfg)  # a new run's prompts: a missing file or column is named now
    else:
        require_run(cfg, chosen[0])
    if not args.no_ray:
        ensure_ray(args.address)  # one Ray session for every stage of this command
    for stage in chosen:
        if not run_stage(stage, cfg, args):
            print(f"stage {stage} left work undone; fix the cause and rerun with --resume", file=sys.stderr)
            return 1
        args.resume = True  # later stages of the same command continue this run
    return 0


def status_command(args: argparse.Namespace) -> int:
    counts = print_status(args.run)
    return 0 if counts["failed"] == 0 and counts["pending"] == 0 else 1


def exit_status(command, args: argparse.Namespace) -> int:
    """Run `command(args)`; a user's mistake becomes one `error:` line and exit status 2 (`--debug`: the traceback).

    The one place user errors are caught, for every subcommand of `sceneprobe` and for `python -m workflows.run`."""
    try:
        return command(args)
    except UserError as err:
        if getattr(args, "debug", False):
            raise
        cause = getattr(err, "cause", None)  # raised in a Ray task or actor: its own message, not the remote traceback
        message = cause if isinstance(cause, UserError) else err
        print("error: " + " ".join(str(message).split("\n")), file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--status"]:
        parser = argparse.ArgumentParser(prog="python -m workflows.run --status")
        parser.add_argument("run", help="a run's output location, or its config file")
        return exit_status(status_command, parser.parse_args(argv[1:]))
    parser = argparse.ArgumentParser(prog="python -m workflows.run", description="Generate a configured run.")
    add_arguments(parser)
    parser.add_argument("--stage", choices=STAGES, action="append", help="only these stages (default: all)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    args = parser.parse_args(argv)
    return exit_status(lambda a: run_command(a, tuple(a.stage) if a.stage else STAGES), args)


if __name__ == "__main__":
    sys.exit(main())
