"""The bad-input sweep: every mistake a user can make ends in one `error:` line and exit status 2, from every command,
without a traceback and without leaving a half-made run folder behind."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflows.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = {"model": "toy", "steps": 1, "num_images": 2, "test_fraction": 0.5, "hooks": ["mid_0"], "shard_size": 2,
        "batch_size": 2, "actors": 1, "progress_every": 0, "stages": ["generate"]}


def write_config(folder: Path, name: str = "run.yaml", text: str | None = None, **fields) -> str:
    path = folder / name
    path.write_text(text if text is not None else yaml.safe_dump({**TINY, "output": str(folder / "out"), **fields}))
    return str(path)


@pytest.fixture(scope="module")
def generated_run(tmp_path_factory) -> tuple[str, str]:
    """A 2-image toy run, generated only (no labels, no probes): (config path, output)."""
    folder = tmp_path_factory.mktemp("run")
    config = write_config(folder)
    assert main(["generate", config, "--no-ray"]) == 0
    return config, str(folder / "out")


def bad_inputs(tmp: Path, run: tuple[str, str]) -> dict[str, list[str]]:
    """name -> argv; each one is a user's mistake."""
    config, output = run
    cfg = lambda **fields: write_config(tmp, f"{len(list(tmp.iterdir()))}.yaml", **fields)  # noqa: E731
    text = lambda body, suffix=".yaml": write_config(tmp, f"{len(list(tmp.iterdir()))}{suffix}", text=body)  # noqa: E731
    (tmp / "a-file").write_text("not a folder")
    (tmp / "stranger").mkdir()
    (tmp / "stranger" / "notes.txt").write_text("someone else's files")
    return {
        "plan: missing config file": ["plan", str(tmp / "missing.yaml")],
        "plan: YAML syntax error": ["plan", text("model: toy\nsteps: [1, 2\nnum_images: 3\n")],
        "plan: TOML syntax error": ["plan", text("model = toy\n", ".toml")],
        "plan: a list instead of a mapping": ["plan", text("- model: toy\n")],
        "plan: unknown key": ["plan", cfg(stpes=3)],
        "plan: num_images -3": ["plan", cfg(num_images=-3)],
        "plan: steps 0": ["plan", cfg(steps=0)],
        "plan: steps many": ["plan", cfg(steps="many")],
        "plan: guidance_scale abc": ["plan", cfg(guidance_scale="abc")],
        "plan: batch_size not dividing shard_size": ["plan", cfg(shard_size=4, batch_size=3)],
        "plan: unknown --set key": ["plan", config, "--set", "nope=1"],
        "plan: --set without =": ["plan", config, "--set", "steps"],
        "plan: unknown interventions key": ["plan", config, "--set", "interventions.strenght=4"],
        "plan: unknown probe target": ["plan", config, "--set", "probes.targets=[colour]"],
        "generate: unknown scheduler": ["generate", cfg(scheduler="warp")],
        "generate: unknown dtype": ["generate", cfg(dtype="float12")],
        "generate: missing model folder": ["generate", cfg(model=str(tmp / "no-model"))],
        "generate: missing prompts file": ["generate", cfg(prompts={"source": "file", "path": str(tmp / "p.csv")},
                                                          num_images=None)],
        "run: --output names an existing file": ["run", config, "--output", str(tmp / "a-file")],
        "run: --output holds other files": ["run", config, "--output", str(tmp / "stranger")],
        "run: the same run again without --resume": ["run", config],
        "run: --resume with other data fields": ["run", config, "--resume", "--set", "steps=2"],
        "hooks: unknown model": ["hooks", str(tmp / "no-model")],
        "hooks: height not a multiple of 8": ["hooks", "toy", "--height", "30"],
        "hooks: SD3 width not whole 2x2 patches": ["hooks", "stabilityai/stable-diffusion-3-medium-diffusers",
                                                   "--width", "1032"],
        "status: no such run": ["status", str(tmp / "nothing-here")],
        "status: a folder that is not a run": ["status", str(tmp / "stranger")],
        "report: no run yet": ["report", cfg()],
        "probe: no run yet": ["probe", cfg()],
        "label: no run yet": ["label", cfg()],
        "run: normals on a model without a normals labeler": [
            "run", cfg(model="CompVis/stable-diffusion-v1-4", probes={"targets": ["saliency", "normals"]},
                       stages=["generate", "label", "probe"]), "--no-ray"],
        "label: unknown light labeler kind": ["label", config, "--no-ray", "--set", "probes.targets=[light]",
                                              "--set", "labels.light.kind=dpt"],
        "intervene: no probes yet": ["intervene", config, "--resume", "--no-ray"],
        "intervene: hooks causal before the patching map": ["intervene", config, "--resume", "--no-ray", "--set",
                                                            "interventions.saliency_hooks=causal"],
        "patch: no run yet": ["patch", cfg(), "--no-ray"],
        "patch: fewer than 2 pairs": ["patch", config, "--no-ray", "--set", "interventions.patching.pairs=1"],
        "patch: a step past the run's last": ["patch", config, "--no-ray", "--set", "interventions.patching.steps=[5]"],
        "patch: no labels yet": ["patch", config, "--no-ray", "--set", "interventions.patching.steps=[0]"],
        "animate: no such run": ["animate", str(tmp / "nothing-here")],
        "animate: a run without probes": ["animate", output],
    }


