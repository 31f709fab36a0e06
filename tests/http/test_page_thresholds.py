"""The web page's threshold line, predicted labels and windows, in real headless Chromium.

The page and its API come from the FastAPI app served by uvicorn in this process over a real
in-process Engine (tests/edge.py): the browser path without Ray.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from browser import CHROMIUM, CHROMIUM_ARGS
from edge import EngineScorer
from playwright.sync_api import Browser, sync_playwright

from serve_app.config import AppConfig, ModelConfig
from serve_app.devtools.ports import free_port
from serve_app.engine.engine import Engine
from serve_app.http.app import create_app
from serve_app.http.routes.services import Services

pytestmark = [pytest.mark.browser]

LONG = "The striker scored twice and the crowd sang for the whole match. " * 12
SHORT = "Interest rates rose again."
LABELS = "sports, finance, weather, music"


@pytest.fixture(scope="module")
def page_url(tiny_model_dir: Path) -> Iterator[str]:
    engine = Engine(ModelConfig(model=str(tiny_model_dir)), str(tiny_model_dir))
    config = AppConfig.model_validate({"model": str(tiny_model_dir), "jobs": {"enabled": False}})
    app = create_app(Services(config=config, scorer=EngineScorer(engine)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_the_chart_draws_the_threshold_and_marks_predicted_labels(
    browser: Browser, page_url: str
) -> None:
    body: dict[str, Any] = {
        "texts": [LONG, SHORT],
        "labels": LABELS,
        "multi_label": True,
        "long_text": "chunk",
    }
    plain = httpx.post(f"{page_url}/v1/classify", json=body, timeout=60).json()["results"]
    # A threshold between the scores, so some labels pass and some do not.
    threshold = round(sorted(plain[0]["scores"])[1], 4)
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.set_default_timeout(30_000)
    page.goto(f"{page_url}/")
    page.fill("#texts", f"{LONG}\n{SHORT}")
    page.fill("#labels", LABELS)
    page.check("#multi-label")
    page.fill("#threshold", str(threshold))
    page.select_option("#long-text", "chunk")
    page.click("#submit")
    page.wait_for_selector("article.result .threshold-line")
    cards = page.eval_on_selector_all(
        "article.result",
        """cards => cards.map(card => ({
            bars: [...card.querySelectorAll("li.bar")].map(li => {
                const track = li.querySelector(".track").getBoundingClientRect();
                const line = li.querySelector(".threshold-line").getBoundingClientRect();
                return {
                    label: li.dataset.label,
                    score: Number(li.dataset.score),
                    predicted: li.classList.contains("predicted"),
                    at: (line.left + line.width / 2 - track.left) / track.width,
                };
            }),
            predicted: card.querySelector(".predicted-note").textContent,
            windows: card.querySelector(".windows-note").textContent,
        }))""",
    )
    assert len(cards) == 2
    for card, want in zip(cards, plain):
        assert [b["label"] for b in card["bars"]] == want["labels"]
        for bar in card["bars"]:
            assert abs(bar["at"] - threshold) < 0.01  # the line sits at the threshold
            assert bar["predicted"] == (bar["score"] >= threshold)
        assert (
            card["windows"]
            == f"Read in {want['windows']} window" + ("" if want["windows"] == 1 else "s") + "."
        )
    assert plain[0]["windows"] > 1 and plain[1]["windows"] == 1
    passed = [b["label"] for b in cards[0]["bars"] if b["score"] >= threshold]
    assert cards[0]["predicted"] == "Predicted: " + ", ".join(passed)
    page.fill("#threshold", "1")
    page.click("#submit")
    page.wait_for_function(
        "document.querySelector('.predicted-note')?.textContent.includes('none of these')"
    )
    page.close()
