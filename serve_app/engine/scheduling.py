"""Length-aware scheduling: which pairs share a padded forward, and how a batch is split.

Padding mixed lengths into one batch cost 2.2x against length-bucketed batches here, so pairs
are sorted by length and cut into sub-batches whose padded size (longest x count) fits a token
budget. With several workers the sorted pairs are re-cut into runs of about equal padded cost,
so the threads finish together.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serve_app.engine.protocol import PaddedBatch, Pair


def pair_tokens(pair: Pair) -> int:
    return len(pair[0])


def length_buckets(order: Sequence[int], pairs: Sequence[Pair], budget: int) -> list[list[int]]:
    """Cut length-sorted indices into runs whose padded size fits the token budget."""
    buckets: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = pair_tokens(pairs[i])  # sorted ascending, so the newest is the longest
        if current and longest * (len(current) + 1) > budget:
            buckets.append(current)
            current = []
        current.append(i)
    if current:
        buckets.append(current)
    return buckets


def balanced(
    order: Sequence[int], pairs: Sequence[Pair], buckets: int, workers: int
) -> list[list[int]]:
    """Cut length-sorted indices into at most a multiple of `workers` runs of about equal cost.

    Runs of equal cost keep the threads busy to the end: with the budget's own cut, a batch of
    3 sub-batches on 2 threads leaves one thread idle for a third of the batch. The count is the
    budget's count rounded up to a multiple of workers (a lone request's 5 pairs run as 3 + 2).
    A forward pays its padded size (the longest pair x the pairs), so the cut minimises the
    largest padded size of a run: the smallest cap for which consecutive runs fit the count.
    """
    runs = min(-(-max(buckets, 1) // workers) * workers, len(order))
    lengths = [pair_tokens(pairs[i]) for i in order]
    if runs <= 1:
        return [list(order)]

    def cut(cap: int) -> list[int]:
        """Run boundaries when each run's padded size stays within cap (sorted ascending)."""
        ends, start = [], 0
        for end in range(1, len(lengths) + 1):
            if lengths[end - 1] * (end - start) > cap:
                ends.append(end - 1)
                start = end - 1
        return [*ends, len(lengths)]

    low, high = max(lengths), max(lengths) * len(lengths)
    while low < high:  # the smallest cap that needs no more than `runs` runs
        cap = (low + high) // 2
        if len(cut(cap)) <= runs:
            high = cap
        else:
            low = cap + 1
    chunks, start = [], 0
    for end in cut(low):
        chunks.append(list(order[start:end]))
        start = end
    return chunks


def pad(pairs: Sequence[Pair], pad_id: int, with_types: bool) -> PaddedBatch:
    """One right-padded batch as int64 arrays (what torch and ONNX Runtime both take)."""
    longest = max(pair_tokens(p) for p in pairs)
    ids = np.full((len(pairs), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(pairs), longest), dtype=np.int64)
    types = np.zeros((len(pairs), longest), dtype=np.int64) if with_types else None
    for row, (pair_ids, pair_types) in enumerate(pairs):
        n = len(pair_ids)
        ids[row, :n] = pair_ids
        mask[row, :n] = 1
        if types is not None and pair_types is not None:
            types[row, :n] = pair_types
    return PaddedBatch(input_ids=ids, attention_mask=mask, token_type_ids=types)
