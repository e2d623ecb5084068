"""How much an edit's success depends on the probes behind it: a run's stage edits again, with other probes.

Usage:  .venv/bin/python benchmarks/edit_probes.py --run runs/toy --train 64 --images 8

On the run's first `--images` test images, with the targets and settings its interventions stage used
(`interventions/config.json`), closed-form edits are rendered and scored three times, changing only the probes:
1. the run's own probes (the probe stage's weights);
2. probes refit by the current code on the same activations and labels (is the stage's result the code's?);
3. probes fit as `bench_edits.py` fits them: on toy training scenes 0..`--train`-1, generated afresh (the run's
   training images are scenes 0..n-1 too, so this changes the number of images, and with it the validation split).
Prints each set's mean Dice gain to target and per-image gains, and for a few (hook, step) pairs the chosen alphas,
the weights' cosine and norm.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_edits import fit_saliency_probes  # noqa: E402
from ldm.labelers import load_saliency_labeler  # noqa: E402
from probes.fit import fit_probe  # noqa: E402
from workflows.stages.animate import stage_settings  # noqa: E402
from workflows.stages.edits import run_edits, score  # noqa: E402
from workflows.stages.shard import load  # noqa: E402
from workflows.stages.grid import ProbeGroup, prepare_grid_data, read_activations  # noqa: E402
from workflows.stages.edit_units import gather_inputs  # noqa: E402
from workflows.store import load_run_config  # noqa: E402
from probes.targets import draw_translations, make_targets  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/toy")
    p.add_argument("--train", type=int, default=64, help="toy training scenes for the benchmark-style probes")
    p.add_argument("--images", type=int, default=8, help="the run's first N test images")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    cfg = replace(stage_settings(args.run), tasks=("saliency",), methods=("closed-form",), max_images=args.images)
    inputs = gather_inputs(args.run, cfg)
    hooks, steps, strength = inputs.hooks["saliency"], cfg.steps("saliency"), cfg.strength_of("saliency")
    model = load(load_run_config(args.run), device="cpu")
    labeler = load_saliency_labeler("toy", device="cpu")
    print(f"{args.run}: {len(inputs.test)} test images x {cfg.targets.count} targets, closed-form x{strength:g} at "
          f"{len(hooks)} hooks x steps {steps}", flush=True)

    data = prepare_grid_data(args.run, ("saliency",), n_boot=10)
    refit = {(h, s): fit_probe(read_activations(args.run, ProbeGroup(cfg.variant, h, s), data.train),
                               data.labels["saliency"][0], "saliency", seed=data.seed) for h in hooks for s in steps}
    fresh, _ = fit_saliency_probes(model, labeler, args.train, hooks, steps, batch=8)
    sets = {"run probes": inputs.probes["saliency"], "refit (current code, run data)": refit,
            f"fit on scenes 0-{args.train - 1}": fresh}

    def cos(a, b) -> float:
        return float(a.raw_weight @ b.raw_weight / np.linalg.norm(a.raw_weight) / np.linalg.norm(b.raw_weight))

    for key in [(h, steps[len(steps) // 2]) for h in hooks[:: max(1, len(hooks) // 4)]]:
        run, ref, new = (s[key] for s in sets.values())
        print(f"  {key[0]}@{key[1]}: alpha {run.alpha:g} / {ref.alpha:g} / {new.alpha:g}; cos(run, refit) "
              f"{cos(run, ref):.3f}, cos(run, bench) {cos(run, new):.3f}; |w| {np.linalg.norm(run.weight):.2f} / "
              f"{np.linalg.norm(ref.weight):.2f} / {np.linalg.norm(new.weight):.2f}")
    moves = draw_translations(inputs.test, cfg.targets, inputs.size)  # the stage's own targets
    for name, probes in sets.items():
        gains = []
        for k in range(len(inputs.test)):
            original = np.asarray(inputs.labels["saliency"][k], np.float32)
            targets = make_targets(original, moves[k], "saliency")
            edited = run_edits(model, probes, "closed-form", targets, inputs.prompts[k], inputs.seeds[k], "saliency",
                               cfg.edit_settings("saliency", hooks, strength), image=int(inputs.test[k]))
            gains.append(float(score("saliency", labeler(edited), original, targets)["gain"].mean()))
        print(f"{name:32s} Dice gain {np.mean(gains):+.3f}; per image {' '.join(f'{g:+.2f}' for g in gains)}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
