"""A small run store with planted activations, built without a model: the answer is known.

Images are blocky (4x4 blocks of 4x4 pixels) so layer-resolution labels are exact. Fake labelers: saliency = red
channel > 127, depth = green channel / 255. Hook "good" encodes both labels linearly in its first channels (plus
noise); hook "noise" encodes nothing. With `vectors=True` there are fake normals (from each block's blue and red
values; no normal where blue < 64) and a fake light (from the image's mean colour), planted in six more channels of
"good" (`fake_vector_labelers`).
"""

from __future__ import annotations

import numpy as np

from ldm.labelers import Labeler
from workflows.config import PromptsConfig, RunConfig
from workflows.store import Plan
from workflows.store import Layout, ShardWriter, create_store

H = W = 16
h = w = 4
C = 6
STEPS = 2


def fake_labelers() -> dict[str, Labeler]:
    return {
        "saliency": Labeler("fake-saliency", "v1", "saliency", lambda im: (im[..., 0] > 127).astype(np.float32)),
        "depth": Labeler("fake-depth", "v1", "depth", lambda im: im[..., 1].astype(np.float32) / 255),
    }


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def fake_normals(images: np.ndarray) -> np.ndarray:
    """`(image, H, W, 3)`: unit (red - 128, 64, blue - 128) / norm where blue >= 64, zero elsewhere (sky)."""
    im = images.astype(np.float32)
    n = _unit(np.stack([im[..., 0] - 128, np.full(im.shape[:3], 64.0), im[..., 2] - 128], -1))
    return np.where((images[..., 2] >= 64)[..., None], n, 0.0).astype(np.float32)


def fake_light(images: np.ndarray) -> np.ndarray:
    """`(image, 3)`: unit (8 (mean red - 128), 48, 8 (mean green - 128))."""
    m = images.astype(np.float32).mean((1, 2))
    return _unit(np.stack([8 * (m[:, 0] - 128), np.full(len(m), 48.0), 8 * (m[:, 1] - 128)], -1))


def fake_vector_labelers() -> dict[str, Labeler]:
    return {"normals": Labeler("fake-normals", "v1", "normals", fake_normals),
            "light": Labeler("fake-light", "v1", "light", fake_light)}


def build(output: str, n_images: int = 24, shard_size: int = 4, complete_shards: list[int] | None = None,
          seed: int = 0, act_dtype: str = "float16", vectors: bool = False) -> RunConfig:
    rng = np.random.default_rng(seed)
    cfg = RunConfig(model="synthetic", steps=STEPS, prompts=PromptsConfig(source="file", path="unused.csv"),
                    num_images=None, output=output, shard_size=shard_size, batch_size=shard_size, hooks=["good", "noise"],
                    extras=[], act_dtype=act_dtype)
    splits = ["test" if i % 3 == 0 else "train" for i in range(n_images)]
    plan = Plan([f"prompt {i}" for i in range(n_images)], list(range(n_images)), splits)
    c = C + 6 if vectors else C
    create_store(cfg, plan, Layout({"good": (h, w, c), "noise": (h, w, c)}, (H, W), STEPS))
    blocks = rng.integers(0, 256, size=(n_images, h, w, 3), dtype=np.uint8)
    images = blocks.repeat(4, axis=1).repeat(4, axis=2)
    salient = (blocks[..., 0] > 127).astype(np.float32)
    depth = blocks[..., 1].astype(np.float32) / 255
    good = rng.normal(size=(n_images, STEPS, h, w, c)).astype(np.float32) * 0.3
    good[..., 0] += 4 * (salient[:, None] - 0.5)
    good[..., 1] += 3 * depth[:, None]
    if vectors:  # the blocks' normals (one per layer pixel) and the image's light
        good[..., C : C + 3] += 3 * fake_normals(blocks)[:, None]
        good[..., C + 3 :] += 3 * fake_light(images)[:, None, None, None]
    noise = rng.normal(size=(n_images, STEPS, h, w, c)).astype(np.float32)
    n_shards = n_images // shard_size
    with ShardWriter(output) as writer:
        for shard in range(n_shards) if complete_shards is None else complete_shards:
            a, b = shard * shard_size, (shard + 1) * shard_size
            writer.write_images(a, images[a:b])
            for step in range(STEPS):
                writer.write_act("good", a, step, good[a:b, step])
                writer.write_act("noise", a, step, noise[a:b, step])
            writer.complete(shard, {"shard": shard})
    return cfg
