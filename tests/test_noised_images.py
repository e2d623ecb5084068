"""The noised-image protocol: toy renders with exact truth and a folder of user images, through generate -> label ->
probe, and every bad input as one `error:` line before anything runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
import zarr
from PIL import Image

from ldm.capture import ArraySink, capture
from ldm.loading import load_model
from ldm.noised import noised_pass
from ldm.toy.render import HELD_OUT_SEED, render_batch
from workflows.cli import main
from workflows.config import LabelsConfig, ProbesConfig, PromptsConfig, RunConfig
from workflows.stages.generate import generate
from workflows.stages.labels import label_run, read_labels

HOOKS = ["mid_0", "up_1_0"]
STEPS = 3


def renders_cfg(output, **kw) -> RunConfig:
    base = dict(model="toy", steps=STEPS, prompts=PromptsConfig(source="toy-renders"), num_images=8,
                test_fraction=0.5, hooks=HOOKS, extras=["latent"], output=str(output), shard_size=4, batch_size=2,
                progress_every=0.0, labels=LabelsConfig(source="truth", ceiling_images=0),
                probes=ProbesConfig(targets=["saliency", "depth", "normals", "light"], controls=[], bootstrap=10,
                                    hooks=["up_1_0"], steps=[STEPS - 1]),
                stages=["generate", "label", "probe"])
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def toy():
    return load_model("toy", steps=STEPS, device="cpu")


@pytest.fixture(scope="module")
def renders_run(tmp_path_factory):
    cfg = renders_cfg(tmp_path_factory.mktemp("renders") / "run")
    assert generate(cfg).ok
    label_run(cfg)
    return cfg


def test_renders_labels_are_the_renderers_truth(renders_run):
    cfg = renders_run
    seeds = list(range(4)) + [HELD_OUT_SEED + i for i in range(4)]  # the toy plan: train, then held-out scenes
    truth = render_batch(seeds, size=64)
    root = zarr.open_group(f"{cfg.output}/store.zarr", mode="r")
    np.testing.assert_array_equal(root["seed"][:], seeds)
    np.testing.assert_array_equal(root["images"][:], truth.rgb)  # the inputs, not a generation
    np.testing.assert_array_equal(read_labels(cfg.output, "saliency"), truth.salient.astype(np.float32))
    inv = 1.0 / truth.depth.astype(np.float64)
    flat = inv.reshape(len(inv), -1)
    standard = (inv - flat.mean(1)[:, None, None]) / flat.std(1)[:, None, None]
    np.testing.assert_allclose(read_labels(cfg.output, "depth"), standard, atol=1e-5)
    np.testing.assert_array_equal(read_labels(cfg.output, "normals"), truth.normals)
    np.testing.assert_array_equal(read_labels(cfg.output, "normals", mask=True), truth.surface)
    np.testing.assert_array_equal(read_labels(cfg.output, "light"), truth.light_direction)
    assert root["labels/depth"].attrs["labeler"] == "truth"
    for hook in HOOKS:
        assert root[f"acts/{hook}/act"].shape[:2] == (8, STEPS)
    assert root["acts/mid_0/act"].shape == (8, STEPS, 2, 2, 64)  # the 4x4 bottleneck of a 16x16 latent: 2x2
    assert root["acts/latent/act"].shape == (8, STEPS, 16, 16, 4)
    assert np.isfinite(root["acts/up_1_0/act"][:]).all()


def test_latent_is_the_vae_latent_noised_at_each_steps_timestep(renders_run, toy):
    """Recomputed here from the VAE, the per-seed noise and the schedule's own sigmas (k-diffusion: x0 + sigma eps)."""
    from diffusers import LMSDiscreteScheduler

    root = zarr.open_group(f"{renders_run.output}/store.zarr", mode="r")
    images, seeds = root["images"][:2], root["seed"][:2]
    vae = toy.pipe.vae
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        z0 = vae.encode(x).latent_dist.mean * vae.config.scaling_factor  # (image, c, h, w)
    eps = torch.cat([torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    sched = LMSDiscreteScheduler.from_config(toy.pipe.scheduler.config)
    sched.set_timesteps(STEPS)
    alphas = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2, 0)  # scaled_linear betas
    for s in range(STEPS):
        t = float(sched.timesteps[s])
        lo = int(np.floor(t))
        sig = lambda i: ((1 - alphas[i]) / alphas[i]) ** 0.5  # noqa: E731
        sigma = sig(lo) + (t - lo) * (sig(min(lo + 1, 999)) - sig(lo))  # LMS interpolates sigma over timesteps
        expected = (z0 + sigma * eps).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(root["acts/latent/act"][:2, s], expected, rtol=1e-4, atol=1e-4)
    assert float(sched.sigmas[0]) > 10 * float(sched.sigmas[STEPS - 1])  # the steps really differ in noise


def test_activations_per_image_do_not_depend_on_the_batch(renders_run, toy):
    root = zarr.open_group(f"{renders_run.output}/store.zarr", mode="r")
    images, prompts, seeds = root["images"][:], list(root["prompt"][:]), [int(s) for s in root["seed"][:]]
    alone = ArraySink()
    with capture(toy, alone, hooks=HOOKS, extras=("latent",)):
        noised_pass(toy, images[3:4], prompts[3:4], seeds[3:4])
    for name in HOOKS + ["latent"]:
        np.testing.assert_allclose(alone.arrays[name][0], root[f"acts/{name}/act"][3].astype(np.float32),
                                   rtol=2e-3, atol=2e-3, err_msg=name)  # float16 in the store


def test_toy_dit_runs_the_protocol_with_flow_matching():
    dit = load_model("toy-dit", scheduler="flow_euler", steps=2, device="cpu")
    r = render_batch([0, 1], size=dit.image_size[0])
    sink = ArraySink()
    with capture(dit, sink, extras=("latent",)):
        noised_pass(dit, r.rgb, r.captions, [0, 1])
    sched = dit.pipe.scheduler
    vae = dit.pipe.vae
    with torch.no_grad():
        x = torch.from_numpy(r.rgb).permute(0, 3, 1, 2).float() / 127.5 - 1
        z0 = (vae.encode(x).latent_dist.mean - (vae.config.shift_factor or 0)) * vae.config.scaling_factor
    eps = dit.initial_noise([0, 1])
    for s in range(2):
        sigma = float(sched.sigmas[s])
        np.testing.assert_allclose(sink.arrays["latent"][:, s], ((1 - sigma) * z0 + sigma * eps).permute(0, 2, 3, 1),
                                   rtol=1e-4, atol=1e-4)


def test_probe_grid_runs_unchanged_on_truth(renders_run):
    import pyarrow.parquet as pq

    from workflows.stages.grid import probe_run

    probe_run(renders_run)
    rows = pq.read_table(f"{renders_run.output}/probes/metrics.parquet").to_pandas()
    assert set(rows.target) == {"saliency", "depth", "normals", "light"}
    assert set(rows.hook) >= {"up_1_0"}


def write_folder(folder, n=4, size=64, **bad):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        side = size + 8 if bad.get("mixed") and i == 2 else size
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
        (folder / f"im{i}.txt").write_text(f"a scene number {i}")
        depth = rng.uniform(1, 5, (side, side)).astype(np.float32)
        if bad.get("depth_shape") and i == 1:
            depth = depth[:32]
        if not (bad.get("depth_count") and i == 3):
            np.save(folder / f"im{i}.depth.npy", depth)
        normals = np.zeros((side, side, 3), np.float32)
        normals[..., 2] = 1.0
        if bad.get("nan_normals") and i == 0:
            normals[3, 3] = np.nan
        if bad.get("long_normals") and i == 0:
            normals[5, 5] = (0, 0, 2)
        np.save(folder / f"im{i}.normals.npy", normals)
    return folder


def folder_cfg(tmp_path, folder, **kw) -> RunConfig:
    return renders_cfg(tmp_path / "run", prompts=PromptsConfig(source="images", path=str(folder)), num_images=None,
                       labels=LabelsConfig(ceiling_images=0), probes=ProbesConfig(targets=["depth", "saliency"],
                                                                                  controls=[]), **kw)


def test_a_folder_of_user_images(tmp_path):
    folder = write_folder(tmp_path / "imgs")
    cfg = folder_cfg(tmp_path, folder)
    assert generate(cfg).ok
    label_run(cfg)
    root = zarr.open_group(f"{cfg.output}/store.zarr", mode="r")
    names = [f"im{i}.png" for i in range(4)]
    from workflows.stages.image_source import staged

    order = staged(cfg.output)["names"]
    assert sorted(order) == names
    pixels = np.stack([np.asarray(Image.open(folder / n)) for n in order])
    np.testing.assert_array_equal(root["images"][:], pixels)
    assert list(root["prompt"][:]) == [(folder / n.replace(".png", ".txt")).read_text() for n in order]
    depth = read_labels(cfg.output, "depth")  # truth: 1 / depth standardised per image
    inv = 1 / np.stack([np.load(folder / n.replace(".png", ".depth.npy")).astype(np.float64) for n in order])
    np.testing.assert_allclose(depth, (inv - inv.mean((1, 2), keepdims=True)) / inv.std((1, 2), keepdims=True),
                               atol=1e-5)
    assert root["labels/depth"].attrs["labeler"] == "truth"
    assert root["labels/saliency"].attrs["labeler"] == "toy-saliency"  # no masks given: auto takes the labeler
    assert root["acts/up_1_0/act"].shape[:2] == (4, STEPS) and np.isfinite(root["acts/up_1_0/act"][:]).all()


def write_config(tmp_path, **fields) -> str:
    path = tmp_path / "cfg.yaml"
    base = {"model": "toy", "steps": 1, "num_images": None, "hooks": ["mid_0"], "output": str(tmp_path / "out"),
            "shard_size": 2, "batch_size": 2, "progress_every": 0, "stages": ["generate", "label"],
            "probes": {"targets": ["depth"], "controls": []}, "labels": {"ceiling_images": 0}}
    for key, value in fields.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(base))
    return str(path)


