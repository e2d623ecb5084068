"""`python -m workflows.run CONFIG` (what `ray job submit` runs; `sceneprobe run|generate|...` call the same functions):
arguments -> `workflows.pipeline.run_pipeline`.

    python -m workflows.run configs/toy.yaml                  # new run (refuses an output holding another run)
    python -m workflows.run configs/toy.yaml --resume         # continue: regenerate exactly missing and failed shards
    python -m workflows.run configs/toy.yaml --stage probe    # one stage
    python -m workflows.run --status runs/toy                 # shard states of a run

Exit status: 0 when every stage finished its work, 1 when a stage left work undone (the summary lists it), 2 for a
user's mistake (one `error:` line naming the problem and the fix; `--debug` for the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

from ldm.errors import UserError
from workflows.config import STAGES, load_config
from workflows.pipeline import run_pipeline
from workflows.store import completion_records, failure_records, load_run_config, shard_states
from workflows.store.files import is_disk_full


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


def run_command(args: argparse.Namespace, stages: tuple[str, ...] = STAGES) -> int:
    """`run` / single-stage subcommands: the stages given (one), or those of the config's `stages` among them."""
    overrides = list(args.set) + ([f"output={args.output}"] if args.output else [])
    cfg = load_config(args.config, overrides)
    chosen = tuple(s for s in stages if len(stages) == 1 or s in cfg.stages)
    undone = run_pipeline(cfg, chosen, resume=args.resume, use_ray=not args.no_ray, address=args.address,
                          fresh=getattr(args, "fresh", False))
    if undone:
        print(f"stage {undone} left work undone; fix the cause and rerun with --resume", file=sys.stderr)
        return 1
    return 0


def status_command(args: argparse.Namespace) -> int:
    counts = print_status(args.run)
    return 0 if counts["failed"] == 0 and counts["pending"] == 0 else 1


def exit_status(command, args: argparse.Namespace) -> int:
    """Run `command(args)`; a user's mistake becomes one `error:` line and exit status 2 (`--debug`: the traceback).

    The one place user errors are caught, for every subcommand of `sceneprobe` and for `python -m workflows.run`."""
    try:
        return command(args)
    except KeyboardInterrupt:
        # Ctrl-C: the actors go with the driver, every unit published so far is whole (completion records)
        print("interrupted: every finished unit is kept; run the same command with --resume to continue",
              file=sys.stderr)
        return 130
    except OSError as err:
        if not is_disk_full(err):
            raise
        print(f"error: no space left on device ({err.filename or 'a write'}); free space, then run the same command "
              "with --resume: every finished unit is kept", file=sys.stderr)
        return 2
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
