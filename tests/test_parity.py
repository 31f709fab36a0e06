"""The pure scoring path (NLIModel + nli) against the transformers pipeline, on the tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import pipeline

from parity import CASES, LONG_TEXT, Case, as_list, assert_same_results
from serve_app.config import ModelConfig
from serve_app.model import NLIModel
from serve_app.core.nli import classify_from_logits, parse_labels
from serve_app.devtools.test_models import build_test_model


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> NLIModel:
    return NLIModel(ModelConfig(model=str(tiny_model_dir)))


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path):
    return pipeline("zero-shot-classification", model=str(tiny_model_dir), device="cpu")


def score(model: NLIModel, case: Case, max_batch_tokens: int = 4096) -> list[dict]:
    labels = parse_labels(case.labels)
    encoded = model.encode(case.texts, labels, case.template)
    logits = model.forward(encoded.pairs, max_batch_tokens)
    return classify_from_logits(case.texts, labels, logits, model.indices, case.multi_label)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_scores_equal_the_pipeline(model: NLIModel, reference, case: Case) -> None:
    ref = as_list(reference(case.texts, **case.pipeline_kwargs()))
    assert_same_results(score(model, case), ref)


def test_small_token_budgets_split_batches_without_changing_scores(model: NLIModel, reference) -> None:
    case = next(c for c in CASES if c.name == "many_texts")
    ref = as_list(reference(case.texts, **case.pipeline_kwargs()))
    assert_same_results(score(model, case, max_batch_tokens=64), ref)


def test_the_window_truncates_only_the_premise_and_is_reported(model: NLIModel) -> None:
    case = next(c for c in CASES if c.name == "longer_than_window")
    encoded = model.encode(case.texts + ["short"], ["finance"], case.template)
    assert encoded.truncated == [0]
    assert len(encoded.pairs[0][0]) == model.window
    hypothesis_ids = model.tokenizer("This example is finance.", add_special_tokens=False)["input_ids"]
    # The hypothesis survives whole at the end: <s> premise... </s></s> hypothesis </s>
    assert list(encoded.pairs[0][0][-len(hypothesis_ids) - 1 : -1]) == hypothesis_ids


def test_identical_pairs_are_computed_once_and_answered_for_each(model: NLIModel) -> None:
    encoded = model.encode(["same text"] * 3, ["a", "a"], "This example is {}.")
    logits = model.forward(encoded.pairs)
    assert logits.shape == (6, 3)
    assert np.allclose(logits, logits[0])


@pytest.mark.parametrize(
    "label_order",
    [("entailment", "neutral", "contradiction"), ("neutral", "entailment", "contradiction")],
    ids=["entailment_first", "neutral_first"],
)
def test_other_label_maps_give_correct_scores(tmp_path: Path, label_order: tuple[str, ...]) -> None:
    directory = build_test_model(tmp_path / "m", label_order=label_order, seed=3)
    model = NLIModel(ModelConfig(model=str(directory)))
    ent, con = label_order.index("entailment"), label_order.index("contradiction")
    assert (model.indices.entailment, model.indices.contradiction) == (ent, con)

    texts, labels = ["Doctors recommend regular exercise."], ["health", "finance", "music"]
    encoded = model.encode(texts, labels, "This example is {}.")
    logits = model.forward(encoded.pairs)
    # Reference computed here from the raw logits and the definition of each mode.
    single = classify_from_logits(texts, labels, logits, model.indices, multi_label=False)[0]
    e = np.exp(logits[:, ent] - logits[:, ent].max())
    expected_single = dict(zip(labels, e / e.sum()))
    for label, s in zip(single["labels"], single["scores"]):
        assert abs(s - expected_single[label]) < 1e-6

    multi = classify_from_logits(texts, labels, logits, model.indices, multi_label=True)[0]
    expected_multi = dict(zip(labels, 1 / (1 + np.exp(logits[:, con] - logits[:, ent]))))
    for label, s in zip(multi["labels"], multi["scores"]):
        assert abs(s - expected_multi[label]) < 1e-6

    # Single-label mode does not involve contradiction, so it must equal the pipeline for both.
    ref = pipeline("zero-shot-classification", model=str(directory), device="cpu")
    assert_same_results([single], [ref(texts[0], candidate_labels=labels)])
    if label_order[0] == "entailment":
        # The pipeline picks index -1 here, which is contradiction: equal in multi-label too.
        assert_same_results([multi], [ref(texts[0], candidate_labels=labels, multi_label=True)])


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
def test_pairs_are_tokenized_exactly_as_the_pipeline_does(model: NLIModel, reference, template: str) -> None:
    encoded = model.encode(TOKENIZATION_TEXTS, TOKENIZATION_LABELS, template)
    expected_pairs = []
    for text in TOKENIZATION_TEXTS:
        for label in TOKENIZATION_LABELS:
            # The pipeline's own tokenization step, called on one pair as its preprocess does.
            ids = reference._parse_and_tokenize([[text, template.format(label)]])["input_ids"][0]
            expected_pairs.append((tuple(ids.tolist()), None))
    assert encoded.pairs == expected_pairs
    assert 1 in encoded.truncated  # the long text; the reported list equals the old path's:
    # ...and equal to tokenizing every pair whole, the path slow tokenizers take.
    hyps = [template.format(label) for label in TOKENIZATION_LABELS]
    assert model.encode_each_pair(TOKENIZATION_TEXTS, hyps) == encoded


def test_hypotheses_are_tokenized_once_and_reused(model: NLIModel) -> None:
    pair_tokenizer = model.pair_tokenizer
    assert pair_tokenizer is not None
    first = pair_tokenizer.hypotheses(["This example is reuse."])[0]
    again = pair_tokenizer.hypotheses(["This example is reuse.", "This example is reuse."])
    assert again[0] is first and again[1] is first


def _bert_style_tokenizer(truncation_side: str = "right"):
    """A WordPiece tokenizer with BERT's pair layout and token types, built offline."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    core.train_from_iterator(
        [LONG_TEXT, *TOKENIZATION_TEXTS, "this example is about sports and music"],
        trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials),
    )
    core.post_processor = processors.BertProcessing(
        ("[SEP]", core.token_to_id("[SEP]")), ("[CLS]", core.token_to_id("[CLS]"))
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", sep_token="[SEP]", cls_token="[CLS]",
        pad_token="[PAD]", mask_token="[MASK]", model_max_length=48,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        truncation_side=truncation_side,
    )


