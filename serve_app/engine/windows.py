"""Long texts cut into windows that fit the model beside their hypotheses (long_text=chunk).

A text's windows are planned on the room its longest hypothesis leaves
(`serve_app.core.chunks.plan_windows`), from the text's own tokens and their character offsets.
Window 1 is the whole text, which the pair tokenizer truncates to each hypothesis's room: the
very pairs `truncate` scores. Every later window is the text's characters from its first token
to its last, scored like a text of its own, so it equals the pipeline run on that window's text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from serve_app.core.chunks import check_windows, plan_windows
from serve_app.core.errors import ClientError
from serve_app.engine.tokenizer import PairTokenizer, hypothesis_too_long


@dataclass(frozen=True)
class Windows:
    """Each text's window texts (the first is the text itself)."""

    texts: list[list[str]]

    def counts(self) -> list[int]:
        return [len(w) for w in self.texts]


def min_room(tokenizer: PairTokenizer, hyps: Sequence[str]) -> int:
    room = min(tokenizer.rooms(hyps))
    if room <= 0:
        raise hypothesis_too_long(
            tokenizer.window, "the hypothesis alone leaves no room for the text"
        )
    return room


def check_stride(tokenizer: PairTokenizer, hyps: Sequence[str], stride: int) -> None:
    room = min_room(tokenizer, hyps)
    if stride >= room:
        raise ClientError(
            f"chunk_stride={stride} must be smaller than the room a window has for the text "
            f"({room} tokens beside the longest hypothesis in a {tokenizer.window}-token "
            "window); send a smaller chunk_stride"
        )


def split(
    tokenizer: PairTokenizer,
    texts: Sequence[str],
    hyp_sets: Sequence[Sequence[str]],
    stride: int,
    max_chunks: int,
) -> Windows:
    """Windows of each text (`hyp_sets[i]` are text i's hypotheses); raises ClientError when the
    stride leaves no progress and LimitExceeded past `max_chunks` windows."""
    out: list[list[str]] = []
    encodings = tokenizer.encode_texts(texts)
    for index, (text, hyps, encoding) in enumerate(zip(texts, hyp_sets, encodings)):
        check_stride(tokenizer, hyps, stride)
        room = min_room(tokenizer, hyps)
        n = len(encoding.ids)
        if n <= room:
            out.append([text])
            continue
        word_ids = encoding.word_ids
        starts = [i == 0 or word_ids[i] != word_ids[i - 1] for i in range(n)]
        offsets = encoding.offsets

        def fits(
            start: int, end: int, text: str = text, offsets: Any = offsets, room: int = room
        ) -> bool:
            piece = text[offsets[start][0] : offsets[end - 1][1]]
            return len(tokenizer.encode_texts([piece])[0].ids) <= room

        spans = plan_windows(n, starts, room, stride, fits)
        check_windows(len(spans), max_chunks, index, room)
        # Truncation keeps the head (right side) or the tail (left side): window 1 stands for
        # the first span or the last one.
        rest = spans[:-1] if tokenizer.truncation_side == "left" else spans[1:]
        windows = [text]
        for start, end in rest:
            piece = text[offsets[start][0] : offsets[end - 1][1]]
            if piece.strip():
                windows.append(piece)
        out.append(windows)
    return Windows(out)
