"""Long texts in windows: where to cut a text, and how a label's window scores combine.

Pure arithmetic on token positions and score arrays; the engine tokenizes
(`serve_app.engine.windows`). A text longer than the model's room is cut into windows of at
most `room` tokens that overlap by about `stride` tokens; every window but the first starts on a
token that starts a word, and ends on one (unless a single word is longer than the room), so a
window's text tokenized alone gives the window's tokens (each window is scored like a text of
its own). The first window is what truncation keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from serve_app.core.errors import LimitExceeded


def plan_windows(
    n_tokens: int,
    word_starts: Sequence[bool],
    room: int,
    stride: int,
    fits: Callable[[int, int], bool] = lambda start, end: True,
) -> list[tuple[int, int]]:
    """Token ranges [start, end) covering [0, n_tokens): the first is [0, room), each next one
    starts on a word start about `stride` tokens before the previous end (never at or before
    the previous start, never after its end), and ends at the last word start that keeps it
    within `room` tokens. `fits(start, end)` may refuse a window (its text, tokenized alone,
    is longer than the room: byte-level BPE spells a word differently without the space before
    it); the window then ends a word earlier."""
    if room <= 0 or not 0 <= stride < room:
        raise ValueError(f"need 0 <= stride < room, got stride={stride}, room={room}")
    if n_tokens <= room:
        return [(0, n_tokens)]
    starts = [i for i in range(n_tokens) if i == 0 or word_starts[i]]
    windows = [(0, room)]
    while windows[-1][1] < n_tokens:
        prev_start, prev_end = windows[-1]
        target = prev_end - stride
        # The first word start at or after the target, within the previous window's end.
        after = [i for i in starts if target <= i <= prev_end and i > prev_start]
        if after:
            start = after[0]
        else:
            # No word starts there: the last one before it, or cut mid-word at the end.
            before = [i for i in starts if prev_start < i < target]
            start = before[-1] if before else prev_end
        end = min(n_tokens, start + room)
        if end < n_tokens:
            # End before a word start, so no word is cut (unless one word fills the room).
            inner = [i for i in starts if start < i <= end]
            if inner:
                end = inner[-1]
        while end > start + 1 and not fits(start, end):
            inner = [i for i in starts if start < i < end]
            end = inner[-1] if inner else end - 1
        windows.append((start, end))
    return windows


def check_windows(count: int, max_chunks: int, index: int, room: int) -> None:
    if count > max_chunks:
        raise LimitExceeded(
            f"texts[{index}] needs {count} windows of {room} tokens, over limits.max_chunks="
            f"{max_chunks}; shorten the text, lower chunk_stride, or use long_text='truncate'"
        )


def combine(window_scores: Sequence[np.ndarray], aggregate: str, renormalise: bool) -> np.ndarray:
    """One text's label scores from its windows' (each in label order): the max or the mean of
    each label over the windows; `renormalise` (single-label answers) rescales them to sum to 1.
    One window is returned unchanged, so a short text scores exactly as truncation scores it."""
    if len(window_scores) == 1:
        return np.asarray(window_scores[0], dtype=np.float32)
    stacked = np.stack([np.asarray(s, dtype=np.float32) for s in window_scores])
    out = stacked.max(axis=0) if aggregate == "max" else stacked.mean(axis=0)
    if renormalise:
        out = out / out.sum()
    result: np.ndarray = out.astype(np.float32)
    return result


def predicted(
    labels: Sequence[str], scores: Sequence[float], threshold: float, multi_label: bool
) -> list[str]:
    """Labels at or above `threshold`: every one (multi-label, in the given order) or the top
    one (single-label, `labels` sorted highest first); empty means "none of these"."""
    if multi_label:
        return [label for label, score in zip(labels, scores) if score >= threshold]
    if labels and scores[0] >= threshold:
        return [labels[0]]
    return []
