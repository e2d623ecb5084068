"""What fp16 activations compress to, and how fast, with the codecs Zarr v3 offers: side by side in one run, on one
core, on the inner chunks a run stores (`(batch, 1, h, w, c)`, one (hook, step) of a batch of images).

    .venv/bin/python benchmarks/bench_codecs.py                      # the toy run's own activations (runs/toy)
    .venv/bin/python benchmarks/bench_codecs.py --run RUN --batches 8 --steps 0 7 14

Real activations, not random numbers: random fp16 normals have a full-entropy mantissa and no codec does much with
them, while self-attention outputs have a few heavy channels and a narrow exponent range, which byte- and
bit-shuffling expose. Per codec: the stored size as a share of raw, and encode / decode MB/s of raw data per core
(numcodecs with Blosc held to one thread), so a GPU run's writer budget (MB/s per writer thread) can be read off.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from numcodecs import Blosc, Zstd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workflows.store import load_layout, open_store  # noqa: E402
from workflows.store.paths import activations  # noqa: E402

# Zarr v3's codecs: ZstdCodec(level) and BloscCodec(cname, clevel, shuffle); numcodecs implements both
CODECS = {
    "zstd-1": Zstd(level=1), "zstd-3": Zstd(level=3), "zstd-5": Zstd(level=5), "zstd-9": Zstd(level=9),
    "blosc-lz4-noshuffle": Blosc("lz4", 5, Blosc.NOSHUFFLE), "blosc-lz4-shuffle": Blosc("lz4", 5, Blosc.SHUFFLE),
    "blosc-lz4-bitshuffle": Blosc("lz4", 5, Blosc.BITSHUFFLE),
    "blosc-zstd1-shuffle": Blosc("zstd", 1, Blosc.SHUFFLE), "blosc-zstd1-bitshuffle": Blosc("zstd", 1, Blosc.BITSHUFFLE),
    "blosc-zstd3-shuffle": Blosc("zstd", 3, Blosc.SHUFFLE), "blosc-zstd3-bitshuffle": Blosc("zstd", 3, Blosc.BITSHUFFLE),
}


def inner_chunks(run: str, batch: int, batches: int, steps: list[int]) -> list[np.ndarray]:
    """fp16 inner chunks `(batch, 1, h, w, c)` of every U-Net hook at `steps`, for the first `batches` batches."""
    root, layout = open_store(run), load_layout(run)
    chunks = []
    for hook in layout.acts:
        array = root[activations(hook)]
        if array.dtype != np.float16:  # the float32 extras are stored as they are
            continue
        for b in range(min(batches, array.shape[0] // batch)):
            block = np.asarray(array[b * batch:(b + 1) * batch])  # (batch, step, h, w, c)
            chunks += [np.ascontiguousarray(block[:, s:s + 1]) for s in steps if s < block.shape[1]]
    if not chunks:
        raise SystemExit(f"no float16 activations in {run}; run `sceneprobe run configs/toy.yaml` first")
    return chunks


def measure(codec, chunks: list[np.ndarray], repeat: int) -> dict:
    """Stored share of raw bytes, and encode / decode MB/s of raw bytes (best of `repeat`)."""
    raw = sum(c.nbytes for c in chunks)
    encoded = [codec.encode(c) for c in chunks]
    for c, e in zip(chunks[:4], encoded[:4]):  # lossless, or the numbers mean nothing
        assert np.array_equal(np.frombuffer(codec.decode(e), np.float16), c.reshape(-1))
    best_enc = best_dec = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for c in chunks:
            codec.encode(c)
        best_enc = min(best_enc, time.perf_counter() - start)
        start = time.perf_counter()
        for e in encoded:
            codec.decode(e)
        best_dec = min(best_dec, time.perf_counter() - start)
    mb = raw / 2**20
    return {"share": sum(len(e) for e in encoded) / raw, "encode": mb / best_enc, "decode": mb / best_dec, "mb": mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/toy", help="a run whose store holds activations (default runs/toy)")
    parser.add_argument("--batch", type=int, default=4, help="images per inner chunk (the run's batch_size)")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 7, 14])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--codecs", nargs="+", choices=list(CODECS), default=list(CODECS))
    args = parser.parse_args()
    Blosc.use_threads = False  # one core: the per-writer-thread budget
    chunks = inner_chunks(args.run, args.batch, args.batches, args.steps)
    print(f"{len(chunks)} inner chunks, {sum(c.nbytes for c in chunks) / 2**20:.0f} MB of fp16 from {args.run}, "
          f"steps {args.steps}, one core\n")
    print("| codec | stored / raw | encode MB/s | decode MB/s |\n|---|---|---|---|")
    print("| none | 1.000 | - | - |")
    for name in args.codecs:
        r = measure(CODECS[name], chunks, args.repeat)
        print(f"| {name} | {r['share']:.3f} | {r['encode']:.0f} | {r['decode']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
