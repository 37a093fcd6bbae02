"""Issue 15.1: the page at ``GET /``, driven in a real headless Chromium (Debian's chromium and
chromium-driver; nothing downloads a browser) against the real API (waitress, in a thread)
over a real cluster with real shard workers.

The README's screenshot (docs/page.png) is the page of a running stack with the bundled
reader: ``shardqa up --corpus ...`` then ``python -m tests.test_page http://127.0.0.1:8080
"Who designed the Eiffel Tower?" docs/page.png``.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from api.app import create_app
from gears.asker import Asker
from tests.conftest import free_port_base
from tests.corpus import QUESTIONS

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "page-test-token"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
    reason="Debian's chromium and chromium-driver are not installed "
           "(apt-get install chromium chromium-driver; .ci/run and 'make test' do)")


def serve(app) -> tuple[str, object]:
    """The app under a real waitress server on a free port, in a daemon thread."""
    from waitress import create_server

    server = create_server(app, host="127.0.0.1", port=free_port_base(1), threads=4)
    threading.Thread(target=server.run, daemon=True).start()
    return f"http://127.0.0.1:{server.effective_port}", server


@pytest.fixture(scope="module")
def api(shared_pipeline, redis_cluster):
    asker = Asker(redis_cluster.client_as("api"), timeout_s=30)
    open_url, open_server = serve(create_app(asker))
    secured_url, secured_server = serve(create_app(asker, token=TOKEN))
    try:
        yield open_url, secured_url
    finally:
        open_server.close()
        secured_server.close()


def chromium(profile: Path):
    """Debian's headless Chromium through its chromedriver (selenium downloads nothing when
    both paths are given)."""
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1000,720", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = chromium(tmp_path_factory.mktemp("chromium"))
    try:
        yield driver
    finally:
        driver.quit()


def api_answer(url: str, question: str, k: int, n: int = 1) -> dict:
    query = urllib.parse.urlencode({"q": question, "k": k, "n": n})
    with urllib.request.urlopen(f"{url}/qa?{query}", timeout=60) as resp:
        return json.loads(resp.read())


def ask(browser, question: str, *, k: str | None = None, n: str | None = None) -> None:
    """Type into the question box and press Enter, as a keyboard user does."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    if k is not None:
        Select(browser.find_element(By.ID, "k")).select_by_visible_text(k)
    if n is not None:
        Select(browser.find_element(By.ID, "n")).select_by_visible_text(n)
    box = browser.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question, Keys.ENTER)


def shown(browser, element_id: str, timeout: float = 60):
    """The element once the page has shown it (and is not waiting for the API)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(driver):
        found = driver.find_element(By.ID, element_id)
        idle = driver.find_element(By.ID, "submit").is_enabled()
        return found if idle and found.is_displayed() else False

    return WebDriverWait(browser, timeout).until(ready)


def test_page_asks_and_highlights_the_answer(api, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, _ = api
    browser.get(url + "/")
    assert browser.title == "shardqa"
    assert browser.switch_to.active_element.get_attribute("id") == "question"  # focus
    labels = {e.get_attribute("for") for e in browser.find_elements(By.TAG_NAME, "label")}
    assert {"question", "k", "n", "token"} <= labels
    ask(browser, QUESTIONS[0], k="3")
    result = shown(browser, "result")
    mark = result.find_element(By.CSS_SELECTOR, "#passage-text mark")
    body = api_answer(url, QUESTIONS[0], 3)  # what the page was given, now from the cache
    assert body["cached"] is True and body["answer"]
    assert mark.text == body["answer"] == browser.find_element(By.ID, "answer").text
    assert browser.find_element(By.ID, "passage-title").text == body["passage"]["title"]
    assert browser.find_element(By.ID, "passage-text").text == body["passage"]["text"]
    meta = browser.find_element(By.ID, "meta").text
    assert f"Score {body['score']:.2f}" in meta and "computed now" in meta
    stages = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#timings dt")]
    assert "rank" in stages and "total" in stages
    retrieval = browser.find_element(By.ID, "retrieval")  # no encoder here: BM25 alone
    assert retrieval.is_displayed() and body["retrieval"]["mode"] == "bm25"
    assert retrieval.text.startswith("Retrieval (BM25 only): bm25 #")
    ask(browser, QUESTIONS[0], k="3")  # again: from the answer cache
    shown(browser, "result")
    assert "from the cache" in browser.find_element(By.ID, "meta").text
    screenshot = tmp_path / "page.png"
    browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_page_shows_the_next_distinct_answers_in_their_passages(api, browser):
    from selenium.webdriver.common.by import By

    url, _ = api
    browser.get(url + "/")
    assert browser.find_element(By.ID, "n").get_attribute("value") == "3"  # the default
    ask(browser, QUESTIONS[4], k="5", n="5")
    shown(browser, "result")
    body = api_answer(url, QUESTIONS[4], 5, 5)  # what the page was given, from the cache
    assert body["cached"] is True and len(body["answers"]) == 5
    more = browser.find_element(By.ID, "more")
    assert more.is_displayed()
    items = more.find_elements(By.CSS_SELECTOR, "#answers li")
    assert len(items) == 4  # numbered from 2: the answer above is the first
    assert more.find_element(By.ID, "answers").get_attribute("start") == "2"
    for item, expected in zip(items, body["answers"][1:], strict=True):
        assert item.find_element(By.TAG_NAME, "strong").text == expected["answer"]
        assert item.find_element(By.TAG_NAME, "mark").text == expected["answer"]
        assert item.find_element(By.TAG_NAME, "p").text == expected["passage"]["text"]
        assert f"score {expected['score']:.2f}" in item.text
        assert f"confidence {round(100 * expected['confidence'])}%" in item.text
    ask(browser, QUESTIONS[4], n="1")  # one answer: no further answers shown
    shown(browser, "result")
    assert not browser.find_element(By.ID, "more").is_displayed()


def test_page_shows_api_errors_as_messages(api, browser):
    from selenium.webdriver.common.by import By

    url, _ = api
    browser.get(url + "/")
    ask(browser, "")
    error = shown(browser, "error")
    assert error.text == "Error 400: the question is empty"
    assert error.get_attribute("role") == "alert"
    assert not browser.find_element(By.ID, "result").is_displayed()
    ask(browser, "x" * 1000 + " and more")  # the box keeps 1000 characters
    assert browser.find_element(By.ID, "question").get_attribute("value") == "x" * 1000


def test_page_sends_the_token_kept_in_the_session(api, browser):
    from selenium.webdriver.common.by import By

    _, url = api
    browser.get(url + "/")
    ask(browser, QUESTIONS[2])
    error = shown(browser, "error")
    assert error.text == "Error 401: missing or wrong bearer token"
    token = browser.find_element(By.ID, "token")
    assert token.is_displayed()  # the token field opens on a 401
    token.send_keys(TOKEN)
    ask(browser, QUESTIONS[2])
    shown(browser, "result")
    assert browser.find_element(By.CSS_SELECTOR, "#passage-text mark").text
    assert browser.execute_script("return sessionStorage.getItem('shardqa-token')") == TOKEN
    assert browser.execute_script("return localStorage.length") == 0
    browser.get(url + "/")  # a reload in the same tab keeps it
    assert browser.find_element(By.ID, "token").get_attribute("value") == TOKEN


def test_page_sends_the_minimum_confidence_chosen(api, browser):
    """*Min. confidence*: the server's unless chosen; an answer below it shows the API's
    "no answer" and its reason."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    url, _ = api
    browser.get(url + "/")
    assert "min_confidence" not in browser.execute_script("return question()")
    for label, least in (("90%", 0.9), ("off", 0.0)):
        Select(browser.find_element(By.ID, "min-confidence")).select_by_visible_text(label)
        assert browser.execute_script("return question()")["min_confidence"] == least
        ask(browser, QUESTIONS[3], k="5")
        shown(browser, "result")
        query = urllib.parse.urlencode({"q": QUESTIONS[3], "min_confidence": least})
        with urllib.request.urlopen(f"{url}/qa?{query}", timeout=60) as resp:
            expected = json.loads(resp.read())
        text = browser.find_element(By.ID, "answer").text
        if expected["answer"] is None:
            assert least and text == f"No answer: {expected['reason']}."
            assert not browser.find_element(By.ID, "passage").is_displayed()
        else:
            assert text == expected["answer"]
            assert expected["confidence"] >= least


