"""One whole Zarr shard of activations written directly: the bytes Zarr's sharding codec writes, without its copies.

Zarr's generic write path (selection, per-chunk buffers, concatenation, one event-loop thread) moved 150-250 MB/s
in our benchmarks whatever the thread count or disk, while SD v1.4 at 512 px on an H100 produces about 1.6 GB/s of
activations. A batch is always written whole, and in the writer's step-major buffer each inner chunk
`(batch, 1, h, w, c)` is one contiguous slice, so the shard is just the encoded steps followed by the index
`(offset, nbytes)` per inner chunk and its CRC32C; each inner chunk carries its own CRC32C too (the arrays'
`Crc32cCodec`, so a flipped byte anywhere is a checksum error, never data). Used only for layouts checked against the
array's own metadata; anything else (an edge batch, other codecs) goes through Zarr.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

import google_crc32c
import numpy as np
import zarr
from numcodecs import Blosc, Zstd
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec

LITTLE = BytesCodec(endian="little")


Compressor = Zstd | Blosc


@dataclass(frozen=True)
class InnerEncoding:
    """How one inner chunk is encoded: compressed (None: raw bytes), then optionally followed by its CRC32C."""

    compressor: Compressor | None
    checksum: bool

    def encode(self, data: memoryview) -> list[Any]:
        """The byte parts of one inner chunk."""
        if self.compressor is not None:
            data = memoryview(self.compressor.encode(data))
        if not self.checksum:
            return [data]
        crc = google_crc32c.value(np.frombuffer(data, np.uint8))  # its C API takes arrays, not memoryviews
        return [data, np.array([crc], "<u4").tobytes()]


def direct_encoding(arr: zarr.Array) -> InnerEncoding | None:
    """How the inner chunks of `arr` are encoded if its shards can be written directly, else None.

    Direct writing needs: one sharding codec, index at the end encoded as little-endian bytes + CRC32C, inner codecs
    little-endian bytes, optionally Zstd or Blosc, optionally CRC32C, inner chunks `(batch, 1, ...)` of shards
    `(batch, steps, ...)`. Blosc gets the array's item size as its typesize, as Zarr's BloscCodec evolves it, so
    its shuffles group the same bytes and the encoded chunks are Zarr's own."""
    codecs = arr.metadata.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sharding = codecs[0]
    chunk, shard = sharding.chunk_shape, arr.shards
    if (sharding.index_location.value != "end" or tuple(sharding.index_codecs) != (LITTLE, Crc32cCodec())
            or chunk[1] != 1 or chunk[:1] + chunk[2:] != shard[:1] + shard[2:] or arr.dtype.byteorder == ">"):
        return None
    inner = list(sharding.codecs)
    checksum = bool(inner) and isinstance(inner[-1], Crc32cCodec)
    inner = inner[:-1] if checksum else inner
    if inner == [LITTLE]:
        return InnerEncoding(None, checksum)
    if len(inner) == 2 and inner[0] == LITTLE and isinstance(inner[1], ZstdCodec):
        return InnerEncoding(Zstd(level=inner[1].level, checksum=inner[1].checksum), checksum)
    if len(inner) == 2 and inner[0] == LITTLE and isinstance(inner[1], BloscCodec):
        blosc = inner[1]
        shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
        return InnerEncoding(Blosc(cname=blosc.cname.value, clevel=blosc.clevel, shuffle=shuffle[blosc.shuffle.value],
                                   blocksize=blosc.blocksize, typesize=arr.dtype.itemsize), checksum)
    return None


def encode_shard(steps: np.ndarray, encoding: InnerEncoding) -> list[Any]:
    """The byte parts of one shard from `steps (step, batch, h, w, c)`: each step's inner chunk, then the index.

    Uncompressed chunks are memoryviews of `steps` (no copy)."""
    parts: list[Any] = []
    index = np.empty((len(steps), 2), "<u8")  # (offset, nbytes) of inner chunk (0, s, 0, 0, 0)
    offset = 0
    for s, chunk in enumerate(steps):
        chunk_parts = encoding.encode(memoryview(np.ascontiguousarray(chunk)).cast("B"))
        nbytes = sum(memoryview(p).nbytes for p in chunk_parts)
        parts += chunk_parts
        index[s] = offset, nbytes
        offset += nbytes
    raw = index.tobytes()
    parts.append(raw + np.array([google_crc32c.value(raw)], "<u4").tobytes())
    return parts


def write_shard(fs: Any, root: str, arr: zarr.Array, shard: int, steps: np.ndarray, encoding: InnerEncoding) -> None:
    """Write shard number `shard` (along images) of `arr` from `steps (step, batch, h, w, c)` under `root`."""
    key = arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))
    path = posixpath.join(root, arr.path, key)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        for part in encode_shard(steps, encoding):
            f.write(part)
