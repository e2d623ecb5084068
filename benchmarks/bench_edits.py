"""Closed-form against paper-mode (Adam) edits on the same images and targets: time per edit and success.

Usage:  .venv/bin/python benchmarks/bench_edits.py                          (toy model and toy labelers)
        .venv/bin/python benchmarks/bench_edits.py --model PATH --labeler simple --steps 6 --train 16 --test 3
                                                                             (any diffusers folder, e.g. a tiny one)

1. Generates `--train` toy-world prompts with activation capture at the edited (hook, step) pairs, labels them with the
   saliency labeler, and fits a saliency probe per (hook, step) (`probes.fit.fit_probe`).
2. Generates `--test` held-out images, labels them, and draws `--targets` translated masks per image
   (`probes.targets`, the paper's ranges, seed 0).
3. For each method, renders every (image, target) with edits at the chosen layers and steps (default: the paper's
   saliency setting, up blocks at steps 0-4), re-labels the results and scores Dice(new mask, target) against
   Dice(original mask, target), and measures each edited image's integrity exactly as the interventions stage does
   (`workflows.stages.edit_units.integrity`: background and VAE-latent distance beside a new-seed redraw, the
   object's colours; `workflows.stages.interventions.judge` with the stage's default thresholds). Strengths: each of
   `--strengths`, or with `--calibrate` each method's own, chosen by integrity-aware success on the first
   `--calibrate-images` training scenes (the random control takes the closed form's).

Prints, per method: seconds per edit inside the edit functions (what the methods differ in) and for the whole edited
generation, mean Dice before/after with the gain's 95% bootstrap interval over images, and the success rate (moved
AND intact) with its interval; then the speed-up of closed-form over paper at their success. `--json PATH` also
writes the numbers.

4. With `--patching-pairs N`: the patching map's cost (`workflows.stages.patching.run_pair`, as the stage runs it) on
   the first N training scenes, at the edited layers and steps, both views: seconds per pair and per patched image
   (`--test 0`: that alone).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.capture import ArraySink, capture  # noqa: E402
from ldm.labelers import Labeler  # noqa: E402
from ldm.loading import load_model  # noqa: E402
from ldm.toy.render import HELD_OUT_SEED, render_batch  # noqa: E402
from probes.fit import fit_probe  # noqa: E402
from probes.metrics import bootstrap_ci  # noqa: E402
from workflows.stages.edit_units import Unit, Worker, colour_check_for, integrity  # noqa: E402
from workflows.stages.edits import EditStats, run_edits, score  # noqa: E402
from workflows.config import InterventionConfig, default_hooks  # noqa: E402
from workflows.stages.interventions import choose_strengths, judge  # noqa: E402
from probes.targets import draw_translations, make_targets  # noqa: E402
from workflows.config import EditSettings, PatchingConfig, TargetSpec  # noqa: E402
from workflows.stages.patching import Pair, PatchWorker, run_pair  # noqa: E402


def simple_labeler() -> Labeler:
    """For random-weight pipelines: brighter than the image's median counts as salient."""

    def label(images: np.ndarray) -> np.ndarray:
        gray = images.astype(np.float32).mean(-1)
        return (gray > np.median(gray, axis=(1, 2), keepdims=True)).astype(np.float32)

    return Labeler("simple-saliency", "v1", "saliency", label)


def generate_batched(model, prompts: list[str], seeds: list[int], batch: int, hooks=None, steps=None):
    """Images `(image, H, W, 3)`, and with `hooks` the captured activations {hook: (image, step, h, w, c)}."""
    images, parts = [], []
    for i in range(0, len(prompts), batch):
        if hooks is None:
            images.append(model.generate(prompts[i:i + batch], seeds[i:i + batch]))
            continue
        sink = ArraySink()  # one per batch: an ArraySink keeps one array per (hook, step)
        with capture(model, sink, hooks=hooks, extras=(), steps=steps):
            images.append(model.generate(prompts[i:i + batch], seeds[i:i + batch]))
        parts.append(sink.arrays)
    acts = {h: np.concatenate([p[h] for p in parts]) for h in (hooks or [])}
    return np.concatenate(images), acts


