"""The web page in real headless Chromium: type, submit, and see bars that follow the scores.

Playwright drives Debian's /usr/bin/chromium (`make browser` installs it); it never downloads
a browser, and a missing Chromium fails these tests rather than skipping them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import CHROMIUM, CHROMIUM_ARGS, drawn_bars
from playwright.sync_api import Browser, Page, expect, sync_playwright

pytestmark = [pytest.mark.browser, pytest.mark.ray]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TEXTS = ["The new phone's battery lasts two days.", "Our team won the final after penalties."]
LABELS = "technology, sports, politics, weather"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def fill_form(page: Page, texts: list[str], labels: str, template: str | None = None) -> None:
    page.fill("#texts", "\n".join(texts))
    page.fill("#labels", labels)
    if template is not None:
        page.fill("#template", template)
    page.click("#submit")


def test_bars_follow_the_scores(page: Page, zsc_url: str) -> None:
    model = httpx.get(f"{zsc_url}/v1/model", timeout=30).json()
    page.goto(f"{zsc_url}/")
    expect(page.locator("#model-name")).to_have_text(model["model"])
    warning = page.locator("#model-warning")
    expect(warning).to_be_visible()
    expect(warning).to_contain_text("random")

    fill_form(page, TEXTS, LABELS)
    expect(page.locator("article.result")).to_have_count(len(TEXTS))
    direct = httpx.post(
        f"{zsc_url}/v1/classify", json={"texts": TEXTS, "labels": LABELS}, timeout=30
    ).json()

    for card, result in zip(drawn_bars(page), direct["results"], strict=True):
        assert [bar["label"] for bar in card] == result["labels"]
        scores = [bar["score"] for bar in card]
        assert scores == sorted(scores, reverse=True)
        for bar, score in zip(card, result["scores"], strict=True):
            assert bar["score"] == pytest.approx(score, abs=1e-5)
            assert bar["fraction"] == pytest.approx(score, abs=0.01)
            assert bar["shown"] == f"{score * 100:.1f}%"
    assert page.locator("article.result h2").all_text_contents() == TEXTS

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)


@pytest.mark.parametrize(
    ("labels", "template"),
    [("", "This example is {}."), ("urgent, not urgent", "No slot for the label.")],
    ids=["empty_labels", "template_without_braces"],
)
def test_errors_show_the_service_message(
    page: Page, zsc_url: str, labels: str, template: str
) -> None:
    answer = httpx.post(
        f"{zsc_url}/v1/classify",
        json={"texts": TEXTS[:1], "labels": labels, "hypothesis_template": template},
        timeout=30,
    )
    assert answer.status_code == 422
    page.goto(f"{zsc_url}/")
    fill_form(page, TEXTS[:1], labels, template)
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text(answer.json()["error"]["message"])
    expect(page.locator("article.result")).to_have_count(0)


# One text x 3 labels = 3 pairs: exactly the bucket, which then takes 30 s to refill.
LIMITED = {"enabled": True, "default": {"rate": 0.1, "burst": 3}, "timeout_s": 10.0}
THREE_LABELS = "technology, sports, politics"


def test_under_a_prefix_every_call_stays_below_it_and_a_429_says_when_to_retry(
    page: Page, deploy_app
) -> None:
    """A real app under a real prefix with a real rate limit: the page finds its API below the
    prefix, and the limiter's 429 shows its message and a countdown to when a retry passes."""
    url = deploy_app("page-prefixed", rate_limit=LIMITED)
    assert url.endswith("/page-prefixed")
    model = httpx.get(f"{url}/v1/model", timeout=30).json()["model"]
    origin = url.removesuffix("/page-prefixed")
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url.removeprefix(origin)))

    page.goto(url)  # no trailing slash, as a user types it
    expect(page.locator("#model-name")).to_have_text(model)
    fill_form(page, TEXTS[:1], THREE_LABELS)
    expect(page.locator("article.result")).to_have_count(1)
    expect(page.locator("#error")).to_be_hidden()

    with page.expect_response(lambda r: r.url.endswith("/v1/classify")) as refused:
        page.click("#submit")
    answer = refused.value
    assert answer.status == 429, answer.text()
    retry_after = int(answer.headers["retry-after"])
    message = answer.json()["error"]["message"]
    error = page.locator("#error")
    expect(error).to_contain_text(message)
    expect(error).to_contain_text(re.compile(r"You can retry in \d+ seconds?\."))
    # A countdown from Retry-After: the number shown never exceeds it.
    countdown = re.search(r"retry in (\d+) second", error.inner_text())
    assert countdown is not None and 0 < int(countdown.group(1)) <= retry_after, retry_after
    expect(page.locator("#submit")).to_be_disabled()

    assert {"/page-prefixed/v1/model", "/page-prefixed/v1/classify"} <= set(seen), seen
    assert all(path.startswith("/page-prefixed") for path in seen), seen


