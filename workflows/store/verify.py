"""Checking a run's stored bytes: every chunk of its image, activation and label arrays (and its control variants')
read back through its CRC32C, and the work shards that hold a damaged one taken back, so `--resume` regenerates
exactly those.

    sceneprobe verify runs/toy              # lists damaged chunks, marks their shards failed
    sceneprobe verify runs/toy --dry-run    # lists only
    sceneprobe run configs/toy.yaml --resume

Every chunk a run writes carries a CRC32C (`run_store.checksummed`: in the shard index and after each inner chunk);
a flipped byte fails it, which Zarr reports as a checksum mismatch and `take_images` as a `DamagedChunkError`. An
activation or image chunk unpublishes its generation shard (`shards/<shard>.json` becomes `.failed.json`), a label
chunk its label shard, so the stage that wrote it writes it again on the next run. Stores written before checksums
existed have none on their inner chunks, and a flipped byte there goes unnoticed.
"""

from __future__ import annotations

import posixpath
import sys
from collections.abc import Callable
from dataclasses import dataclass

from workflows.config import TARGETS
from workflows.store.files import filesystem
from workflows.store.paths import IMAGES, VARIANTS, activations, label_mask, label_records, labels, shard_key
from workflows.store.records import Records
from workflows.store.run_store import is_checksum_error, load_layout, load_run_config, open_store, shard_records


@dataclass(frozen=True)
class Damage:
    output: str  # the run or control variant holding it
    array: str
    images: tuple[int, int]  # [first, last] image of the damaged block
    shard: int  # the work shard that wrote it

    def __str__(self) -> str:
        return f"{self.output}: {self.array} images {self.images[0]}-{self.images[1]} (work shard {self.shard})"


def run_outputs(output: str) -> list[str]:
    """The run and each control variant stored under it."""
    fs, root = filesystem(output)
    base = posixpath.join(root, VARIANTS)
    variants = sorted(fs.ls(base, detail=False)) if fs.exists(base) else []
    return [output] + [f"{output.rstrip('/')}/{VARIANTS}/{posixpath.basename(v)}" for v in variants]


def scan(output: str, progress: Callable[[str], None] | None = None) -> list[Damage]:
    """Every damaged block of one store: each array is read one Zarr shard (or chunk) of images at a time."""
    cfg = load_run_config(output)  # first: names a folder that holds no run
    root, layout = open_store(output), load_layout(output)
    arrays = [IMAGES] + [activations(h) for h in layout.acts] + [
        path for t in TARGETS for path in (labels(t), label_mask(t)) if path in root]
    found = []
    for k, path in enumerate(arrays):
        array = root[path]
        block = (array.shards or array.chunks)[0]
        for lo in range(0, array.shape[0], block):
            hi = min(lo + block, array.shape[0])
            try:
                array[lo:hi]
            except ValueError as err:
                if not is_checksum_error(err):
                    raise
                found.append(Damage(output, path, (lo, hi - 1), lo // cfg.shard_size))
        if progress:
            progress(f"verify {output}: {k + 1}/{len(arrays)} arrays ({path}), {len(found)} damaged blocks")
    return found


def take_back(damage: list[Damage]) -> None:
    """Unpublish the shards holding damaged blocks: generation shards for images and activations, label shards for
    labels; `--resume` then rewrites them."""
    for d in damage:
        reason = {"damaged": d.array, "images": list(d.images)}
        target = next((t for t in TARGETS if d.array in (labels(t), label_mask(t))), None)
        records = Records(d.output, label_records(target)) if target else shard_records(d.output)
        records.unpublish(shard_key(d.shard), reason)


def verify(output: str, dry_run: bool = False, stream=None) -> list[Damage]:
    """Scan the run and its variants, print what is damaged, and (unless `dry_run`) take its shards back."""
    stream = stream or sys.stderr
    damage = [d for out in run_outputs(output) for d in scan(out, lambda m: print(m, file=stream, flush=True))]
    for d in damage:
        print(f"damaged: {d}", file=stream)
    if damage and not dry_run:
        take_back(damage)
        shards = sorted({(d.output, d.shard) for d in damage})
        print(f"{len(shards)} work shard(s) marked failed; regenerate them with `sceneprobe run CONFIG --resume` "
              "(or the stage that wrote them)", file=stream)
    elif not damage:
        print(f"verify {output}: every chunk's checksum matches", file=stream)
    return damage
