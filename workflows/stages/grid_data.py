"""The probe grid's data: the usable images split into train and test, their labels prepared once (saliency masks
in {0, 1}, depth standardised with the training split, normals with their valid-pixel masks, light directions as
stored) with each target's position-only prediction from the training split (mean map, mean normal map, mean light),
and what every fit on one activation slice shares.
Test images never shape a fit.

Splits are numbered: TRAIN (0) and TEST (1) images, and within the training images VAL (2), the validation images
every probe's alpha search holds out (`probes.linear.validation_split`, same fraction and seed), and FIT (3), the
rest. A probe's held-out solution (`LinearProbe.val_weight`) is fit on FIT only, so its score on VAL chooses layers
without the images they were fit on and without the test images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ldm.errors import UserError
from probes.baselines import position_map, with_position
from probes.baselines_vectors import mean_direction, mean_normal_map, with_normal_map
from probes.chunks import StandardisedBlocks
from probes.blocks import BlockTruth, block_truth
from probes.fit import fit_probe
from probes.linear import validation_split
from probes.metrics import DepthScaler, depth_truth_ranks
from probes.positional import position_features, with_position_features
from probes.resample import downsample_area
from probes.vectors import pool_activations
from workflows.config import MAP_TARGETS
from workflows.stages.labels import labelled_shards, read_labels
from workflows.store import complete_images, load_plan, load_run_config
from workflows.store.paths import variant_output


TRAIN, TEST, VAL, FIT = 0, 1, 2, 3  # splits (the module docstring)
VAL_FRACTION = 0.2  # the probes' own (`validation_split`'s default)
LIGHT_POOL_GRID = 2  # the light probe reads each channel's mean over a 2 x 2 partition of the frame (`pool_activations`)


@dataclass
class GridData:
    """Labels prepared once for the whole grid: saliency masks in {0, 1}, depth standardised with the training split.

    train/test: image indices `(image,)`; labels[target] = (train, test): `(image, H, W)` for saliency and depth,
    `(image, H, W, 3)` for normals, `(image, 3)` for the light; masks["normals"] = (train, test) `(image, H, W)` bool,
    the pixels with a normal; mean_maps: the training mean map `(H, W)` (saliency, depth), the mean normal map
    `(H, W, 3)`, the mean light `(3,)`.
    """

    train: np.ndarray
    test: np.ndarray
    labels: dict[str, tuple[np.ndarray, np.ndarray]]
    mean_maps: dict[str, np.ndarray]
    depth_scaler: DepthScaler | None
    mode: str = "ours"
    seed: int = 0
    n_boot: int = 1000
    masks: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    _memo: dict[tuple, np.ndarray | dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    def _once(self, key: tuple, make: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    @property
    def val(self) -> np.ndarray:
        """Boolean `(train image,)`: the validation images of every probe's alpha search."""
        return self._once(("val",), lambda: validation_split(len(self.train), VAL_FRACTION, self.seed))

    def split_labels(self, target: str, split: int) -> np.ndarray:
        """Labels of TRAIN, TEST, VAL or FIT."""
        if split in (TRAIN, TEST):
            return self.labels[target][split]
        return self._once(("split", target, split),
                          lambda: self.labels[target][TRAIN][self.val if split == VAL else ~self.val])

    def split_mask(self, target: str, split: int) -> np.ndarray:
        """The valid-pixel mask `(image, H, W)` of a masked target (normals) on TRAIN, TEST, VAL or FIT."""
        if split in (TRAIN, TEST):
            return self.masks[target][split]
        return self._once(("mask", target, split),
                          lambda: self.masks[target][TRAIN][self.val if split == VAL else ~self.val])

    def depth_ranks(self, h: int, w: int) -> dict[str, np.ndarray]:
        """Test depth's ranks for Spearman at a layer shape (`metrics.depth_truth_ranks`), computed once per shape."""
        return self._once(("ranks", h, w), lambda: depth_truth_ranks(self.labels["depth"][1], h, w))

    def area_labels(self, target: str, h: int, w: int, split: int = TRAIN) -> np.ndarray:
        """A split's labels area-averaged to a layer's (h, w), once per shape."""
        return self._once(("area", target, split, h, w),
                          lambda: downsample_area(self.split_labels(target, split), h, w))

    def block_truth(self, target: str, h: int, w: int, split: int) -> BlockTruth:
        """The labels' block sums for image-resolution scores of (h, w) predictions (`metrics.block_truth`)."""
        mean_map = self.mean_maps["depth"] if target == "depth" else None
        return self._once(("blocks", target, split, h, w),
                          lambda: block_truth(self.split_labels(target, split), h, w, mean_map))

    def position_reference(self, h: int, w: int) -> np.ndarray:
        """Test foreground probabilities `(image, h, w)` of the saliency probe on the position basis alone
        (`probes.positional`), fit at (h, w) like every probe: the reference of saliency beyond position."""

        def fit() -> np.ndarray:
            probe = fit_probe(position_features(len(self.train), h, w), self.fit_labels("saliency", h, w), "saliency",
                              mode=self.mode, seed=self.seed)
            return probe.predict(position_features(len(self.test), h, w))

        return self._once(("position_reference", h, w), fit)

    def mean_map_at(self, target: str, h: int, w: int) -> np.ndarray:
        """The training mean label map area-averaged to (h, w)."""
        return self._once(("map", target, h, w), lambda: downsample_area(self.mean_maps[target][None], h, w)[0])

    def fit_labels(self, target: str, h: int, w: int) -> np.ndarray:
        """Training labels as a probe fit takes them: at the layer's (h, w) for our probes (which fit at layer
        resolution); at image resolution for the paper's trainer, which upsamples."""
        return self.area_labels(target, h, w) if self.mode == "ours" else self.labels[target][0]