def test_page_renders_retrieval_and_further_answers(api, browser):
    """Fields newer servers add (hybrid retrieval, n answers): rendered when present."""
    from selenium.webdriver.common.by import By

    url, _ = api
    browser.get(url + "/")
    text = "By <b>Gustave Eiffel</b>'s firm."
    best = {"answer": "<b>Gustave Eiffel</b>", "score": 3.5, "start": 3, "end": 24,
            "passage": {"id": "e.0", "title": "Eiffel Tower", "text": text}}
    assert text[3:24] == best["answer"]
    body = {**best, "question": "q", "cached": False, "timings_ms": {"total": 1.0},
            "retrieval": {"bm25": 1, "dense": 2},
            "answers": [best,
                        {"answer": "Paris", "score": 1.25, "start": 9, "end": 14,
                         "passage": {"id": "p.0", "title": "Paris", "text": "Capital: Paris."}}]}
    browser.execute_script("showAnswer(arguments[0])", body)
    assert browser.find_element(By.ID, "retrieval").text == "Retrieval: bm25 #1, dense #2"
    browser.execute_script("showAnswer(arguments[0])", {
        **body, "retrieval": {"mode": "hybrid", "bm25": None, "dense": 3}})
    assert (browser.find_element(By.ID, "retrieval").text
            == "Retrieval (hybrid): bm25: not found, dense #3")
    browser.execute_script("showAnswer(arguments[0])", {
        **body, "retrieval": {"mode": "bm25", "bm25": 2, "dense": None}})
    assert browser.find_element(By.ID, "retrieval").text == "Retrieval (BM25 only): bm25 #2"
    browser.execute_script("showAnswer(arguments[0])", body)
    items = browser.find_elements(By.CSS_SELECTOR, "#answers li")
    assert len(items) == 1 and items[0].find_element(By.TAG_NAME, "mark").text == "Paris"
    # text, never markup: the passage's "<b>" is shown, not parsed
    mark = browser.find_element(By.CSS_SELECTOR, "#passage-text mark")
    assert mark.text == "<b>Gustave Eiffel</b>"
    assert not browser.find_elements(By.CSS_SELECTOR, "#passage-text b")


def main(url: str, question: str, out: str) -> None:
    """Ask ``question`` on the page at ``url`` and save a screenshot of the answer."""
    import tempfile

    with tempfile.TemporaryDirectory() as profile:
        driver = chromium(Path(profile))
        try:
            driver.get(url.rstrip("/") + "/")
            ask(driver, question)
            mark = shown(driver, "result").find_element("css selector", "#passage-text mark")
            print(f"answer: {mark.text}")
            # the whole page, further answers included: the window grows to the content
            page, view = driver.execute_script(
                "return [document.documentElement.scrollHeight, window.innerHeight]")
            size = driver.get_window_size()
            driver.set_window_size(size["width"], size["height"] + max(0, page - view))
            driver.save_screenshot(out)
        finally:
            driver.quit()


if __name__ == "__main__":
    import sys

    main(*sys.argv[1:4])
