"""What the browser tests share: Debian's Chromium, launched headless with the flags this
machine needs, and the bars the page drew, read back from the DOM."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def drawn_bars(page: Page) -> list[list[dict[str, Any]]]:
    """Per result card, its bars in page order: label, score, number shown, filled fraction."""
    return page.eval_on_selector_all(
        "article.result",
        """cards => cards.map(card => [...card.querySelectorAll("li.bar")].map(li => ({
            label: li.dataset.label,
            score: Number(li.dataset.score),
            shown: li.querySelector(".value").textContent,
            fraction: li.querySelector(".fill").getBoundingClientRect().width
                      / li.querySelector(".track").getBoundingClientRect().width,
        })))""",
    )