class GroupActs:
    """One group's training and test activations `(image, h, w, c)`, and what the probes fit on them share, built
    on first use: the standardised blocks of our probes (several fits read the same activations) and the positioned
    activations, which get position for free: for depth the mean depth map appended (`baselines.with_position`), for
    saliency the position basis (`positional.with_position_features`).

    has_position: the features already carry the position basis (the position and caption controls), so a probe on
    them is its own positioned probe."""

    def __init__(self, train: np.ndarray, test: np.ndarray, data: GridData, has_position: bool = False):
        self.train, self.test, self.data, self.has_position = train, test, data, has_position
        self._blocks: dict[str, StandardisedBlocks] = {}
        self._positioned: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def positioned(self, target: str) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) activations with position appended as `target`'s positioned probe takes it; for the
        vector targets, the features their probe reads: normals the activations with the mean normal map appended
        (`baselines_vectors.with_normal_map`), the light the activations pooled per image (`pool_activations`, its
        probe's bias carries the mean light)."""
        if target not in self._positioned:
            if target == "normals":
                m = self.data.mean_maps["normals"]
                add = lambda a: with_normal_map(a, m)  # noqa: E731
            elif target == "light":
                grid = min(LIGHT_POOL_GRID, *self.train.shape[1:3])
                add = lambda a: pool_activations(a, grid)  # noqa: E731  (image, grid * grid * c)
            elif target == "depth":
                m = self.data.mean_maps["depth"]
                add = lambda a: with_position(a, m)  # noqa: E731
            else:
                add = with_position_features
            self._positioned[target] = (add(self.train), add(self.test))
        return self._positioned[target]

    def fit_kwargs(self, positioned: str | None = None) -> dict[str, Any]:
        """Keyword arguments for `fit_probe` on the training activations (or `positioned(target)`'s)."""
        if self.data.mode != "ours":
            return {}
        key = positioned or ""
        if key not in self._blocks:
            acts = self.positioned(positioned)[0] if positioned else self.train
            self._blocks[key] = StandardisedBlocks.with_stats(acts)
        return {"blocks": self._blocks[key]}


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


def prepare_grid_data(output: str, targets: tuple[str, ...] = MAP_TARGETS,
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
    labels, maps, masks, scaler = {}, {}, {}, None
    for target in targets:
        tr, te = read_labels(output, target, train), read_labels(output, target, test)
        if target == "normals":  # (image, H, W, 3) with the pixels that have a normal
            masks[target] = (read_labels(output, target, train, mask=True), read_labels(output, target, test, mask=True))
            maps[target] = mean_normal_map(tr, masks[target][0])
        elif target == "light":  # (image, 3)
            maps[target] = mean_direction(tr)
        elif target == "saliency":  # any confident foreground pixel counts, as the paper binarises TRACER's map
            tr, te = (tr > 0.5).astype(np.float32), (te > 0.5).astype(np.float32)
        else:
            scaler = DepthScaler.fit(tr)
            tr, te = scaler.transform(tr), scaler.transform(te)
        labels[target] = (tr, te)
        if target in MAP_TARGETS:
            maps[target] = position_map(tr)
    return GridData(train, test, labels, maps, scaler, mode, seed, n_boot, masks)