PAGE_KEY = "page-test-key-0123456789"


@pytest.fixture(scope="module")
def keyed_url(deploy_app) -> str:
    from serve_app.http.middleware.auth import hash_key

    url = deploy_app("pagekeys", auth={"api_key_hashes": {"web": hash_key(PAGE_KEY)}})
    # A fresh replica's first forward can take seconds on a busy CI machine; take it here, so
    # the page's timeouts measure the page.
    warm = httpx.post(
        f"{url}/v1/classify",
        json={"texts": TEXTS[:1], "labels": LABELS},
        headers={"Authorization": f"Bearer {PAGE_KEY}"},
        timeout=120,
    )
    assert warm.status_code == 200, warm.text
    return url


def test_with_api_keys_on_the_page_asks_for_one_and_sends_it(page: Page, keyed_url: str) -> None:
    page.goto(f"{keyed_url}/")
    key_field = page.locator("#api-key")
    expect(key_field).to_be_visible()  # v1/model answered 401
    expect(page.locator("#model-name")).to_have_text("unavailable")

    # A background call's 401 (the model info, after a key change) shows the field but never
    # pulls the focus away from where the user is typing.
    page.fill("#api-key", "not-the-key")
    page.focus("#labels")
    with page.expect_response(lambda r: r.url.endswith("/v1/model") and r.status == 401):
        page.locator("#api-key").dispatch_event("change")
    assert page.evaluate("document.activeElement.id") == "labels"

    fill_form(page, TEXTS[:1], LABELS)
    expect(page.locator("#error")).to_contain_text("needs an API key")
    expect(page.locator("article.result")).to_have_count(0)
    expect(key_field).to_be_focused()  # the user's own submit was refused: the key is next

    page.fill("#api-key", PAGE_KEY)
    page.locator("#api-key").dispatch_event("change")
    model = httpx.get(
        f"{keyed_url}/v1/model", headers={"Authorization": f"Bearer {PAGE_KEY}"}, timeout=30
    ).json()["model"]
    expect(page.locator("#model-name")).to_have_text(model)
    page.click("#submit")
    # Whichever comes first, a result or an error; the error's words say what went wrong.
    expect(page.locator("article.result, #error:not([hidden])").first).to_be_visible(timeout=30_000)
    assert page.locator("article.result").count() == 1, page.locator("#error").text_content()
    expect(page.locator("#error")).to_be_hidden()

    # Kept for this tab: a reload still sends it, and it never appears in the URL.
    page.reload()
    expect(page.locator("#model-name")).to_have_text(model)
    assert PAGE_KEY not in page.url


@pytest.fixture(scope="module")
def prefilter_url(deploy_app, tmp_path_factory: pytest.TempPathFactory) -> str:
    from serve_app.devtools.test_models import build_test_bi_encoder

    bi_encoder = build_test_bi_encoder(tmp_path_factory.mktemp("page-bi") / "bi")
    return deploy_app(
        "page-prefilter",
        prefilter={"model": str(bi_encoder), "top_k": 5, "deployment": {"num_cpus": 0.25}},
    )


TEN_LABELS = "technology, sports, politics, weather, finance, travel, food, music, health, art"


def test_the_prefilter_field_chooses_k(page: Page, prefilter_url: str, zsc_url: str) -> None:
    sent: list[dict[str, Any]] = []
    page.on(
        "request",
        lambda r: sent.append(r.post_data_json) if r.url.endswith("/v1/classify") else None,
    )
    page.goto(f"{prefilter_url}/")
    field = page.locator("#prefilter-field")
    expect(field).to_be_visible()
    expect(page.locator("#prefilter-top-k")).to_have_attribute("placeholder", "5")

    fill_form(page, TEXTS[:1], TEN_LABELS)  # blank: the configured k applies
    expect(page.locator("li.bar")).to_have_count(5)
    expect(page.locator("#status")).to_contain_text("5 of 10 labels scored")
    assert "prefilter_top_k" not in sent[-1]

    page.fill("#prefilter-top-k", "3")
    page.click("#submit")
    expect(page.locator("li.bar")).to_have_count(3)
    assert sent[-1]["prefilter_top_k"] == 3

    page.fill("#prefilter-top-k", "0")  # off: every label scored
    page.click("#submit")
    expect(page.locator("li.bar")).to_have_count(10)
    expect(page.locator("#status")).not_to_contain_text("labels scored")

    page.fill("#prefilter-top-k", "-1")
    page.click("#submit")
    expect(page.locator("#error")).to_contain_text("prefilter_top_k")

    # Without a prefilter the field is hidden and never sent.
    page.goto(f"{zsc_url}/")
    expect(page.locator("#prefilter-field")).to_be_hidden()
    fill_form(page, TEXTS[:1], LABELS)
    expect(page.locator("li.bar")).to_have_count(4)
    assert "prefilter_top_k" not in sent[-1]