@pytest.mark.parametrize("side", ["right", "left"])
def test_pair_assembly_matches_for_token_types_and_left_truncation(side: str) -> None:
    from serve_app.model import PairTokenizer

    tokenizer = _bert_style_tokenizer(side)
    hyps = [f"This example is {label}." for label in TOKENIZATION_LABELS]
    encoded = PairTokenizer(tokenizer, 48, uses_token_types=True).encode(TOKENIZATION_TEXTS, hyps)
    expected = []
    for text in TOKENIZATION_TEXTS:
        for hyp in hyps:
            ref = tokenizer(text, hyp, truncation="only_first", max_length=48)
            expected.append((tuple(ref["input_ids"]), tuple(ref["token_type_ids"])))
    assert encoded.pairs == expected
    assert any(1 in types for _, types in encoded.pairs)  # the hypothesis has type 1
    assert encoded.truncated == [1]


def test_a_hypothesis_that_fills_the_window_is_a_client_error(model: NLIModel) -> None:
    from serve_app.core.errors import ClientError

    long_label = " ".join(["word"] * model.window)
    with pytest.raises(ClientError, match="window"):
        model.encode(["short text"], [long_label], "This example is {}.")
    with pytest.raises(ClientError, match="window"):
        model.encode_each_pair(["short text"], [f"This example is {long_label}."])


@pytest.mark.parametrize(("workers", "tokens"), [(1, 4096), (2, 4096), (3, 64), (2, 16)])
def test_parallel_sub_batches_give_the_pipeline_scores(
    tiny_model_dir: Path, reference, workers: int, tokens: int
) -> None:
    """forward_workers sub-batches at once, however the batch is cut, change no score."""
    model = NLIModel(ModelConfig(model=str(tiny_model_dir), forward_workers=workers, forward_tokens=tokens))
    assert model.workers == workers
    for case in CASES:
        labels = parse_labels(case.labels)
        encoded = model.encode(case.texts, labels, case.template)
        logits = model.forward(encoded.pairs)
        ours = classify_from_logits(case.texts, labels, logits, model.indices, case.multi_label)
        assert_same_results(ours, as_list(reference(case.texts, **case.pipeline_kwargs())))


def test_thread_plan_defaults_to_one_thread_per_cpu_sub_batch() -> None:
    import torch

    from serve_app.model import _balanced, thread_plan

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert thread_plan(None, None, cpu, 4) == (1, 4)
    assert thread_plan(2, None, cpu, 4) == (2, 2)
    assert thread_plan(None, 2, cpu, 4) == (2, 2)
    assert thread_plan(3, 1, cpu, 4) == (3, 1)
    assert thread_plan(None, None, cuda, 8)[1] == 1
    # A lone request's pairs are split so that every worker has some.
    pairs = [((1,) * n, None) for n in (10, 10, 11, 11, 12)]
    assert sorted(map(len, _balanced(list(range(5)), pairs, 1, 2))) == [2, 3]
    assert _balanced([0], pairs, 1, 4) == [[0]]
    # Runs of about equal tokens, a multiple of the workers, in length order.
    pairs = [((1,) * n, None) for n in range(10, 210, 10)]
    runs = _balanced(list(range(20)), pairs, 3, 2)
    assert len(runs) == 4 and [i for run in runs for i in run] == list(range(20))
    sums = [sum(len(pairs[i][0]) for i in run) for run in runs]
    assert max(sums) - min(sums) <= 200
