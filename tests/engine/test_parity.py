"""The engine (torch backend) against the transformers pipeline, on the tiny model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from parity import CASES, LONG_TEXT, Case, as_list, assert_same_results, classify_from_logits
from transformers import pipeline

from serve_app.config import LimitsConfig, ModelConfig
from serve_app.core.errors import ClientError
from serve_app.core.requests import prepare_request
from serve_app.devtools.test_models import build_test_model, wordpiece_tokenizer
from serve_app.engine.engine import Engine
from serve_app.engine.protocol import PaddedBatch
from serve_app.engine.tokenizer import PairTokenizer


def make_engine(directory: Path, **settings: Any) -> Engine:
    return Engine(ModelConfig(model=str(directory), **settings), str(directory))


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    return make_engine(tiny_model_dir)


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path):
    return pipeline("zero-shot-classification", model=str(tiny_model_dir), device="cpu")


def score(engine: Engine, case: Case) -> list[dict]:
    request = prepare_request(
        case.texts, case.labels, case.template, case.multi_label, LimitsConfig()
    )
    return [r.as_dict() for r in engine.classify(request).results]


class CountingBackend:
    """The engine's real backend, counting the rows it is asked to run."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.rows = 0

    def forward(self, batch: PaddedBatch) -> np.ndarray:
        self.rows += batch.input_ids.shape[0]
        return self.inner.forward(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_scores_equal_the_pipeline(engine: Engine, reference, case: Case) -> None:
    ref = as_list(reference(case.texts, **case.pipeline_kwargs()))
    assert_same_results(score(engine, case), ref)


def test_small_token_budgets_split_batches_without_changing_scores(
    engine: Engine, reference
) -> None:
    case = next(c for c in CASES if c.name == "many_texts")
    request = prepare_request(case.texts, case.labels, case.template, False, LimitsConfig())
    pending = engine.start(request)
    results = engine.finish(
        pending, list(engine.forward(pending.todo, max_batch_tokens=64))
    ).results
    ref = as_list(reference(case.texts, **case.pipeline_kwargs()))
    assert_same_results([r.as_dict() for r in results], ref)


def test_the_window_truncates_only_the_premise_and_is_reported(engine: Engine) -> None:
    case = next(c for c in CASES if c.name == "longer_than_window")
    encoded = engine.tokenizer.encode(case.texts + ["short"], [["This example is finance."]] * 2)
    assert encoded.truncated == [0]
    assert len(encoded.pairs[0][0]) == engine.window
    hypothesis_ids = engine.tokenizer.hypotheses(["This example is finance."])[0].ids
    # The hypothesis survives whole at the end: <s> premise... </s></s> hypothesis </s>
    assert list(encoded.pairs[0][0][-len(hypothesis_ids) - 1 : -1]) == hypothesis_ids


def test_identical_pairs_are_computed_once_and_answered_for_each(tiny_model_dir: Path) -> None:
    engine = make_engine(tiny_model_dir)
    counting = CountingBackend(engine.backend)
    engine.backend = counting
    request = prepare_request(
        ["same text"] * 3, ["a", "a"], "This example is {}.", False, LimitsConfig()
    )
    result = engine.classify(request)
    assert result.pairs == 6 and counting.rows == 1  # six pairs asked, one forwarded
    assert all(r.scores == result.results[0].scores for r in result.results)


@pytest.mark.parametrize(
    "label_order",
    [("entailment", "neutral", "contradiction"), ("neutral", "entailment", "contradiction")],
    ids=["entailment_first", "neutral_first"],
)
def test_other_label_maps_give_correct_scores(tmp_path: Path, label_order: tuple[str, ...]) -> None:
    directory = build_test_model(tmp_path / "m", label_order=label_order, seed=3)
    engine = make_engine(directory)
    ent, con = label_order.index("entailment"), label_order.index("contradiction")
    assert (engine.indices.entailment, engine.indices.contradiction) == (ent, con)

    texts, labels = ["Doctors recommend regular exercise."], ["health", "finance", "music"]
    request = prepare_request(texts, labels, "This example is {}.", False, LimitsConfig())
    logits = engine.forward(engine.start(request).todo)
    # The expected scores are computed here from the raw logits and each mode's definition.
    single = classify_from_logits(texts, labels, logits, engine.indices, multi_label=False)[0]
    e = np.exp(logits[:, ent] - logits[:, ent].max())
    expected_single = dict(zip(labels, e / e.sum()))
    for label, s in zip(single.labels, single.scores):
        assert abs(s - expected_single[label]) < 1e-6

    multi = classify_from_logits(texts, labels, logits, engine.indices, multi_label=True)[0]
    expected_multi = dict(zip(labels, 1 / (1 + np.exp(logits[:, con] - logits[:, ent]))))
    for label, s in zip(multi.labels, multi.scores):
        assert abs(s - expected_multi[label]) < 1e-6

    # Single-label mode does not involve contradiction, so it must equal the pipeline for both.
    ref = pipeline("zero-shot-classification", model=str(directory), device="cpu")
    assert_same_results([single.as_dict()], [ref(texts[0], candidate_labels=labels)])
    if label_order[0] == "entailment":
        # The pipeline picks index -1 here, which is contradiction: equal in multi-label too.
        assert_same_results(
            [multi.as_dict()], [ref(texts[0], candidate_labels=labels, multi_label=True)]
        )


# -- tokenization: pairs assembled from parts tokenized once equal the pipeline's own ---------

TOKENIZATION_TEXTS = [
    "The new phone's battery lasts two days.",
    LONG_TEXT,
    "  leading and trailing spaces  ",
    "Ünïcödé, emoji 🎉 and\ttabs\nnew lines",
    "x",
    "The new phone's battery lasts two days.",  # a repeated text
]
TOKENIZATION_LABELS = ["technology", "a much longer label with several words", "x", "technology"]


@pytest.mark.parametrize("template", ["This example is {}.", "{}", "Topic: {} — or is it?"])
def test_pairs_are_tokenized_exactly_as_the_pipeline_does(
    engine: Engine, reference, template: str
) -> None:
    hyps = [template.format(label) for label in TOKENIZATION_LABELS]
    encoded = engine.tokenizer.encode(TOKENIZATION_TEXTS, [hyps] * len(TOKENIZATION_TEXTS))
    expected_pairs = []
    for text in TOKENIZATION_TEXTS:
        for hyp in hyps:
            # The pipeline's own tokenization step, called on one pair as its preprocess does.
            ids = reference._parse_and_tokenize([[text, hyp]])["input_ids"][0]
            expected_pairs.append((tuple(ids.tolist()), None))
    assert encoded.pairs == expected_pairs
    # Reported as cut: exactly the texts with a pair that fills the window (the long one first).
    filled = {i // len(hyps) for i, p in enumerate(encoded.pairs) if len(p[0]) == engine.window}
    assert 1 in encoded.truncated and set(encoded.truncated) == filled


def test_hypotheses_are_tokenized_once_and_reused(engine: Engine) -> None:
    first = engine.tokenizer.hypotheses(["This example is reuse."])[0]
    again = engine.tokenizer.hypotheses(["This example is reuse.", "This example is reuse."])
    assert again[0] is first and again[1] is first


def _bert_style_tokenizer(truncation_side: str = "right"):
    """A WordPiece tokenizer with BERT's pair layout and token types, built offline."""
    corpus = [LONG_TEXT, *TOKENIZATION_TEXTS, "this example is about sports and music"]
    return wordpiece_tokenizer(corpus, 300, 48, truncation_side)


@pytest.mark.parametrize("side", ["right", "left"])
def test_pair_assembly_matches_for_token_types_and_left_truncation(side: str) -> None:
    tokenizer = _bert_style_tokenizer(side)
    hyps = [f"This example is {label}." for label in TOKENIZATION_LABELS]
    pair_tokenizer = PairTokenizer(
        tokenizer.backend_tokenizer,
        window=48,
        specials=tokenizer.num_special_tokens_to_add(pair=True),
        truncation_side=side,
        pad_id=tokenizer.pad_token_id,
        uses_token_types=True,
    )
    encoded = pair_tokenizer.encode(TOKENIZATION_TEXTS, [hyps] * len(TOKENIZATION_TEXTS))
    expected = []
    for text in TOKENIZATION_TEXTS:
        for hyp in hyps:
            ref = tokenizer(text, hyp, truncation="only_first", max_length=48)
            expected.append((tuple(ref["input_ids"]), tuple(ref["token_type_ids"])))
    assert encoded.pairs == expected
    assert any(1 in types for _, types in encoded.pairs)  # the hypothesis has type 1
    assert encoded.truncated == [1]


def test_each_text_can_have_its_own_labels(engine: Engine, reference) -> None:
    """What the prefilter sends: text i scored against its own k labels only."""
    texts = ["Stocks rallied after earnings.", "Heavy rain is expected tomorrow."]
    labels = ["finance", "weather", "sports", "travel"]
    request = prepare_request(texts, labels, "This example is {}.", False, LimitsConfig(), top_k=2)
    result = engine.classify(request.with_candidates([[0, 2], [1, 3]]))
    assert result.pairs == 4
    for text, kept, got in zip(
        texts, (["finance", "sports"], ["weather", "travel"]), result.results
    ):
        assert_same_results([got.as_dict()], [reference(text, candidate_labels=kept)])


def test_a_hypothesis_that_fills_the_window_is_a_client_error(engine: Engine) -> None:
    long_label = " ".join(["word"] * engine.window)
    request = prepare_request(
        ["short text"],
        [long_label],
        "This example is {}.",
        False,
        LimitsConfig(max_label_chars=10_000),
    )
    with pytest.raises(ClientError, match="window"):
        engine.start(request)


@pytest.mark.parametrize(("workers", "tokens"), [(1, 4096), (2, 4096), (3, 64), (2, 16)])
def test_parallel_sub_batches_give_the_pipeline_scores(
    tiny_model_dir: Path, reference, workers: int, tokens: int
) -> None:
    """forward_workers sub-batches at once, however the batch is cut, change no score."""
    engine = make_engine(tiny_model_dir, forward_workers=workers, forward_tokens=tokens)
    assert engine.workers == workers
    for case in CASES:
        assert_same_results(
            score(engine, case), as_list(reference(case.texts, **case.pipeline_kwargs()))
        )


def test_thread_plan_defaults_to_one_thread_per_cpu_sub_batch() -> None:
    from serve_app.engine.threads import thread_plan

    assert thread_plan(None, None, True, 4) == (1, 4)
    assert thread_plan(2, None, True, 4) == (2, 2)
    assert thread_plan(None, 2, True, 4) == (2, 2)
    assert thread_plan(3, 1, True, 4) == (3, 1)
    assert thread_plan(None, None, False, 8)[1] == 1


def test_balanced_runs_have_about_equal_padded_cost() -> None:
    from serve_app.engine.scheduling import balanced

    def cost(run: list[int], pairs: list) -> int:
        return len(pairs[run[-1]][0]) * len(run)  # sorted: the last pair is the longest

    # A lone request's pairs are split so that every worker has some.
    pairs = [((1,) * n, None) for n in (10, 10, 11, 11, 12)]
    assert sorted(map(len, balanced(list(range(5)), pairs, 1, 2))) == [2, 3]
    assert balanced([0], pairs, 1, 4) == [[0]]
    # Runs in length order, a multiple of the workers, whose padded sizes are close: the
    # longest pairs go to shorter runs. (A cut by token sums alone gives 550 to 1100 here.)
    pairs = [((1,) * n, None) for n in range(10, 210, 10)]
    runs = balanced(list(range(20)), pairs, 3, 2)
    assert len(runs) == 4 and [i for run in runs for i in run] == list(range(20))
    costs = [cost(run, pairs) for run in runs]
    assert max(costs) <= 700 and min(costs) >= 550, costs
