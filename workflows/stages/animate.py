"""The paper's application: a moving object. Slide a test image's salient mask across the frame, edit the generation
towards each position (same prompt, same seed), and play the results as an animated GIF.

    sceneprobe animate runs/toy                       # first test image, 12 frames, closed-form edits
    sceneprobe animate runs/toy --image 40 --method paper --frames 16 --axis y
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from ldm.errors import UserError
from probes.targets import slide_translations, translate_mask
from workflows.config import METHODS, EditSettings, InterventionConfig
from workflows.stages.edit_units import gather_inputs
from workflows.stages.edits import ProbeTable, run_edits
from workflows.stages.shard import load
from workflows.store import load_run_config, read_file, write_atomic
from workflows.store.paths import CALIBRATION_CHOICE, INTERVENTION_CONFIG, MOVING_OBJECT_GIF

GIF = MOVING_OBJECT_GIF
MIN_SIDE = 192  # frames are upscaled (nearest) to at least this many pixels high, so toy images are watchable


@dataclass
class Animation:
    frames: np.ndarray  # (frame, H, W, 3) uint8 edited images
    targets: np.ndarray  # (frame, H, W) 0/1 target masks
    translations: np.ndarray  # (frame, 2) tx, ty
    prompt: str
    seed: int
    image: int
    method: str


def slide(model, probes: ProbeTable, mask: np.ndarray, prompt: str, seed: int, settings: EditSettings, *,
          frames: int = 12, extent: float = 0.3, axis: str = "x", method: str = "closed-form",
          batch: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edited images `(frame, H, W, 3)`, targets `(frame, H, W)` and translations `(frame, 2)` for a mask `(H, W)`
    slid from -extent to +extent of the frame; rendered `batch` frames per generate call, with the interventions
    stage's edit settings (`workflows.stages.edits.run_edits`)."""
    moves = slide_translations(frames, mask.shape, extent=extent, axis=axis)
    base = (np.asarray(mask) > 0.5).astype(np.float32)
    targets = translate_mask(np.broadcast_to(base, (frames, *base.shape)), moves[:, 0], moves[:, 1])
    images = [run_edits(model, probes, method, targets[i:i + batch], prompt, seed, "saliency", settings)
              for i in range(0, frames, batch)]
    return np.concatenate(images), targets, moves


def gif_bytes(frames: np.ndarray, targets: np.ndarray | None = None, duration_ms: int = 150) -> bytes:
    """An endlessly looping GIF; with targets, each frame shows the target mask (left) beside the result (right)."""
    pictures = []
    for k, frame in enumerate(frames):
        panel = frame
        if targets is not None:
            mask = np.repeat((targets[k] > 0.5)[..., None] * 255, 3, axis=-1).astype(np.uint8)
            gap = np.full((frame.shape[0], max(1, frame.shape[1] // 16), 3), 128, np.uint8)
            panel = np.concatenate([mask, gap, frame], axis=1)
        scale = max(1, -(-MIN_SIDE // panel.shape[0]))
        pictures.append(Image.fromarray(panel).resize((panel.shape[1] * scale, panel.shape[0] * scale),
                                                      Image.NEAREST))
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:], duration=duration_ms, loop=0)
    return buffer.getvalue()


def stage_settings(output: str) -> InterventionConfig:
    """The edit settings the run's interventions stage used (`interventions/config.json`, with the strengths its
    calibration chose), or before that stage has run, the `interventions` section of the run's stored config."""
    stored = read_file(output, INTERVENTION_CONFIG)
    if stored is not None:
        chosen = read_file(output, CALIBRATION_CHOICE)
        return InterventionConfig(**json.loads(stored), chosen=json.loads(chosen) if chosen else {})
    return load_run_config(output).interventions


def animate_run(output: str, image: int | None = None, *, frames: int = 12, extent: float = 0.3, axis: str = "x",
                method: str = "closed-form", cfg: InterventionConfig | None = None, model=None,
                out: str | None = None, device: str = "auto") -> Animation:
    """Render the moving-object animation for one test image of a probed run (default: the first test image), with
    the edit settings of `cfg` (default: `stage_settings(output)`).

    Writes `<output>/interventions/moving_object.gif` (or `out`, a local path) and a JSON note beside it."""
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    cfg = replace(cfg or stage_settings(output), tasks=("saliency",), methods=(method,), max_images=None)
    inputs = gather_inputs(output, cfg)
    ids = [int(i) for i in inputs.test]
    if image is None:
        image = ids[0]
    if image not in ids:
        raise UserError(f"image {image} is not a labelled test image of {output}; test images: "
                        f"{', '.join(map(str, ids[:20]))}{' ...' if len(ids) > 20 else ''}")
    k = ids.index(image)
    model = model if model is not None else load(load_run_config(output), device=device)
    settings = cfg.edit_settings("saliency", inputs.hooks["saliency"], cfg.strength_of("saliency", method))
    edited, targets, moves = slide(model, inputs.probes["saliency"], inputs.labels["saliency"][k], inputs.prompts[k],
                                   inputs.seeds[k], settings, frames=frames, extent=extent, axis=axis, method=method)
    anim = Animation(edited, targets, moves, inputs.prompts[k], inputs.seeds[k], image, method)
    note = {"image": image, "prompt": anim.prompt, "seed": anim.seed, "method": method,
            "hooks": inputs.hooks["saliency"], "steps": cfg.steps("saliency"),
            "strength": cfg.strength_of("saliency", method), "translations": moves.tolist()}
    data = gif_bytes(edited, targets)
    if out is None:
        write_atomic(output, GIF, data)
        write_atomic(output, GIF.replace(".gif", ".json"), json.dumps(note, indent=1).encode())
    else:
        with open(out, "wb") as f:
            f.write(data)
    return anim
