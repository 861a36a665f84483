"""The playground page in headless Chromium (Debian's `chromium`, driven by Playwright): the page
loads, a generation streams, a replay with the same seed is identical token by token, a new seed
gives a new run; a screenshot is written under the test's tmp dir. Nothing is fetched from elsewhere."""

from __future__ import annotations

import json
import os
import shutil

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed (test extra)")
pytestmark = pytest.mark.slow  # drives a headless Chromium
CHROMIUM = os.environ.get("SEEDSTREAM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip(
        "no chromium binary (Debian: apt-get install chromium; or set SEEDSTREAM_CHROMIUM)", allow_module_level=True
    )

DONE = "document.getElementById('status').textContent.startsWith('done')"
QUESTION = "Write a haiku about the sea."


@pytest.fixture
def page(url):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser.new_page()
        finally:
            browser.close()


def run_and_wait(page, button: str) -> None:
    page.click(button)
    page.wait_for_function(DONE, timeout=240_000)


def test_playground_streams_replays_identically_and_draws_new_seeds(page, url, oai, tmp_path):
    outside = []
    page.on("request", lambda r: None if r.url.startswith(url) else outside.append(r.url))
    page.goto(url + "/")
    page.wait_for_selector("#model[data-ready='1']")
    page.fill("#input", QUESTION)
    page.fill("#max_tokens", "16")
    page.fill("#seed", "42")

    run_and_wait(page, "#generate")
    first = page.inner_text("#output")
    chunks = int(page.get_attribute("#output", "data-chunks"))
    assert first.strip() and chunks > 1, "the output did not arrive as a stream of chunks"
    receipt = json.loads(page.inner_text("#receipt"))
    assert receipt["seed"] == "42"
    api = oai.chat.completions.create(
        model="seedstream",
        messages=[{"role": "user", "content": QUESTION}],
        seed=42,
        max_tokens=16,
        temperature=0.8,
        top_p=0.95,
    )
    assert first == api.choices[0].message.content  # the page shows exactly what the API returns

    run_and_wait(page, "#replay")
    assert page.inner_text("#output") == first
    assert page.inner_text("#verdict").startswith("replay identical")
    assert page.locator("#output span.same").count() == chunks
    assert page.locator("#output span.diff").count() == 0
    shot = tmp_path / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0

    run_and_wait(page, "#new-seed")
    seed = page.input_value("#seed")
    assert seed.isdigit() and seed != "42"
    assert json.loads(page.inner_text("#receipt"))["seed"] == seed
    assert outside == [], f"the page fetched from elsewhere: {outside}"


def test_playground_sends_the_api_key_it_is_given(page, http_loop, engine):
    from http_helpers import base_url, start

    from seedstream.server.rpc.hardening import Security

    key = "playground-test-key-0123456789"
    keyed = start(http_loop, engine, security=Security(api_keys={key: "alice"}))
    try:
        page.goto(base_url(keyed) + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('not ready')")
        page.fill("#api_key", key)
        page.dispatch_event("#api_key", "change")
        page.wait_for_selector("#model[data-ready='1']")
        page.fill("#input", "Hi")
        page.fill("#max_tokens", "2")
        run_and_wait(page, "#generate")
        assert page.inner_text("#output").strip()
        assert page.evaluate("localStorage.length + sessionStorage.length") == 0  # kept in the page only
    finally:
        http_loop.run(keyed.shutdown(5.0, stop_engine=False))
