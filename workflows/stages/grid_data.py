"""The probe grid's data: the usable images split into train and test, their labels prepared once (saliency masks
in {0, 1}, depth standardised with the training split), and what every fit on one activation slice shares.
Test images never shape a fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ldm.errors import UserError
from probes.baselines import position_map, with_position
from probes.chunks import StandardisedBlocks
from probes.blocks import BlockTruth, block_truth
from probes.metrics import DepthScaler, depth_truth_ranks
from probes.resample import downsample_area
from workflows.config import TARGETS
from workflows.stages.labels import labelled_shards, read_labels
from workflows.store import complete_images, load_plan, load_run_config
from workflows.store.paths import variant_output


@dataclass
class GridData:
    """Labels prepared once for the whole grid: saliency masks in {0, 1}, depth standardised with the training split.

    train/test: image indices `(image,)`; labels[target] = (train `(image, H, W)`, test `(image, H, W)`).
    """

    train: np.ndarray
    test: np.ndarray
    labels: dict[str, tuple[np.ndarray, np.ndarray]]
    mean_maps: dict[str, np.ndarray]
    depth_scaler: DepthScaler | None
    mode: str = "ours"
    seed: int = 0
    n_boot: int = 1000
    _memo: dict[tuple, np.ndarray | dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    def _once(self, key: tuple, make: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def depth_ranks(self, h: int, w: int) -> dict[str, np.ndarray]:
        """Test depth's ranks for Spearman at a layer shape (`metrics.depth_truth_ranks`), computed once per shape."""
        return self._once(("ranks", h, w), lambda: depth_truth_ranks(self.labels["depth"][1], h, w))

    def area_labels(self, target: str, h: int, w: int, split: int = 0) -> np.ndarray:
        """Training (split 0) or test (1) labels area-averaged to a layer's (h, w), once per shape."""
        return self._once(("area", target, split, h, w), lambda: downsample_area(self.labels[target][split], h, w))

    def block_truth(self, target: str, h: int, w: int, split: int) -> BlockTruth:
        """The labels' block sums for image-resolution scores of (h, w) predictions (`metrics.block_truth`)."""
        mean_map = self.mean_maps["depth"] if target == "depth" else None
        return self._once(("blocks", target, split, h, w),
                          lambda: block_truth(self.labels[target][split], h, w, mean_map))

    def mean_map_at(self, target: str, h: int, w: int) -> np.ndarray:
        """The training mean label map area-averaged to (h, w)."""
        return self._once(("map", target, h, w), lambda: downsample_area(self.mean_maps[target][None], h, w)[0])

    def fit_labels(self, target: str, h: int, w: int) -> np.ndarray:
        """Training labels as a probe fit takes them: at the layer's (h, w) for our probes (which fit at layer
        resolution); at image resolution for the paper's trainer, which upsamples."""
        return self.area_labels(target, h, w) if self.mode == "ours" else self.labels[target][0]


class GroupActs:
    """One group's training and test activations `(image, h, w, c)`, and what the probes fit on them share, built
    on first use: the standardised blocks of our probes (four fits read the same activations, two more the
    position-augmented ones) and the activations with the mean depth map appended (`baselines.with_position`)."""

    def __init__(self, train: np.ndarray, test: np.ndarray, data: GridData):
        self.train, self.test, self.data = train, test, data
        self._blocks: dict[bool, StandardisedBlocks] = {}
        self._positioned: tuple[np.ndarray, np.ndarray] | None = None

    def positioned(self) -> tuple[np.ndarray, np.ndarray]:
        if self._positioned is None:
            m = self.data.mean_maps["depth"]
            self._positioned = (with_position(self.train, m), with_position(self.test, m))
        return self._positioned

    def fit_kwargs(self, positioned: bool = False) -> dict[str, Any]:
        """Keyword arguments for `fit_probe` on the training activations (or their positioned version)."""
        if self.data.mode != "ours":
            return {}
        if positioned not in self._blocks:
            acts = self.positioned()[0] if positioned else self.train
            self._blocks[positioned] = StandardisedBlocks.with_stats(acts)
        return {"blocks": self._blocks[positioned]}


def usable_images(output: str, targets: tuple[str, ...], variants: tuple[str, ...]) -> np.ndarray:
    """Boolean `(image,)`: generated in every variant and labelled for every target."""
    ok = complete_images(output)
    for variant in variants:
        if variant != "ldm":
            ok &= complete_images(variant_output(output, variant))
    shard_of = np.arange(len(ok)) // load_run_config(output).shard_size
    for target in targets:
        ok &= np.isin(shard_of, sorted(labelled_shards(output, target)))
    return ok


def prepare_grid_data(output: str, targets: tuple[str, ...] = TARGETS,
                      variants: tuple[str, ...] = ("ldm",), mode: str = "ours", seed: int = 0,
                      n_boot: int = 1000) -> GridData:
    """Split usable images by the manifest's split and load their labels. Test images never shape a fit."""
    ok = usable_images(output, targets, variants)
    split = np.asarray(load_plan(output).splits)
    train, test = np.flatnonzero(ok & (split == "train")), np.flatnonzero(ok & (split == "test"))
    if len(train) < 2 or len(test) < 1:
        raise UserError(
            f"the probe grid needs >= 2 training and >= 1 test images with activations and labels; have "
            f"{len(train)} train, {len(test)} test. Run the generate and label stages first"
        )
    labels, maps, scaler = {}, {}, None
    for target in targets:
        tr, te = read_labels(output, target, train), read_labels(output, target, test)
        if target == "saliency":  # any confident foreground pixel counts, as the paper binarises TRACER's map
            tr, te = (tr > 0.5).astype(np.float32), (te > 0.5).astype(np.float32)
        else:
            scaler = DepthScaler.fit(tr)
            tr, te = scaler.transform(tr), scaler.transform(te)
        labels[target] = (tr, te)
        maps[target] = position_map(tr)
    return GridData(train, test, labels, maps, scaler, mode, seed, n_boot)
