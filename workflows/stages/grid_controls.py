"""The probe grid's feature controls: probes on features that carry no picture, fit, regularised, chosen and scored
exactly like the probes on activations (`grid_fit.fit_and_score`), once per target.

* `position` (always): the position basis (`probes.positional`): the layout prior alone ("objects sit in the
  middle"). It is also the reference of saliency beyond position. For normals and light it is the position-only
  prediction itself, fit on the training labels (the mean normal map, the mean light: `probes.baselines_vectors`).
* `caption` (`probes.controls: [caption]`): the caption's pooled text embedding (the model's own text encoder,
  `ldm.captions`), its principal components fit on the training captions, times the position basis: the layout a
  reader of the text could predict with the layout prior, before any image exists. At a step where the LDM does not
  beat it, the model's features carry no more of the scene than its prompt did.

Both are fit at one resolution (`control_resolution`: the finest stored layer's, at most MAX_SIDE per side: the basis
has no detail finer than a sixth of the image) and scored at image resolution like every probe. Their rows have hook
"-" and step -1; their weights (and the caption basis) are saved in `probes/weights/controls.safetensors`, the
caption embeddings with their image ids in `probes/captions.safetensors`, so every control number can be audited.
"""

from __future__ import annotations

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from probes.positional import CaptionBasis, caption_features, position_features
from workflows.stages.grid_data import GridData, GroupActs
from workflows.config import VECTOR_TARGETS
from workflows.stages.grid_fit import fit_and_score
from workflows.stages.grid_vectors import fit_and_score_vector
from workflows.store import Layout, load_plan, read_file, write_atomic
from workflows.store.paths import CAPTION_EMBEDDINGS, probe_weights

MAX_SIDE = 32
CONTROL_WEIGHTS = probe_weights("controls")


def control_resolution(layout: Layout) -> tuple[int, int]:
    """(h, w): the finest stored activation's, halved until neither side exceeds MAX_SIDE."""
    h, w = max((s[:2] for s in layout.acts.values()), key=lambda s: s[0] * s[1])
    while max(h, w) > MAX_SIDE:
        h, w = max(1, h // 2), max(1, w // 2)
    return h, w


def caption_embeddings(output: str, model: str, images: np.ndarray) -> np.ndarray:
    """`(image, d)` pooled caption embeddings of the run's images, computed once with the model's text encoder and
    kept in the run (recomputed if the images asked for are not the ones kept)."""
    from ldm.captions import caption_embeddings as embed

    kept = read_file(output, CAPTION_EMBEDDINGS)
    if kept is not None:
        arrays = load_safetensors(kept)
        if np.array_equal(arrays["image"], images):
            return arrays["embedding"]
    prompts = load_plan(output).prompts
    embedding = embed(model, [prompts[int(i)] for i in images])
    write_atomic(output, CAPTION_EMBEDDINGS, save_safetensors({"image": np.asarray(images, np.int64),
                                                               "embedding": embedding}))
    return embedding


def control_features(output: str, model: str, data: GridData, controls: tuple[str, ...],
                     size: tuple[int, int]) -> dict[str, tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
    """{control: (train features, test features `(image, h, w, channel)`, arrays to save beside its probes)}."""
    h, w = size
    out = {"position": (position_features(len(data.train), h, w), position_features(len(data.test), h, w), {})}
    if "caption" in controls:
        emb = caption_embeddings(output, model, np.concatenate([data.train, data.test]))
        basis = CaptionBasis.fit(emb[: len(data.train)])  # training captions only
        scores = basis.project(emb)  # (image, k)
        out["caption"] = (caption_features(scores[: len(data.train)], h, w),
                          caption_features(scores[len(data.train):], h, w),
                          {"mean": basis.mean, "components": basis.components, "scale": basis.scale})
    return out


def control_rows(output: str, model: str, data: GridData, controls: tuple[str, ...], layout: Layout) -> list[dict]:
    """Fit and score every feature control for every target; save their weights; return their metric rows."""
    rows, weights = [], {}
    for name, (train, test, extra) in control_features(output, model, data, controls,
                                                      control_resolution(layout)).items():
        acts = GroupActs(train, test, data, has_position=True)
        weights.update({f"{name}/basis/{k}": v for k, v in extra.items()})
        for target in data.labels:
            if target in VECTOR_TARGETS:  # position: the mean normal map / mean light itself, nothing fit
                metrics, probes = fit_and_score_vector(acts, target, data, baseline=name == "position")
            else:
                metrics, probes = fit_and_score(acts, target, data)
            rows.append(dict(variant=name, hook="-", step=-1, target=target, mode=data.mode, n_train=len(data.train),
                             n_test=len(data.test), **metrics))
            weights.update({f"{name}/{key}/{k}": v for key, probe in probes.items() for k, v in probe.to_dict().items()})
    write_atomic(output, CONTROL_WEIGHTS, save_safetensors(weights))
    return rows
