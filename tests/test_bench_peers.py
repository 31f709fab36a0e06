"""The pure parts of bench/bench_peers.py (bench/peers.py), in-process on the tiny
random models: the copies a peer serves give the original model's numbers, and the joined pair
is the pair. No peer server is started here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from bench.peers import (
    joined_matches_pair,
    one_logit_copy,
    pair_joiner,
    raw_logits_copy,
    single_label_scores,
)
from serve_app.core.defaults import DEFAULT_TEMPLATE
from serve_app.devtools.test_models import build_test_model

TEXTS = [
    "The central bank raised interest rates again to fight inflation.",
    "Our team won the championship after a dramatic penalty shootout.",
    "the quick brown fox jumps over the lazy dog",
]
LABELS = ["sports", "finance", "weather", "music"]
ENTAILMENT = 1  # build_test_model's label order: contradiction, entailment, neutral


@pytest.fixture(scope="module")
def roberta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_model(tmp_path_factory.mktemp("roberta"))


def logits(model_dir: Path, text: str, hypotheses: list[str]) -> np.ndarray:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    batch = tokenizer([text] * len(hypotheses), hypotheses, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits.numpy()


def test_the_one_logit_copy_gives_the_entailment_logit(roberta: Path, tmp_path: Path) -> None:
    copy = one_logit_copy(roberta, tmp_path / "entail", ENTAILMENT)
    hyps = [DEFAULT_TEMPLATE.format(label) for label in LABELS]
    pipe = pipeline("zero-shot-classification", model=str(roberta), device="cpu")
    for text in TEXTS:
        full, one = logits(roberta, text, hyps), logits(copy, text, hyps)
        assert one.shape == (len(LABELS), 1)
        np.testing.assert_allclose(one[:, 0], full[:, ENTAILMENT], atol=1e-6)
        # ...and the zero-shot scores from it are the pipeline's.
        out = pipe(text, candidate_labels=LABELS, hypothesis_template=DEFAULT_TEMPLATE)
        expected = dict(zip(out["labels"], out["scores"]))
        np.testing.assert_allclose(
            single_label_scores(one[:, 0]), [expected[label] for label in LABELS], atol=1e-5
        )


def test_the_raw_logits_copy_makes_text_classification_return_logits(
    roberta: Path, tmp_path: Path
) -> None:
    copy = raw_logits_copy(roberta, tmp_path / "raw")
    tokenizer = AutoTokenizer.from_pretrained(roberta)
    joiner = pair_joiner(tokenizer)
    hyps = [DEFAULT_TEMPLATE.format(label) for label in LABELS]
    pipe = pipeline("text-classification", model=str(copy), device="cpu", top_k=None)
    for text in TEXTS:
        got = pipe([text + joiner + h for h in hyps])
        full = logits(roberta, text, hyps)
        for row, expected in zip(got, full):
            by_label = {x["label"]: x["score"] for x in row}
            np.testing.assert_allclose(
                [by_label[name] for name in ("contradiction", "entailment", "neutral")],
                expected,
                atol=1e-5,
            )


def test_a_roberta_pair_joined_by_two_separators_is_the_pair(roberta: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(roberta)
    joiner = pair_joiner(tokenizer)
    assert joiner == "</s></s>"
    for text in TEXTS:
        for label in LABELS:
            assert joined_matches_pair(tokenizer, text, DEFAULT_TEMPLATE.format(label), joiner)
    # A single separator is not the pair: the check can fail.
    assert not joined_matches_pair(tokenizer, TEXTS[0], "This example is x.", "</s>")


def test_a_bert_pair_joined_by_a_separator_differs_in_its_token_types(tmp_path: Path) -> None:
    bert = build_test_model(tmp_path / "bert", arch="bert")
    tokenizer = AutoTokenizer.from_pretrained(bert)
    joiner = pair_joiner(tokenizer)
    assert joiner == "[SEP]"
    # Same ids, but the pair's second part has token type 1: /classify cannot give BERT pairs.
    hypothesis = DEFAULT_TEMPLATE.format("sports")
    assert (
        tokenizer(TEXTS[0] + joiner + hypothesis)["input_ids"]
        == (tokenizer(TEXTS[0], hypothesis)["input_ids"])
    )
    assert not joined_matches_pair(tokenizer, TEXTS[0], hypothesis, joiner)
