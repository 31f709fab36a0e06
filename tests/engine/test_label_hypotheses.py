"""Labels with their own hypotheses: equal to a direct computation with the model.

The reference here is `transformers` itself (AutoTokenizer + AutoModelForSequenceClassification
on the tiny model), not zsc code: each label's pair is (text, its hypothesis), single-label
scores are a softmax of the entailment logits across labels, multi-label scores a softmax of
[contradiction, entailment] per label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from edge import post
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from serve_app.config import ModelConfig
from serve_app.engine.engine import Engine

TEXTS = ["I was charged twice for my order this month.", "The parcel never arrived."]
LABELS: list[Any] = [
    {"label": "billing", "hypothesis": "The customer writes about an invoice or a payment."},
    {"label": "shipping", "hypothesis": "This is about a delivery."},
    "refund",  # a plain label: the template
]
TEMPLATE = "The topic is {}."


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    return Engine(ModelConfig(model=str(tiny_model_dir)), str(tiny_model_dir))


def direct(model_dir: Path, text: str, multi_label: bool) -> dict[str, float]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    names = {name.lower(): i for i, name in model.config.id2label.items()}
    entail = next(i for name, i in names.items() if name.startswith("entail"))
    contra = next(i for name, i in names.items() if name.startswith("contradict"))
    labels, hyps = [], []
    for label in LABELS:
        if isinstance(label, str):
            labels.append(label)
            hyps.append(TEMPLATE.format(label))
        else:
            labels.append(label["label"])
            hyps.append(label["hypothesis"])
    inputs = tokenizer(
        [text] * len(hyps), hyps, truncation="only_first", return_tensors="pt", padding=True
    )
    with torch.no_grad():
        logits = model(**inputs).logits.double().numpy()
    if multi_label:
        pair = logits[:, [contra, entail]]
        scores = np.exp(pair[:, 1]) / np.exp(pair).sum(axis=1)
    else:
        e = np.exp(logits[:, entail] - logits[:, entail].max())
        scores = e / e.sum()
    return dict(zip(labels, scores.tolist()))


@pytest.mark.parametrize("multi_label", [False, True])
def test_label_hypotheses_equal_a_direct_computation(
    engine: Engine, tiny_model_dir: Path, multi_label: bool
) -> None:
    body = {
        "texts": TEXTS,
        "labels": LABELS,
        "hypothesis_template": TEMPLATE,
        "multi_label": multi_label,
    }
    answer = post(engine, "/v1/classify", body)
    assert answer.status_code == 200, answer.text
    for text, result in zip(TEXTS, answer.json()["results"]):
        want = direct(tiny_model_dir, text, multi_label)
        assert sorted(result["labels"]) == sorted(want)  # answers name labels by `label`
        for label, score in zip(result["labels"], result["scores"]):
            assert abs(score - want[label]) <= 1e-5, (label, score, want)


def test_a_label_hypothesis_changes_only_its_own_score(engine: Engine) -> None:
    """Multi-label: a plain label scores as before beside labels with hypotheses."""
    plain = post(
        engine, "/v1/classify", {"text": TEXTS[0], "labels": ["refund"], "multi_label": True}
    )
    mixed = post(
        engine,
        "/v1/classify",
        {"text": TEXTS[0], "labels": LABELS[:2] + ["refund"], "multi_label": True},
    )
    got = dict(zip(mixed.json()["results"][0]["labels"], mixed.json()["results"][0]["scores"]))
    assert got["refund"] == plain.json()["results"][0]["scores"][0]


@pytest.mark.parametrize(
    ("labels", "status", "says"),
    [
        ([{"hypothesis": "About money."}], 422, "label"),
        ([{"label": "billing", "hypothesis": ""}], 422, "labels[0].hypothesis must be a non-empty"),
        ([{"label": "billing", "why": "x"}], 422, "why"),
        ([{"label": "", "hypothesis": "About money."}], 422, "labels[0] is empty"),
        ([{"label": "billing", "hypothesis": "x" * 600}], 413, "labels[0].hypothesis"),
        ([{"label": "billing", "hypothesis": "word " * 80}], 422, "does not fit"),
    ],
)
def test_a_bad_label_object_is_a_4xx_that_says_what_to_fix(
    engine: Engine, labels: list[Any], status: int, says: str
) -> None:
    answer = post(engine, "/v1/classify", {"text": "hello", "labels": labels})
    assert answer.status_code == status, answer.text
    assert says in answer.json()["error"]["message"]
