"""long_text=chunk on the engine (torch, tiny model) against the transformers pipeline.

Each window is scored like a text of its own, so a chunked score equals the pipeline run on
each window's text, combined; a text that fits is scored exactly as truncation scores it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import pipeline

from serve_app.config import LimitsConfig, ModelConfig
from serve_app.core.chunks import plan_windows
from serve_app.core.errors import ClientError, LimitExceeded
from serve_app.core.requests import prepare_request
from serve_app.engine.engine import Engine
from serve_app.engine.windows import split

WORDS = (
    "the bank raised interest rates again while the football team won its final match and "
    "a new phone with a bigger battery reached the shops before the storm hit the coast"
).split()
# About 180 tokens: several windows of the tiny model's 64-token window.
_rng = random.Random(7)
LONG = " ".join(_rng.choice(WORDS) for _ in range(160)) + "."
SHORT = "The football team won the final."
LABELS = ["sports", "finance", "weather"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    return Engine(ModelConfig(model=str(tiny_model_dir)), str(tiny_model_dir))


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> Any:
    return pipeline("zero-shot-classification", model=str(tiny_model_dir), device="cpu")


def run(engine: Engine, texts: list[str], labels: list[Any], **options: Any) -> list[dict]:
    multi = options.pop("multi_label", False)
    request = prepare_request(
        texts, labels, "This example is {}.", multi, LimitsConfig(), **options
    )
    return [r.as_dict() for r in engine.classify(request).results]


def by_label(result: dict) -> dict[str, float]:
    return dict(zip(result["labels"], result["scores"]))


def window_texts(engine: Engine, text: str, stride: int) -> list[str]:
    hyps = [f"This example is {label}." for label in LABELS]
    return split(engine.tokenizer, [text], [hyps], stride, 64).texts[0]


@pytest.mark.parametrize("stride", [0, 8])
def test_windows_cover_the_text_in_order_and_fit(engine: Engine, stride: int) -> None:
    """Later windows are slices of the text from a word start, each fitting the room alone
    (tokenized alone, as the pipeline would), advancing with overlap and reaching the end."""
    windows = window_texts(engine, LONG, stride)
    assert len(windows) >= 3
    assert windows[0] == LONG  # window 1 is the text itself, truncated as `truncate` does
    hyps = [f"This example is {label}." for label in LABELS]
    room = min(engine.tokenizer.rooms(hyps))
    position = 0
    for text in windows[1:]:
        assert len(engine.tokenizer.encode_texts([text])[0].ids) <= room
        start = LONG.find(text, max(0, position - 400))
        assert start > 0 and (start == 0 or LONG[start - 1] == " "), "starts a word"
        assert start < max(position, 1) + 400
        position = start + len(text)
    assert LONG.endswith(windows[-1])


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("aggregate", ["max", "mean"])
def test_chunked_scores_equal_the_pipeline_on_each_window(
    engine: Engine, reference: Any, multi_label: bool, aggregate: str
) -> None:
    ours = by_label(
        run(
            engine,
            [LONG],
            LABELS,
            multi_label=multi_label,
            long_text="chunk",
            chunk_stride=4,
            chunk_aggregate=aggregate,
        )[0]
    )
    windows = window_texts(engine, LONG, 4)
    per_window = []
    for text in windows:
        ref = reference(text, candidate_labels=LABELS, multi_label=multi_label)
        got = dict(zip(ref["labels"], ref["scores"]))
        per_window.append(np.array([got[label] for label in LABELS], dtype=np.float32))
    # The combination computed here, independently of zsc's: max or mean over the windows,
    # single-label answers renormalised to sum to 1.
    stacked = np.stack(per_window)
    want = stacked.max(axis=0) if aggregate == "max" else stacked.mean(axis=0)
    if not multi_label:
        want = want / want.sum()
    for label, score in zip(LABELS, want):
        assert abs(ours[label] - float(score)) <= 1e-5, (label, ours, want)


def test_the_first_window_is_exactly_the_truncate_pairs(engine: Engine) -> None:
    truncate = prepare_request([LONG], LABELS, None, None, LimitsConfig())
    chunk = prepare_request([LONG], LABELS, None, None, LimitsConfig(), long_text="chunk")
    first = engine.start(truncate).encoded.pairs
    chunked = engine.start(chunk)
    assert chunked.windows is not None and chunked.windows[0] >= 3
    assert chunked.encoded.pairs[: len(LABELS)] == first
    assert engine.start(truncate).encoded.truncated == [0]
    assert chunked.encoded.truncated == []  # every token is scored in some window


@pytest.mark.parametrize("multi_label", [False, True])
def test_a_text_that_fits_scores_exactly_as_truncate(engine: Engine, multi_label: bool) -> None:
    truncate = run(engine, [SHORT], LABELS, multi_label=multi_label)[0]
    chunk = run(engine, [SHORT], LABELS, multi_label=multi_label, long_text="chunk")[0]
    assert chunk.pop("windows") == 1
    assert chunk == truncate  # bit for bit


def test_max_multi_label_never_scores_a_label_below_truncate(engine: Engine) -> None:
    texts = [LONG, LONG[::-1].strip() + ".", SHORT]
    truncate = run(engine, texts, LABELS, multi_label=True)
    chunk = run(engine, texts, LABELS, multi_label=True, long_text="chunk", chunk_stride=2)
    for t, c in zip(truncate, chunk):
        for label, score in by_label(t).items():
            assert by_label(c)[label] >= score


def test_single_label_chunked_scores_sum_to_one(engine: Engine) -> None:
    result = run(engine, [LONG], LABELS, long_text="chunk", chunk_aggregate="max")[0]
    assert result["windows"] >= 3
    assert abs(sum(result["scores"]) - 1.0) <= 1e-5


def test_chunk_pairs_are_counted_and_bounded(engine: Engine) -> None:
    request = prepare_request([LONG, SHORT], LABELS, None, None, LimitsConfig(), long_text="chunk")
    # Charged up front as the bound, max_chunks windows per text.
    assert request.pairs == 2 * len(LABELS) * LimitsConfig().max_chunks
    answer = engine.classify(request)
    windows = [r.windows for r in answer.results]
    assert answer.pairs == sum(windows) * len(LABELS)  # usage: what actually ran
    few = prepare_request([LONG], LABELS, None, None, LimitsConfig(max_chunks=2), long_text="chunk")
    with pytest.raises(LimitExceeded, match=r"limits\.max_chunks=2"):
        engine.classify(few)


def test_a_stride_that_leaves_no_progress_is_a_client_error(engine: Engine) -> None:
    request = prepare_request(
        [LONG], LABELS, None, None, LimitsConfig(), long_text="chunk", chunk_stride=60
    )
    with pytest.raises(ClientError, match="chunk_stride=60 must be smaller"):
        engine.check_labels(request)
    with pytest.raises(ClientError, match="chunk_stride=60 must be smaller"):
        engine.classify(request)


@pytest.mark.parametrize("seed", range(30))
def test_plan_windows_covers_the_text_in_windows_that_fit(seed: int) -> None:
    rng = random.Random(seed)
    n, room = rng.randint(1, 400), rng.randint(2, 60)
    stride = rng.randint(0, room - 1)
    starts = [i == 0 or rng.random() < 0.6 for i in range(n)]
    spans = plan_windows(n, starts, room, stride)
    assert spans[0] == (0, min(n, room))
    assert spans[-1][1] == n
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert s0 < s1 <= e0, "windows advance without gaps"
        assert e1 - s1 <= room and e1 > s1