BAD = {
    "a depth file of the wrong shape": ({"depth_shape": True}, {}, "has shape (32, 64)"),
    "depth files for 3 of 4 images": ({"depth_count": True}, {}, "3 of 4 images"),
    "NaN normals": ({"nan_normals": True}, {"probes": {"targets": ["normals"]}}, "NaN"),
    "non-unit normals": ({"long_normals": True}, {"probes": {"targets": ["normals"]}}, "unit"),
    "mixed sizes": ({"mixed": True}, {}, "im2.png is 72x72"),
    "a missing folder": (None, {}, "not found"),
    "light: no truth and no labeler for this model": ({}, {"model": "toy", "probes": {"targets": ["light"]},
                                                           "labels": {"source": "truth"}}, "no light truth"),
    "light on SD images: no truth given, no labeler for real images": (
        {}, {"model": "CompVis/stable-diffusion-v1-4", "probes": {"targets": ["light"]}}, "no labeler for real images"),
    "an unknown source": ({}, {"prompts": {"source": "pictures"}}, "toy-renders, images"),
    "intervene on an image source": ({}, {"stages": ["generate", "intervene"]}, "drop it"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_error_line_before_anything_runs(case, tmp_path, capsys):
    bad, fields, needle = BAD[case]
    folder = tmp_path / "missing" if bad is None else write_folder(tmp_path / "imgs", **bad)
    prompts = {"source": "images", "path": str(folder), **fields.pop("prompts", {})}
    config = write_config(tmp_path, prompts=prompts, **fields)
    status = main(["run", config, "--no-ray"])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err, err
    assert not (tmp_path / "out").exists()


def test_toy_labelers_accept_renders_whatever_the_model():
    from ldm.errors import UserError
    from ldm.labelers import check_labelers

    with pytest.raises(UserError, match="toy-world renders"):
        check_labelers("CompVis/stable-diffusion-v1-4", {"light": "toy"})
    check_labelers("CompVis/stable-diffusion-v1-4", {"light": "toy", "normals": "toy"}, toy_world=True)


def test_patch_on_an_image_source_is_refused(tmp_path, capsys):
    config = write_config(tmp_path, prompts={"source": "toy-renders"}, num_images=4)
    assert main(["patch", config, "--no-ray"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: patch needs images the model generated") and err.count("\n") == 1


@pytest.mark.slow
def test_renders_on_the_ray_actor_pool_equal_the_local_run(renders_run, tmp_path):
    import ray

    from workflows.ray.generate import shard_runner

    cfg = renders_cfg(tmp_path / "ray", actors=2)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        assert generate(cfg, run_shards=shard_runner(cfg)).ok
    finally:
        ray.shutdown()
    a = zarr.open_group(f"{cfg.output}/store.zarr", mode="r")
    b = zarr.open_group(f"{renders_run.output}/store.zarr", mode="r")
    np.testing.assert_array_equal(a["images"][:], b["images"][:])
    for name in HOOKS + ["latent"]:
        np.testing.assert_allclose(a[f"acts/{name}/act"][:].astype(np.float32),
                                   b[f"acts/{name}/act"][:].astype(np.float32), atol=2e-3, err_msg=name)


def test_a_parquet_table_with_image_bytes_and_png_masks(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    rows, masks = [], []
    for i in range(4):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
        mask = np.zeros((64, 64), np.uint8)
        mask[8 * i:8 * i + 20, 10:30] = 255
        masks.append(mask > 0)
        Image.fromarray(mask).save(tmp_path / f"m{i}.png")
        rows.append({"image": buf.getvalue(), "caption": f"picture {i}", "saliency": f"m{i}.png",
                     "split": "train" if i < 2 else "test"})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "set.parquet")
    cfg = folder_cfg(tmp_path, tmp_path / "set.parquet")
    assert generate(cfg).ok
    label_run(cfg)
    root = zarr.open_group(f"{cfg.output}/store.zarr", mode="r")
    assert list(root["split"][:]) == ["train", "train", "test", "test"]
    assert list(root["prompt"][:]) == [f"picture {i}" for i in range(4)]
    np.testing.assert_array_equal(read_labels(cfg.output, "saliency"), np.stack(masks).astype(np.float32))
    assert root["labels/saliency"].attrs["labeler"] == "truth"
    assert root["labels/depth"].attrs["labeler"] == "toy-depth"
