"""The engine looks its pairs up under `cache_keys` (the key tests/core/test_cache.py tests),
keyed by the hypothesis: a label's own hypothesis that reads like the template's shares an entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.config import LimitsConfig, ModelConfig
from serve_app.core.cache import cache_keys
from serve_app.core.requests import prepare_request
from serve_app.engine.engine import Engine

TEXTS = ["The match went to penalties.", "Rain all week on the coast."]
LABELS = ["sports", "weather"]
TEMPLATE = "This example is {}."


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    # Its own engine: the shared one's cache is other tests' state.
    settings = ModelConfig(model=str(tiny_model_dir), result_cache_entries=64)
    return Engine(settings, str(tiny_model_dir))


def test_the_engine_looks_up_the_keys_cache_keys_gives(engine: Engine) -> None:
    request = prepare_request(TEXTS, LABELS, TEMPLATE, False, LimitsConfig())
    pending = engine.start(request)
    hyps = [TEMPLATE.format(label) for label in LABELS]
    assert pending.keys == [
        k for text in TEXTS for k in cache_keys(engine.name, text, hyps, LABELS)
    ]


def test_a_label_s_own_hypothesis_that_reads_like_the_template_s_is_a_hit(engine: Engine) -> None:
    first = prepare_request(TEXTS[:1], LABELS, TEMPLATE, False, LimitsConfig())
    engine.classify(first)
    own = [{"label": label, "hypothesis": TEMPLATE.format(label)} for label in LABELS]
    again = prepare_request(TEXTS[:1], own, "Something else about {}.", False, LimitsConfig())
    pending = engine.start(again)
    assert pending.cache_hits == len(LABELS) and pending.todo == []