def test_every_bad_input_is_one_error_line(tmp_path, generated_run, capsys):
    cases = bad_inputs(tmp_path, generated_run)
    assert len(cases) >= 20
    failures = []
    for name, argv in cases.items():
        before = set(os.listdir(tmp_path))
        capsys.readouterr()
        try:
            status = main(argv)
        except BaseException as err:  # noqa: BLE001 -- a traceback is exactly what this test reports
            failures.append(f"{name}: raised {type(err).__name__}: {err}")
            continue
        err = capsys.readouterr().err
        if status != 2 or not err.startswith("error: ") or err.count("\n") != 1 or "Traceback" in err:
            failures.append(f"{name}: exit {status}, stderr {err[-400:]!r}")
        if "out" in set(os.listdir(tmp_path)) - before:
            failures.append(f"{name}: left a run folder behind")
    assert not failures, "\n".join(failures)


def test_yaml_error_names_file_and_line(tmp_path, capsys):
    config = write_config(tmp_path, text="model: toy\nsteps: [1, 2\nnum_images: 3\n")
    assert main(["plan", config]) == 2
    err = capsys.readouterr().err
    assert f"{config}: not valid YAML: line 3, column 11" in err


def test_unknown_scheduler_lists_the_valid_ones(tmp_path, capsys):
    assert main(["generate", write_config(tmp_path, scheduler="warp")]) == 2
    err = capsys.readouterr().err
    assert "unknown scheduler 'warp'" in err and "lms" in err and "ddim" in err


def test_debug_shows_the_traceback(tmp_path):
    from ldm.errors import UserError

    with pytest.raises(UserError):
        main(["--debug", "plan", write_config(tmp_path, steps=0)])


@pytest.mark.parametrize("entry", [["-m", "workflows.cli", "plan"], ["-m", "workflows.run"]])
def test_entry_points_print_one_line(tmp_path, entry):
    """The real processes: `sceneprobe` and `python -m workflows.run` (what `ray job submit` runs)."""
    config = write_config(tmp_path, text="model: toy\nsteps: many\n")
    proc = subprocess.run([sys.executable, *entry, config], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: steps: expected an integer") and proc.stderr.count("\n") == 1


def test_a_user_error_raised_inside_ray_is_its_own_one_line(capsys):
    """Ray wraps an exception raised in a task or actor; the driver prints the user's message, not Ray's traceback."""
    import argparse

    ray = pytest.importorskip("ray")
    from ldm.errors import UserError
    from workflows.run import exit_status

    wrapped = ray.exceptions.RayTaskError("label_task", "Traceback (most recent call last): ...",
                                          UserError("labeler checkpoint 'x' not found; pass labels.depth.checkpoint"))
    remote = wrapped.as_instanceof_cause()
    assert isinstance(remote, UserError)

    def command(args):
        raise remote

    assert exit_status(command, argparse.Namespace(debug=False)) == 2
    err = capsys.readouterr().err
    assert err == "error: labeler checkpoint 'x' not found; pass labels.depth.checkpoint\n"
