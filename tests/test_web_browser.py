"""The page in a real browser (Debian's Chromium through Playwright) against the real stack.

Every file goes from the page straight to moto's S3 endpoint, a cross-origin POST that the
bucket's CORS rule must allow; moto's own permissive CORS is off (imagepipe.local.endpoint).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagepipe.local.stack import LocalStack
from tests.conftest import ARTIFACTS, LocalWebServer

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# As root there is no sandbox; background networking would try to reach Google.
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    "--disable-dev-shm-usage",
]
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}
# The first result of the session may wait for TensorFlow and the model to load.
RESULT_TIMEOUT_MS = 180_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: `make setup` installs it "
                    "(apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class PageRun:
    """A page of the front in a fresh browser context, and what it logged and fetched."""

    def __init__(self, browser: Any, front: str, **context: Any) -> None:
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.posts: list[tuple[str, int]] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        # CSP violations and failed loads show up as console errors.
        self.page.on("console", lambda message: message.type == "error"
                     and self.errors.append(message.text))
        self.page.on("requestfinished", self._finished)
        self.page.goto(f"{front}/")
        self.page.wait_for_selector("#gallery-status:not(:empty)")

    def _finished(self, request: Any) -> None:
        if request.method == "POST":
            response = request.response()
            self.posts.append((request.url, response.status if response else 0))

    def choose(self, *files: tuple[str, str, bytes]) -> None:
        self.page.get_by_label("Choose photos").set_input_files(
            [{"name": name, "mimeType": mime, "buffer": data} for name, mime, data in files])

    def card(self, name: str) -> Any:
        return self.page.locator(".card").filter(
            has=self.page.locator(".card-name", has_text=name))

    def wait_state(self, name: str, state: str) -> Any:
        """The card once it is done or failed, which must be `state`."""
        from playwright.sync_api import expect

        card = self.card(name)
        expect(card).to_have_attribute("data-state", re.compile("^(done|failed)$"),
                                       timeout=RESULT_TIMEOUT_MS)
        assert card.get_attribute("data-state") == state, card.inner_text()
        return card

    def top_labels(self, name: str) -> list[str]:
        return self.card(name).locator(".label-name").all_inner_texts()

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def run(browser: Any, front: str) -> Iterator[PageRun]:
    page_run = PageRun(browser, front, viewport={"width": 1280, "height": 900})
    yield page_run
    page_run.close()


def _no_errors(run: PageRun) -> None:
    assert run.errors == [], run.errors


def test_a_cat_photo_gets_a_cat_label(run: PageRun, photos, stack: LocalStack,
                                      front: str) -> None:
    run.choose(("chelsea.jpg", "image/jpeg", photos.cat_jpeg))

    card = run.wait_state("chelsea.jpg", "done")

    labels = run.top_labels("chelsea.jpg")
    assert labels[0] in CAT_CLASSES
    assert len(labels) == 5
    assert "efficientnet_lite0" in card.locator(".meta").inner_text()
    assert " ms" in card.locator(".meta").inner_text()
    assert card.locator(".label-score").first.inner_text().endswith("%")
    # The local preview is the picked file itself.
    assert card.locator(".thumb img").get_attribute("src").startswith("blob:")
    # The bytes went straight to the bucket, cross-origin, and S3's answer was readable.
    bucket = f"{stack.endpoint_url}/{stack.settings.bucket}"
    assert (bucket, 204) in run.posts
    assert [url for url, _ in run.posts if url.startswith(front)] == [f"{front}/api/uploads"]
    assert "chelsea.jpg: done" in run.page.locator("#announcer").inner_text()
    _no_errors(run)


def test_three_files_at_once_get_three_results(run: PageRun, photos) -> None:
    run.choose(("cat.jpg", "image/jpeg", photos.cat_jpeg),
               ("coffee.jpg", "image/jpeg", photos.coffee_jpeg),
               ("rocket.png", "image/png", photos.rocket_jpeg))

    for name in ("cat.jpg", "coffee.jpg", "rocket.png"):
        run.wait_state(name, "done")

    assert run.page.locator(".card[data-state=done]").count() == 3
    assert run.top_labels("cat.jpg")[0] in CAT_CLASSES
    assert run.top_labels("coffee.jpg")[0] == "espresso"
    # Named .png but a JPEG: the page sends the type its bytes say.
    assert run.top_labels("rocket.png")[0] in {"missile", "projectile"}
    _no_errors(run)


DISPATCH_FILE = """([kind, name, b64]) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const data = new DataTransfer();
    data.items.add(new File([bytes], name, { type: "image/jpeg" }));
    if (kind === "drop") {
        const zone = document.getElementById("dropzone");
        for (const type of ["dragenter", "dragover", "drop"]) {
            zone.dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true,
                                                     cancelable: true }));
        }
    } else {
        document.body.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data,
                                                                  bubbles: true }));
    }
}"""


def test_dropped_and_pasted_photos_are_classified(run: PageRun, photos) -> None:
    encoded = base64.b64encode(photos.coffee_jpeg).decode()

    run.page.evaluate(DISPATCH_FILE, ["drop", "dropped.jpg", encoded])
    run.page.evaluate(DISPATCH_FILE, ["paste", "pasted.jpg", encoded])

    for name in ("dropped.jpg", "pasted.jpg"):
        run.wait_state(name, "done")
        assert run.top_labels(name)[0] == "espresso"
    assert not run.page.locator("#dropzone.dragging").count()
    _no_errors(run)


def test_a_text_file_named_jpg_fails_with_a_clear_message(run: PageRun) -> None:
    run.choose(("holiday.jpg", "image/jpeg", b"Dear diary, today we went to the beach.\n" * 20))

    card = run.wait_state("holiday.jpg", "failed")

    reason = card.locator(".reason").inner_text()
    assert "not an image" in reason
    assert "JPEG, PNG" in reason
    # Refused in the page: nothing was uploaded.
    assert run.posts == []


def test_a_damaged_photo_fails_with_the_processor_reason(run: PageRun, photos) -> None:
    # A JPEG cut short passes the page's checks; the processor finds it cannot be decoded.
    run.choose(("cut.jpg", "image/jpeg", photos.cat_jpeg[: len(photos.cat_jpeg) // 3]))

    card = run.wait_state("cut.jpg", "failed")

    assert card.locator(".reason-code").inner_text() == "Reason code: corrupt_image"
    assert "damaged or cut short" in card.locator(".reason").inner_text()


def test_url_import_from_a_local_server_by_keyboard(run: PageRun,
                                                    image_server: LocalWebServer) -> None:
    # Given the page, used with the keyboard only: Tab reaches the URL box
    page = run.page
    field = page.get_by_label("Or import an image from a web address")
    focused = []
    for _ in range(6):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id"))
        if focused[-1] == "import-url":
            break
    assert focused[0] == "file-input"
    assert focused[-1] == "import-url"

    # When a URL is typed and Enter pressed
    url = image_server.url("/go/cat")
    page.keyboard.type(url)
    page.keyboard.press("Enter")

    # Then the server fetches it and its card shows a cat, with the stored image as preview
    card = run.wait_state(url, "done")
    assert run.top_labels(url)[0] in CAT_CLASSES
    assert field.input_value() == ""
    preview = card.locator(".thumb img")
    assert preview.get_attribute("src").endswith("/image")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=preview.element_handle())
    _no_errors(run)


def test_a_refused_import_says_why(run: PageRun) -> None:
    run.page.get_by_label("Or import an image from a web address").fill(
        "http://169.254.169.254/latest/meta-data/")
    run.page.get_by_role("button", name="Import").click()

    card = run.wait_state("169.254.169.254", "failed")

    assert "private network" in card.locator(".reason").inner_text()


def test_the_gallery_filter_finds_the_cat(run: PageRun, photos) -> None:
    run.choose(("gallery-cat.jpg", "image/jpeg", photos.cat_jpeg))
    card = run.wait_state("gallery-cat.jpg", "done")
    image_id = card.get_attribute("data-image-id")
    label = run.top_labels("gallery-cat.jpg")[0]

    page = run.page
    page.get_by_label("Top label", exact=True).fill(label)
    page.get_by_role("button", name="Filter", exact=True).click()

    # The unfiltered gallery may already show the cat: wait for the filtered page itself.
    page.locator("#gallery-status", has_text=label).wait_for()
    tile = page.locator(f".tile[data-image-id='{image_id}']")
    tile.wait_for()
    assert set(page.locator(".tile .tile-label").all_inner_texts()) == {label}
    assert label in page.locator("#gallery-status").inner_text()
    # The thumbnail comes from the bucket through a presigned link.
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=tile.locator("img").element_handle())

    page.get_by_label("Top label", exact=True).fill("no such label at all")
    page.keyboard.press("Enter")
    page.locator("#gallery-status", has_text="No results").wait_for()
    assert page.locator(".tile").count() == 0
    _no_errors(run)


def test_screenshots_of_the_finished_page(browser: Any, front: str, photos) -> None:
    """Desktop and 375-px phone screenshots of a page with results, for people to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    shots = {
        "web-desktop.png": {"viewport": {"width": 1280, "height": 900}},
        "web-phone-375.png": {"viewport": {"width": 375, "height": 812}, "is_mobile": True,
                              "has_touch": True, "device_scale_factor": 2},
    }
    for filename, context in shots.items():
        page_run = PageRun(browser, front, **context)
        try:
            page_run.choose(("chelsea.jpg", "image/jpeg", photos.cat_jpeg),
                            ("coffee.jpg", "image/jpeg", photos.coffee_jpeg),
                            ("notes.jpg", "image/jpeg", b"just some text\n" * 10))
            ids = [page_run.wait_state(name, "done").get_attribute("data-image-id")
                   for name in ("chelsea.jpg", "coffee.jpg")]
            page_run.wait_state("notes.jpg", "failed")
            page = page_run.page
            # The gallery has caught up with both results and loaded its thumbnails.
            for image_id in ids:
                page.locator(f".tile[data-image-id='{image_id}']").wait_for()
            # A function, not an expression: the page's CSP forbids evaluating strings.
            page.wait_for_function(
                "() => [...document.querySelectorAll('.tile img')].every(i => i.complete)")
            # Nothing sticks out sideways: the page fits the viewport's width.
            width = context["viewport"]["width"]
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            camera = page.locator("label[for=camera-input]")
            assert camera.is_visible() == bool(context.get("has_touch"))
            page.screenshot(path=str(ARTIFACTS / filename), full_page=True)
            _no_errors(page_run)
        finally:
            page_run.close()
        assert (ARTIFACTS / filename).stat().st_size > 10_000