def fit_saliency_probes(model, labeler, n_train: int, hooks: list[str], steps: list[int], batch: int):
    """Saliency probes per (hook, step) fit on toy training scenes 0..n_train-1, and the activations' mean norm per
    position at those hooks and steps."""
    seeds = list(range(n_train))
    images, acts = generate_batched(model, render_batch(seeds).captions, seeds, batch, hooks, steps)
    masks = (labeler(images) > 0.5).astype(np.float32)  # acts: hook -> (image, step, h, w, c), steps as `steps`
    probes = {(h, s): fit_probe(acts[h][:, k], masks, "saliency") for h in hooks for k, s in enumerate(steps)}
    return probes, float(np.mean([np.linalg.norm(a.astype(np.float32), axis=-1).mean() for a in acts.values()]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy", help='"toy" or a diffusers pipeline folder')
    p.add_argument("--labeler", choices=("toy", "simple"), default="toy")
    p.add_argument("--steps", type=int, default=15, help="denoising steps")
    p.add_argument("--edit-steps", default="0,1,2,3,4", help="edited steps (the paper's saliency default)")
    p.add_argument("--hooks", default=None,
                   help='edited hooks, comma-separated, or "all" U-Net hooks (default: the up blocks)')
    p.add_argument("--train", type=int, default=64, help="images to fit the probes on")
    p.add_argument("--test", type=int, default=8, help="held-out images to edit (0: only --patching-pairs)")
    p.add_argument("--test-offset", type=int, default=0,
                   help="first held-out scene to edit (HELD_OUT_SEED + this): fresh images to confirm a setting chosen "
                        "on the default ones")
    p.add_argument("--targets", type=int, default=5, help="targets per test image")
    p.add_argument("--iters", type=int, default=128, help="Adam iterations of the paper's edit")
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--methods", default="closed-form,paper,random", help="any of closed-form, paper, random")
    p.add_argument("--units", choices=("standardised", "raw"), default="standardised",
                   help="closed-form: minimal edit in the probe's standardised or in raw activation units")
    p.add_argument("--strengths", default="1", help="edit strengths (a' - a scaled), comma-separated: a dose sweep")
    p.add_argument("--calibrate", default=None,
                   help="candidate strengths, comma-separated: each method's strength is chosen on the first "
                        "--calibrate-images training scenes (as the interventions stage's `calibrate`); replaces "
                        "--strengths")
    p.add_argument("--calibrate-images", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--patching-pairs", type=int, default=0,
                   help="also time the patching map on this many training pairs (0: skip)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--costs", default=None, metavar="FILE",
                   help="merge seconds per edit and per patching pair into this costs file (`sceneprobe plan --costs`)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(args.model, steps=args.steps, device=args.device)
    unet = [h.name for h in model.hook_points if h.kind != "extra"]
    hooks = unet if args.hooks == "all" else args.hooks.split(",") if args.hooks else default_hooks("saliency", unet)
    edit_steps = [int(s) for s in args.edit_steps.split(",")]
    if args.labeler == "toy":
        from ldm.labelers import load_saliency_labeler

        labeler = load_saliency_labeler("toy", device=str(model.device))
    else:
        labeler = simple_labeler()
    H, W = model.image_size
    print(f"model {args.model} ({H}x{W}, {args.steps} steps, {model.device}); edits at {len(hooks)} hooks x steps "
          f"{edit_steps}; {args.train} train / {args.test} test images (held-out scenes {args.test_offset}+) x "
          f"{args.targets} targets", flush=True)

    if args.test == 0:  # --test 0 --patching-pairs N: the patching cost alone (no probes, no edits)
        patching_cost(model, labeler, hooks, edit_steps, args.patching_pairs, args.batch, colour_check_for(model))
        return 0

    # 1. Probes on the training images.
    t0 = time.perf_counter()
    probes, act_norm = fit_saliency_probes(model, labeler, args.train, hooks, edit_steps, args.batch)
    print(f"probes fit in {time.perf_counter() - t0:.1f}s; mean activation norm per position at the edited layers "
          f"{act_norm:.2f}", flush=True)

    judged_by = InterventionConfig()  # the stage's success thresholds
    worker = Worker(model, {}, {}, None, judged_by, {}, colour_check=colour_check_for(model))

    def images_and_targets(seeds: list[int]):
        prompts = render_batch(seeds).captions
        unedited = generate_batched(model, prompts, seeds, args.batch)[0]
        masks = (labeler(unedited) > 0.5).astype(np.float32)
        return prompts, seeds, masks, draw_translations(seeds, TargetSpec(count=args.targets), (H, W)), unedited

    def evaluate(method: str, strength: float, images) -> dict:
        """Edit every (image, target) of `images` with `method` at `strength`; timing, Dice and success (moved and
        intact, judged as in the stage)."""
        prompts, seeds, originals, moves, unedited = images
        gains, after, before, success, norms, edit_s, total_s = [], [], [], [], [], 0.0, 0.0
        for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
            targets = make_targets(originals[i], moves[i], "saliency")
            stats = EditStats(norm=np.zeros(len(targets)))
            start = time.perf_counter()
            settings = EditSettings(hooks=tuple(hooks), steps=tuple(edit_steps), strength=strength, lr=args.lr,
                                    iters=args.iters, units=args.units)
            images = run_edits(model, probes, method, targets, prompt, seed, "saliency", settings, stats=stats,
                               image=i)
            total_s += time.perf_counter() - start
            edit_s += stats.seconds
            norms.append(stats.norm.mean() / max(stats.calls, 1))
            new = labeler(images)
            s = score("saliency", new, originals[i], targets)
            unit = Unit("saliency", method, i, prompt, int(seed), originals[i], moves[i], unedited[i], strength)
            s |= integrity(worker, unit, images, originals[i], targets, new)
            rows = [judge({"task": "saliency", **{k: float(v[t]) for k, v in s.items()}}, judged_by)
                    for t in range(len(targets))]
            gains.append(s["gain"].mean())
            after.append(s["score_after"].mean())
            before.append(s["score_before"].mean())
            success.append(np.mean([r["success"] for r in rows]))
        n = len(seeds) * args.targets
        gain, ok = bootstrap_ci(gains), bootstrap_ci(success)
        return {"edits": n, "strength": strength, "edit_seconds_per_edit": edit_s / n,
                "seconds_per_edit": total_s / n, "dice_before": float(np.mean(before)),
                "dice_after": float(np.mean(after)), "gain": gain.mean, "gain_lo": gain.lo, "gain_hi": gain.hi,
                "success": ok.mean, "success_lo": ok.lo, "success_hi": ok.hi, "edit_norm": float(np.mean(norms)),
                "activation_norm": act_norm}

    def show(name: str, r: dict) -> None:
        print(f"{name:15s} {r['edits']} edits: {r['edit_seconds_per_edit'] * 1e3:9.1f} ms/edit in edits, "
              f"{r['seconds_per_edit']:7.3f} s/edit in total; Dice {r['dice_before']:.3f} -> {r['dice_after']:.3f} "
              f"(gain {r['gain']:+.3f} [{r['gain_lo']:+.3f}, {r['gain_hi']:+.3f}]), success {r['success']:.2f} "
              f"[{r['success_lo']:.2f}, {r['success_hi']:.2f}] (moved and intact), edit norm {r['edit_norm']:.2f}",
              flush=True)

    methods = args.methods.split(",")
    runs = [(m, float(k)) for k in args.strengths.split(",") for m in methods]
    results: dict = {}
    if args.calibrate:
        # 2a. Each edit method's strength, chosen on training scenes (the probes' own), never on the test images.
        calibration = images_and_targets(list(range(args.calibrate_images)))
        # the stage's rules: which methods are calibrated (random takes its reference's), and the best success wins
        cfg = InterventionConfig(tasks=("saliency",), methods=tuple(methods),
                                 calibrate={"saliency": [float(v) for v in args.calibrate.split(",")]})
        table = []
        for method in cfg.calibrated_methods("saliency"):
            tried = {k: evaluate(method, k, calibration) for k in cfg.calibrate["saliency"]}
            table += [{"task": "saliency", "method": method, "strength": k, "gain": r["gain"], "success": r["success"]}
                      for k, r in tried.items()]
            scores = ", ".join(f"x{k:g} gain {r['gain']:+.3f} success {r['success']:.2f}" for k, r in tried.items())
            print(f"calibration {method} on {args.calibrate_images} training scenes: {scores}", flush=True)
        cfg = replace(cfg, chosen=choose_strengths(table))
        print(f"chosen: {', '.join(f'{m} x{k:g}' for m, k in cfg.chosen.items())}", flush=True)
        results["calibration"] = cfg.chosen
        runs = [(m, cfg.strength_of("saliency", m)) for m in methods]

    # 2. Held-out images, their masks and targets; 3. every method on the same images and targets.
    test = images_and_targets(list(range(HELD_OUT_SEED + args.test_offset,
                                         HELD_OUT_SEED + args.test_offset + args.test)))
    for method, strength in runs:
        name = method if strength == 1.0 or args.calibrate else f"{method} x{strength:g}"
        results[name] = evaluate(method, strength, test)
        show(f"{name} x{strength:g}" if args.calibrate else name, results[name])
    if "closed-form" in results and "paper" in results:
        cf, pa = results["closed-form"], results["paper"]
        results["speedup_edit"] = pa["edit_seconds_per_edit"] / max(cf["edit_seconds_per_edit"], 1e-12)
        results["speedup_total"] = pa["seconds_per_edit"] / max(cf["seconds_per_edit"], 1e-12)
        print(f"closed-form vs paper: {results['speedup_edit']:.0f}x faster in the edits, "
              f"{results['speedup_total']:.1f}x per edited image; gain {cf['gain']:+.3f} vs {pa['gain']:+.3f}, "
              f"success {cf['success']:.2f} vs {pa['success']:.2f}")
    if args.patching_pairs:
        results["patching"] = patching_cost(model, labeler, hooks, edit_steps, args.patching_pairs, args.batch,
                                            worker.colour_check)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    if args.costs:
        write_costs(args.costs, results)
    return 0


def write_costs(path: str, results: dict) -> None:
    """Merge seconds per edit (whole edited generation, by method) and per patching pair into the costs file
    `sceneprobe plan --costs` reads (the one `bench_generate.py --costs` writes)."""
    file = Path(path)
    costs = json.loads(file.read_text()) if file.exists() else {}
    per_edit = {m: r["seconds_per_edit"] for m, r in results.items() if isinstance(r, dict) and "seconds_per_edit" in r}
    if per_edit:
        costs["edit_s_per_edit"] = {**costs.get("edit_s_per_edit", {}), **per_edit}
    if "patching" in results:
        costs["patch_s_per_pair"] = results["patching"]["seconds_per_pair"]
    file.write_text(json.dumps(costs, indent=1) + "\n")
    print(f"costs merged into {path}")


def patching_cost(model, labeler, hooks: list[str], steps: list[int], n: int, batch: int, colour_check) -> dict:
    """Step 4: `run_pair` on the first `n` training scenes (layers x steps x both views per pair), timed."""
    seeds = list(range(n))
    prompts = render_batch(seeds).captions
    unedited = generate_batched(model, prompts, seeds, batch)[0]
    masks = labeler(unedited)
    cfg = InterventionConfig(patching=PatchingConfig(pairs=max(n, 2), layers=list(hooks), steps=list(steps),
                                                     batch=16))
    worker = PatchWorker(model, labeler, cfg, list(hooks), list(steps), colour_check)
    seconds, usable, images = [], 0, 0
    for i in range(n):
        start = time.perf_counter()
        record = run_pair(worker, Pair(i, prompts[i], seeds[i], masks[i], unedited[i]))
        seconds.append(time.perf_counter() - start)
        usable += record["pair"]["usable"]
        images = max(images, len(record["rows"]))
    out = {"pairs": n, "usable": usable, "patched_images_per_pair": images, "seconds_per_pair": float(np.mean(seconds))}
    print(f"patching: {n} pairs ({usable} usable), {images} patched images per pair ({len(hooks)} layers x "
          f"{len(steps)} steps x 2 views): {out['seconds_per_pair']:.1f} s per pair, "
          f"{out['seconds_per_pair'] / max(images, 1):.3f} s per patched image (with the pair's candidates)", flush=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
