"""The web page of a service on the `chinese` preset, in real headless Chromium: it names the
preset, fills in the preset's Chinese template, and draws the scores of the seed's example as the
pipeline computes them with that template. The app runs in-process on a socket (no Ray), around
an Engine on a tiny Erlangshen-like model served from a Hugging Face cache at the pinned commit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import pytest
from browser import CHROMIUM, CHROMIUM_ARGS, drawn_bars
from edge import EngineScorer, edge_app, hub_cache_with, serving
from playwright.sync_api import Page, expect, sync_playwright
from transformers import pipeline

from serve_app.config import AppConfig
from serve_app.core.presets import CHINESE_TEMPLATE
from serve_app.devtools.chinese import SEED_LABELS, SEED_TEXTS, build_chinese_bert
from serve_app.engine.backends import backend_type
from serve_app.engine.engine import Engine
from serve_app.engine.source import resolve_model_source

pytestmark = pytest.mark.browser


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(30_000)
        yield page
        browser.close()


def test_page_on_the_chinese_preset_uses_its_template(
    page: Page, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = AppConfig(model="chinese")
    assert config.revision is not None
    cache = hub_cache_with(
        tmp_path / "hub", config.model, config.revision, build_chinese_bert(tmp_path / "m")
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    source = resolve_model_source(
        config.model, config.revision, backend_type(config.backend).files(config.onnx_file)
    )
    engine = Engine(config.model_settings(), source)
    expected = pipeline("zero-shot-classification", model=source, device="cpu")(
        SEED_TEXTS, candidate_labels=SEED_LABELS, hypothesis_template=CHINESE_TEMPLATE
    )

    with serving(edge_app(config, EngineScorer(engine))) as url:
        page.goto(f"{url}/")
        expect(page.locator("#model-name")).to_have_text(f"{config.model} (chinese)")
        expect(page.locator("#template")).to_have_value(CHINESE_TEMPLATE)
        page.fill("#texts", "\n".join(SEED_TEXTS))
        page.fill("#labels", ", ".join(SEED_LABELS))
        page.click("#submit")
        expect(page.locator("article.result")).to_have_count(len(SEED_TEXTS))
        cards = drawn_bars(page)

    for card, want in zip(cards, expected, strict=True):
        assert [bar["label"] for bar in card] == want["labels"]
        for bar, score in zip(card, want["scores"], strict=True):
            assert bar["score"] == pytest.approx(score, abs=1e-5)
