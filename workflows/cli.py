"""The `sceneprobe` command line. User errors print as one line (exit 2); `--debug` shows the traceback."""

from __future__ import annotations

import argparse
import sys

from workflows.config import METHODS, STAGES


def cmd_patch(args: argparse.Namespace) -> int:
    """The patching map alone (the intervene stage also runs it first when interventions.patching is set)."""
    from workflows.config import PatchingConfig, load_config
    from workflows.pipeline import patch
    from workflows.stages.image_source import refuse_edits
    from workflows.store import require_run
    from workflows.store.lease import Holding

    cfg = load_config(args.config, list(args.set) + ([f"output={args.output}"] if args.output else []))
    if cfg.interventions.patching is None:  # the subcommand asks for the map: the section's defaults
        cfg.interventions.patching = PatchingConfig()
    refuse_edits(cfg, "patch")
    require_run(cfg, "patch")  # before the lease: a missing run leaves no folder behind
    with Holding(cfg.output):
        ok = patch(cfg, not args.no_ray, args.address, args.fresh, sys.stderr)
    return 0 if ok else 1


def cmd_hooks(args: argparse.Namespace) -> int:
    """Print the hook table of a model without loading its weights."""
    from ldm.architecture import describe_hook_points
    from ldm.hooks import format_hook_table

    points = describe_hook_points(args.model, height=args.height, width=args.width)
    print(format_hook_table(points))
    denoiser = [p for p in points if p.kind != "extra"]
    what = "self-attention" if denoiser[0].kind == "unet" else "transformer"
    print(f"\n{len(denoiser)} {what} hook points; extras: {', '.join(p.name for p in points if p.kind == 'extra')}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole main job on the toy model through a local Ray head and `ray job submit`."""
    from workflows.demo import run_demo

    return run_demo(args.config, args.output)


def cmd_plan(args: argparse.Namespace) -> int:
    """Print store sizes, probe counts and (with measured costs) device-hours of a run config."""
    from workflows.config import load_config
    from workflows.report.plan import format_plan, load_costs, plan_run

    cfg = load_config(args.config, args.set)
    print(format_plan(cfg, plan_run(cfg, costs=load_costs(args.costs))))
    return 0


def cmd_animate(args: argparse.Namespace) -> int:
    """The moving-object animation: slide a test image's salient mask across the frame with edits (a GIF)."""
    from dataclasses import replace

    from workflows.stages.animate import GIF, animate_run, stage_settings

    given = {"saliency_steps": args.steps, "saliency_hooks": args.hooks, "strength": args.strength}
    if args.strength is not None:  # a given strength replaces the stage's calibrated one
        given["chosen"] = {}
    cfg = replace(stage_settings(args.run), **{k: v for k, v in given.items() if v is not None})
    anim = animate_run(args.run, args.image, frames=args.frames, extent=args.extent, axis=args.axis,
                       method=args.method, cfg=cfg, out=args.out, device=args.device)
    print(f"{args.out or args.run.rstrip('/') + '/' + GIF}: image {anim.image} ({anim.prompt!r}, seed {anim.seed}), "
          f"{len(anim.frames)} frames, {anim.method} edits")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Every chunk of the run (and its variants) through its checksum; exit 1 if any is damaged."""
    from workflows.store import load_run_config
    from workflows.store.lease import Holding
    from workflows.store.verify import verify

    load_run_config(args.run)  # a folder without a run is one error, before a lease is written into it
    if args.dry_run:
        return 1 if verify(args.run, dry_run=True) else 0
    with Holding(args.run):  # marking shards while a run writes them would race it
        return 1 if verify(args.run) else 0


def cmd_findings(args: argparse.Namespace) -> int:
    """The headline comparison of a probed run, as Markdown (and the curves as SVG with --svg)."""
    from workflows.report.findings import format_findings, write_finding_charts
    from workflows.stages.ceilings import read_ceilings
    from workflows.stages.grid import read_metrics

    rows = read_metrics(args.run).to_pylist()
    ceilings = read_ceilings(args.run)  # toy runs: each labeler against exact truth
    print(format_findings(rows, args.margin, args.metric, ceilings))
    for path in write_finding_charts(rows, args.svg, ceilings) if args.svg else []:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Two probed runs side by side, by step and by relative depth (Markdown; HTML and SVG on request)."""
    from workflows.report.compare import compare_runs, format_comparison, load_run, write_charts, write_page

    a, b = load_run(args.run_a, "A"), load_run(args.run_b, "B")
    comparisons = compare_runs(a, b)
    print(format_comparison(a, b, comparisons))
    written = (write_charts(comparisons, args.svg) if args.svg else []) + (
        [str(write_page(a, b, comparisons, args.html))] if args.html else [])
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_toy_train(args: argparse.Namespace) -> int:
    """Retrain the embedded toy world from scratch: the labelers, the LDM, then its decoder (docs/toy-ldm.md)."""
    from ldm.toy import finetune_decoder, train_labelers, train_ldm

    if not (args.skip_labelers or args.resume):
        train_labelers.main(["--threads", str(args.threads)])
    train_ldm.main(["--out", args.out, "--state-dir", args.state_dir, "--vae-steps", str(args.vae_steps),
                    "--unet-steps", str(args.unet_steps), "--max-minutes", str(args.max_minutes),
                    "--threads", str(args.threads)]
                   + (["--resume"] if args.resume else []) + (["--init-from", args.init_from] if args.init_from else []))
    if args.decoder_steps > 0:
        finetune_decoder.main(["--model", args.out, "--steps", str(args.decoder_steps), "--threads", str(args.threads)])
    return 0


def cmd_toy_quality(args: argparse.Namespace) -> int:
    """Measure the toy LDM on held-out captions (object found, colour match) and write the contact sheet."""
    from ldm.toy import quality

    quality.main(["--model", args.model, "--n", str(args.n), "--sheet", args.sheet, "--json", args.json,
                  "--vae-sheet", args.vae_sheet])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sceneprobe", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_commands(sub)
    add_tool_commands(sub)
    add_toy_commands(sub)
    return parser


def add_run_commands(sub) -> None:
    """`run`, one subcommand per stage, and `status`: `workflows.run`, the entry point `ray job submit` runs too."""
    from workflows.run import add_arguments, run_command, status_command

    run = sub.add_parser("run", help="run every stage of a config (resumable with --resume)")
    add_arguments(run)
    run.set_defaults(func=lambda a: run_command(a, STAGES))
    single = {
        "generate": "generate images and activations into the run's store (Ray)",
        "controls": "generate the control variants (the permuted-weights U-Net) into variants/",
        "label": "pseudo-label the finished images (depth, salient object; normals and light on the toy model)",
        "probe": "fit and score the probe grid with its controls",
        "intervene": "edit activations so probes read moved masks / shifted depth, and score the images",
        "report": "write <output>/report/index.html",
    }
    for stage, help_text in single.items():
        parser_ = sub.add_parser(stage, help=help_text)
        add_arguments(parser_)
        if stage == "intervene":
            parser_.add_argument("--fresh", action="store_true",
                                 help="discard earlier edit results (the patching map is kept: `patch --fresh`)")
        parser_.set_defaults(func=lambda a, stage=stage: run_command(a, (stage,)))
    patch = sub.add_parser("patch", help="the activation-patching map on training pairs (interventions.patching)")
    add_arguments(patch)
    patch.add_argument("--fresh", action="store_true", help="discard an earlier patching map")
    patch.set_defaults(func=cmd_patch)
    status = sub.add_parser("status", help="show a run's shard states")
    status.add_argument("run", help="a run's output location, or its config file")
    status.set_defaults(func=status_command)
    verify = sub.add_parser("verify", help="check every stored chunk's checksum; mark damaged shards for --resume")
    verify.add_argument("run", help="a run's output location")
    verify.add_argument("--dry-run", action="store_true", help="list damaged chunks without marking their shards")
    verify.set_defaults(func=cmd_verify)


def add_tool_commands(sub) -> None:
    """Commands around a run: hook tables, the plan, the demo, the animation, the findings, the two-run comparison."""
    hooks = sub.add_parser("hooks", help="list a model's hook points (self-attention outputs or transformer blocks, and extras)")
    hooks.add_argument("model", help='"toy", a local diffusers folder, or a hub id in the local cache')
    hooks.add_argument("--height", type=int, default=None, help="image height in pixels (default: native)")
    hooks.add_argument("--width", type=int, default=None, help="image width in pixels (default: native)")
    hooks.set_defaults(func=cmd_hooks)

    plan = sub.add_parser("plan", help="print what a run will store and cost, before running it")
    plan.add_argument("config", help="run config (YAML or TOML)")
    plan.add_argument("--costs", default=None,
                      help="JSON of measured costs (benchmarks/bench_generate.py --costs, bench_edits.py --costs)")
    plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    plan.set_defaults(func=cmd_plan)

    demo = sub.add_parser("demo", help="the whole main job on the toy model via a local Ray head and ray job submit")
    demo.add_argument("--config", default="configs/demo.yaml")
    demo.add_argument("--output", default="runs/demo")
    demo.set_defaults(func=cmd_demo)

    animate = sub.add_parser("animate", help="the moving-object GIF: edits slide a test image's salient object")
    animate.add_argument("run", help="a run's output location (generated, labelled and probed)")
    animate.add_argument("--image", type=int, default=None, help="run image id of a test image (default: the first)")
    animate.add_argument("--frames", type=int, default=12)
    animate.add_argument("--extent", type=float, default=0.3, help="slide from -extent to +extent of the frame")
    animate.add_argument("--axis", choices=("x", "y"), default="x")
    animate.add_argument("--method", choices=METHODS, default="closed-form")
    animate.add_argument("--steps", type=lambda v: [int(s) for s in v.split(",")], default=None,
                         help="edited steps, e.g. 0,1,2,3,4 (default: the run's interventions settings)")
    animate.add_argument("--hooks", type=lambda v: v if v == "all" else v.split(","), default=None,
                         help='edited hooks, comma-separated, or "all" (default: the run\'s interventions settings)')
    animate.add_argument("--strength", type=float, default=None,
                         help="edit strength (default: the run's interventions settings, calibrated or given)")
    animate.add_argument("--out", default=None, help="GIF path (default: <run>/interventions/moving_object.gif)")
    animate.add_argument("--device", default="auto")
    animate.set_defaults(func=cmd_animate)

    findings = sub.add_parser("findings", help="the LDM's best layer against the controls, step by step (Markdown)")
    findings.add_argument("run", help="a run's output location whose probe stage is done")
    findings.add_argument("--margin", type=float, default=0.15, help="the claim's margin over each control")
    findings.add_argument("--svg", default="", help="also write the curves as SVG-<target>.svg")
    findings.add_argument("--metric", default=None,
                          help="judge on this measure instead of the headline (dev_pos: saliency beyond position)")
    findings.set_defaults(func=cmd_findings)

    compare = sub.add_parser("compare", help="two probed runs side by side: each target by step and by relative depth")
    compare.add_argument("run_a", help="a probed run's output location (A, e.g. runs/toy)")
    compare.add_argument("run_b", help="another probed run's output location (B, e.g. runs/toy-dit-run)")
    compare.add_argument("--html", default="", help="also write the view as an HTML page here")
    compare.add_argument("--svg", default="", help="also write the charts as SVG-<target>-by-{step,depth}.svg")
    compare.set_defaults(func=cmd_compare)


def add_toy_commands(sub) -> None:
    """The embedded toy world: retrain it, measure it."""
    toy = sub.add_parser("toy", help="the embedded toy world: retrain it, measure it").add_subparsers(
        dest="toy_command", required=True)
    train = toy.add_parser("train", help="retrain the toy labelers and the toy LDM from scratch (hours on 2 cores)")
    train.add_argument("--out", default="ldm/toy/checkpoint", help="where the LDM pipeline folder goes")
    train.add_argument("--state-dir", default="runs/toy-ldm-state", help="resumable training state")
    train.add_argument("--vae-steps", type=int, default=1200,
                       help="stage-1 VAE steps (the shipped checkpoint: 1200; 4000 keeps more colour, docs/toy-ldm.md)")
    train.add_argument("--unet-steps", type=int, default=20000)
    train.add_argument("--max-minutes", type=float, default=0.0, help="wall-clock cap (0 = none); resume later")
    train.add_argument("--threads", type=int, default=1)
    train.add_argument("--resume", action="store_true", help="continue the LDM from --state-dir (labelers kept)")
    train.add_argument("--skip-labelers", action="store_true", help="keep the shipped labelers")
    train.add_argument("--init-from", default="",
                       help="start the LDM from this toy pipeline's weights (fine-tune) instead of random ones")
    train.add_argument("--decoder-steps", type=int, default=1500,
                       help="then fine-tune the VAE decoder alone this many steps (0 = skip)")
    train.set_defaults(func=cmd_toy_train)
    quality = toy.add_parser("quality", help="measure a toy LDM on 256 held-out captions; write the contact sheet")
    quality.add_argument("--model", default="toy", help="toy (the U-Net), toy-dit (the DiT) or a pipeline folder")
    quality.add_argument("--n", type=int, default=256)
    quality.add_argument("--sheet", default="", help="contact sheet PNG path (64 samples with their labels)")
    quality.add_argument("--json", default="", help="write the numbers here")
    quality.add_argument("--vae-sheet", default="", help="PNG of 8 held-out renders above their VAE round trips")
    quality.set_defaults(func=cmd_toy_quality)


def main(argv: list[str] | None = None) -> int:
    from workflows.run import exit_status

    args = build_parser().parse_args(argv)
    return exit_status(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
