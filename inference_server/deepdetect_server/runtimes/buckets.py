"""Padded batch-size buckets for the GPU: a fixed set of shapes, each compiled or captured before ready.

CUDA graphs and `torch.compile` specialise on shapes. Serving every batch size 1..256 would mean 256
captures (or recompiles at request time, past dynamo's recompile limit). Instead batches are padded up to
the next bucket: powers of two up to `max_batch_size`, plus `max_batch_size` itself. Padding wastes at
most half a batch of compute at the smallest sizes, where the GPU is idle anyway.
"""

from __future__ import annotations

import bisect


def plan_buckets(max_batch_size: int, smallest: int = 1) -> list[int]:
    if max_batch_size < 1 or smallest < 1:
        raise ValueError("batch sizes start at 1")
    out = []
    b = smallest
    while b < max_batch_size:
        out.append(b)
        b *= 2
    out.append(max_batch_size)
    return out


def bucket_for(n: int, buckets: list[int]) -> int:
    """The smallest bucket that holds n images."""
    if n < 1:
        raise ValueError("an empty batch has no bucket")
    i = bisect.bisect_left(buckets, n)
    if i == len(buckets):
        raise ValueError(f"batch of {n} is larger than the largest bucket ({buckets[-1]})")
    return buckets[i]


def padding_waste(buckets: list[int], max_batch_size: int) -> float:
    """Mean fraction of padded (wasted) rows over batch sizes 1..max, for docs and tests."""
    wasted = sum(bucket_for(n, buckets) - n for n in range(1, max_batch_size + 1))
    total = sum(bucket_for(n, buckets) for n in range(1, max_batch_size + 1))
    return wasted / total
