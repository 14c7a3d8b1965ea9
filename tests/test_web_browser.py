"""The page in a real browser (Debian's Chromium through Playwright) against the real stack.

Every page signs in first, through the page's own form, as the stack's user or as people a
test adds to the stack's pool. Every file goes from the page straight to moto's S3 endpoint, a
cross-origin POST that the bucket's CORS rule must allow; moto's own permissive CORS is off
(imagepipe.local.endpoint).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagepipe.core.auth import ACCESS_COOKIE, CSRF_COOKIE, CSRF_HEADER, REFRESH_COOKIE
from imagepipe.core.users import add_user
from imagepipe.local.stack import LocalStack
from imagepipe.local.state import local_session
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

    def __init__(self, browser: Any, front: str, user: tuple[str, str] | None = None,
                 **context: Any) -> None:
        self.front = front
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.posts: list[tuple[str, int]] = []
        # Every request the page made: (method, URL).
        self.requests: list[tuple[str, str]] = []
        # Requests the front refused for want of a session: (method, path).
        self.refused: list[tuple[str, str]] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        # CSP violations and failed loads show up as console errors.
        self.page.on("console", lambda message: message.type == "error"
                     and self.errors.append(message.text))
        self.page.on("requestfinished", self._finished)
        self.page.on("request", lambda request: self.requests.append((request.method,
                                                                      request.url)))
        self.page.on("response", self._responded)
        self.page.goto(f"{front}/")
        if user is not None:
            self.sign_in(*user)

    def sign_in(self, username: str, password: str) -> None:
        """Sign in through the page's form and wait for the gallery of this user."""
        page = self.page
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_selector("#gallery-status:not(:empty)")
        assert page.locator("#account-name").inner_text() == username
        # What the page sends from here on is the test's: the sign-in is not counted.
        self.posts.clear()

    def sign_in_form_shown(self) -> bool:
        """The page asks for sign-in, and shows nothing of the photos and gallery."""
        page = self.page
        page.locator("#sign-in-form").wait_for()
        return (page.get_by_label("Username").is_visible()
                and not page.locator("#gallery").is_visible()
                and not page.locator("#dropzone").is_visible()
                and not page.locator("#account").is_visible())

    def _responded(self, response: Any) -> None:
        if response.status == 401:
            self.refused.append((response.request.method, response.url.removeprefix(self.front)))

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
def demo(stack: LocalStack) -> tuple[str, str]:
    """The user `make run` creates and prints, with this start's password."""
    assert stack.password is not None, "the stack runs with sign-in on"
    return stack.user, stack.password


@pytest.fixture
def run(browser: Any, front: str, demo: tuple[str, str]) -> Iterator[PageRun]:
    page_run = PageRun(browser, front, user=demo, viewport={"width": 1280, "height": 900})
    yield page_run
    page_run.close()


@pytest.fixture(scope="module")
def people(stack: LocalStack) -> Any:
    """Adds people to the stack's user pool, as `imagepipe users add` does: (name, password)."""
    cognito = local_session().client("cognito-idp", endpoint_url=stack.endpoint_url)
    pool_id = stack.env["IMAGEPIPE_USER_POOL_ID"]

    def add(name: str) -> tuple[str, str]:
        user, password = add_user(cognito, pool_id, name)
        return user.username, password
    return add


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
    # The categories above the labels, most specific first; the model hesitates between
    # three cats, so the card leads with the domestic cat it is sure of.
    categories = card.locator(".category-name").all_inner_texts()
    assert {"cat", "feline", "mammal", "animal"} <= set(categories)
    assert categories[0] == "domestic cat"
    assert card.locator(".state-detail").inner_text().startswith("a domestic cat, ")
    # The local preview is the picked file itself.
    assert card.locator(".thumb img").get_attribute("src").startswith("blob:")
    # The bytes went straight to the bucket, cross-origin, and S3's answer was readable.
    bucket = f"{stack.endpoint_url}/{stack.settings.bucket}"
    assert (bucket, 204) in run.posts
    assert [url for url, _ in run.posts if url.startswith(front)] == [f"{front}/api/uploads"]
    assert "chelsea.jpg: done" in run.page.locator("#announcer").inner_text()
    _no_errors(run)


def test_a_result_arrives_by_the_stream_without_polling(run: PageRun, photos,
                                                         stack: LocalStack) -> None:
    # Given the page with its event stream open
    events_url = stack.env["IMAGEPIPE_EVENTS_URL"]
    run.page.wait_for_function("() => true")
    run.page.wait_for_timeout(500)
    assert ("GET", events_url) in run.requests, run.requests

    # When a photo is added and classified
    run.choose(("streamed.jpg", "image/jpeg", photos.cat_jpeg))
    run.wait_state("streamed.jpg", "done")

    # Then its result came by the stream: the page never asked for the result itself
    polls = [url for method, url in run.requests
             if method == "GET" and re.search(r"/api/results/[\w-]{22}$", url)]
    assert polls == []
    assert run.top_labels("streamed.jpg")[0] in CAT_CLASSES
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

    assert card.locator(".reason-code").inner_text() == "Details: corrupt_image"
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
    field = run.page.get_by_label("Or import an image from a web address")
    field.fill("http://169.254.169.254/latest/meta-data/")
    run.page.get_by_role("button", name="Import").click()

    error = run.page.locator("#import-error")
    error.locator(".reason").wait_for()
    assert "private network" in error.locator(".reason").inner_text()
    assert error.locator(".reason-code").inner_text() == "Details: forbidden_address"
    # The address stays, to be corrected rather than typed again; no card was made.
    assert field.input_value() == "http://169.254.169.254/latest/meta-data/"
    assert field.get_attribute("aria-invalid") == "true"
    assert run.page.locator(".card").count() == 0


def test_the_gallery_filter_finds_the_cat(run: PageRun, photos) -> None:
    run.choose(("gallery-cat.jpg", "image/jpeg", photos.cat_jpeg))
    card = run.wait_state("gallery-cat.jpg", "done")
    image_id = card.get_attribute("data-image-id")
    label = run.top_labels("gallery-cat.jpg")[0]

    page = run.page
    # A category finds it as its label does; the filter suggests words as they are typed.
    page.get_by_label("Label or category", exact=True).fill("hous")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#known-labels option')]"
        ".some((o) => o.value === 'house cat')")
    for word in (label, "cat", "animal"):
        page.get_by_label("Label or category", exact=True).fill(word)
        page.get_by_role("button", name="Filter", exact=True).click()
        # The unfiltered gallery may already show the cat: wait for the filtered page itself.
        page.locator("#gallery-status", has_text=f"“{word}”").wait_for()
        tile = page.locator(f".tile[data-image-id='{image_id}']")
        tile.wait_for()
    assert word in page.locator("#gallery-status").inner_text()
    # The thumbnail comes from the bucket through a presigned link.
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=tile.locator("img").element_handle())

    page.get_by_label("Label or category", exact=True).fill("no such label at all")
    page.keyboard.press("Enter")
    page.locator("#gallery-status", has_text="No results").wait_for()
    assert page.locator(".tile").count() == 0
    _no_errors(run)


def test_screenshots_of_the_finished_page(browser: Any, front: str, photos,
                                          demo: tuple[str, str]) -> None:
    """Desktop and 375-px phone screenshots of a page with results, for people to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    shots = {
        "web-desktop.png": {"viewport": {"width": 1280, "height": 900}},
        "web-phone-375.png": {"viewport": {"width": 375, "height": 812}, "is_mobile": True,
                              "has_touch": True, "device_scale_factor": 2},
    }
    for filename, context in shots.items():
        page_run = PageRun(browser, front, user=demo, **context)
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


def _cookie_names(run: PageRun) -> set[str]:
    return {cookie["name"] for cookie in run.context.cookies()}


def test_two_people_see_only_their_own_photos(browser: Any, front: str, photos,
                                              people: Any) -> None:
    # Given A, signed in on the page, who uploads a photo and sees its labels
    alice = PageRun(browser, front, user=people("page-alice"),
                    viewport={"width": 1280, "height": 900})
    bob = None
    try:
        alice.choose(("alices-cat.jpg", "image/jpeg", photos.cat_jpeg))
        card = alice.wait_state("alices-cat.jpg", "done")
        image_id = card.get_attribute("data-image-id")
        label = alice.top_labels("alices-cat.jpg")[0]
        assert label in CAT_CLASSES
        alice.page.locator(f".tile[data-image-id='{image_id}']").wait_for()
        # The session is in cookies: the tokens out of the page's reach, the CSRF token not.
        cookies = {c["name"]: c for c in alice.context.cookies()}
        assert set(cookies) >= {ACCESS_COOKIE, REFRESH_COOKIE, CSRF_COOKIE}
        assert cookies[ACCESS_COOKIE]["httpOnly"] and cookies[REFRESH_COOKIE]["httpOnly"]
        assert not cookies[CSRF_COOKIE]["httpOnly"]
        assert all(c["sameSite"] == "Strict" and c["secure"] for c in cookies.values())
        assert "imagepipe_access" not in alice.page.evaluate("() => document.cookie")

        # When B signs in in another browser context, with the keyboard alone
        bob = PageRun(browser, front, viewport={"width": 1280, "height": 900})
        page = bob.page
        assert bob.sign_in_form_shown()
        name, password = people("page-bob")
        # The sign-in form has the focus when the page asks for sign-in.
        assert page.evaluate("document.activeElement.id") == "sign-in-username"
        page.keyboard.type(name)
        page.keyboard.press("Tab")
        page.keyboard.type(password)
        page.keyboard.press("Enter")
        page.wait_for_selector("#gallery-status:not(:empty)")

        # Then B's gallery shows nothing of A's, even filtered by A's label
        assert page.locator("#account-name").inner_text() == name
        assert page.locator("#gallery-status").inner_text() == "No results yet."
        assert page.locator(".tile").count() == 0
        page.get_by_label("Label or category", exact=True).fill(label)
        page.keyboard.press("Enter")
        page.locator("#gallery-status", has_text="No results").wait_for()
        assert page.locator(f".tile[data-image-id='{image_id}']").count() == 0
        _no_errors(bob)
        # And A's result and image, opened by URL in B's browser, answer as a missing one
        for path in (f"/api/results/{image_id}", f"/api/results/{image_id}/image"):
            direct = bob.context.new_page()
            response = direct.goto(f"{front}{path}")
            assert response.status == 404, path
            assert response.json()["error"]["code"] in {"not_found", "no_image"}
            assert label not in direct.content()
            direct.close()
        # While the same URL in A's browser shows A's result
        own = alice.context.new_page()
        response = own.goto(f"{front}/api/results/{image_id}")
        assert response.status == 200
        assert response.json()["labels"][0]["label"] == label
        own.close()

        # When A signs out
        before = {c["name"]: c["value"] for c in alice.context.cookies()}
        alice.page.get_by_role("button", name="Sign out").click()

        # Then the page asks for sign-in again, and the session's cookies are gone
        alice.page.wait_for_load_state()
        assert alice.sign_in_form_shown()
        assert alice.page.locator(".card").count() == 0
        assert not _cookie_names(alice) & {ACCESS_COOKIE, REFRESH_COOKIE, CSRF_COOKIE}
        assert alice.context.request.get(f"{front}/api/results").status == 401
        # And the refresh token, had someone kept a copy, makes no more access tokens
        stale = alice.context.request.post(f"{front}/api/session/refresh", headers={
            "Cookie": f"{REFRESH_COOKIE}={before[REFRESH_COOKIE]}; "
                      f"{CSRF_COOKIE}={before[CSRF_COOKIE]}",
            CSRF_HEADER: before[CSRF_COOKIE]})
        assert stale.status == 401
        assert stale.json()["error"]["code"] == "session_expired"
        _no_errors(alice)
    finally:
        alice.close()
        if bob is not None:
            bob.close()


def test_a_lost_access_cookie_is_renewed_and_an_ended_session_asks_for_sign_in(
        run: PageRun) -> None:
    page = run.page
    # Given a signed-in page, its thumbnails loaded, whose access cookie is gone (as when it
    # has expired)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.tile img')].every(i => i.complete)")
    run.context.clear_cookies(name=ACCESS_COOKIE)

    # When the gallery asks for results, the 401 makes the page renew its session once
    with page.expect_response("**/api/session/refresh") as renewal:
        page.get_by_role("button", name="Filter", exact=True).click()
    assert renewal.value.status == 200
    page.locator("#gallery-status", has_text=re.compile("Newest first|No results yet")).wait_for()
    assert ACCESS_COOKIE in _cookie_names(run)
    assert run.refused == [("GET", "/api/results?limit=12")]
    # The browser logs the refused request; nothing else went wrong.
    assert len(run.errors) == 1 and "401" in run.errors[0], run.errors

    # When every cookie of the session is gone, the renewal fails and the form comes back
    run.context.clear_cookies()
    page.get_by_role("button", name="Filter", exact=True).click()
    page.get_by_text("Your session has ended").wait_for()
    assert run.sign_in_form_shown()
    assert run.refused[1:] == [("GET", "/api/results?limit=12"),
                               ("POST", "/api/session/refresh")]
    assert len(run.errors) == 3 and all("401" in e for e in run.errors), run.errors


def test_a_wrong_password_says_so_and_keeps_the_form(browser: Any, front: str,
                                                     demo: tuple[str, str]) -> None:
    run = PageRun(browser, front, viewport={"width": 1280, "height": 900})
    try:
        page = run.page
        page.get_by_label("Username").fill(demo[0])
        page.get_by_label("Password").fill("Not-the-password-1")
        page.get_by_role("button", name="Sign in").click()

        alert = page.get_by_role("alert")
        alert.filter(has_text="do not match").wait_for()
        assert run.sign_in_form_shown()
        assert page.get_by_label("Password").input_value() == ""
        assert page.evaluate("document.activeElement.id") == "sign-in-password"
        assert page.get_by_label("Password").get_attribute("aria-invalid") == "true"
        # The refused sign-in is the only error: a 401, as the browser logs it.
        assert run.refused == [("POST", "/api/session")]
        assert len(run.errors) == 1 and "401" in run.errors[0], run.errors
        # The right password then works from the same form
        run.errors.clear()
        run.sign_in(*demo)
        _no_errors(run)
    finally:
        run.close()


def test_screenshots_of_the_sign_in_form(browser: Any, front: str) -> None:
    """The sign-in form at desktop and 375-px phone widths, for people to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    shots = {
        "web-sign-in-desktop.png": {"viewport": {"width": 1280, "height": 900}},
        "web-sign-in-phone-375.png": {"viewport": {"width": 375, "height": 812},
                                      "is_mobile": True, "has_touch": True,
                                      "device_scale_factor": 2},
    }
    for filename, context in shots.items():
        run = PageRun(browser, front, **context)
        try:
            assert run.sign_in_form_shown()
            page = run.page
            if context.get("is_mobile"):
                # The phone shot shows an error too, to see how it reads at that width.
                page.get_by_role("button", name="Sign in").click()
                page.get_by_role("alert").filter(has_text="Enter your username").wait_for()
            assert page.evaluate("document.documentElement.scrollWidth") <= (
                context["viewport"]["width"])
            page.screenshot(path=str(ARTIFACTS / filename), full_page=True)
            _no_errors(run)
        finally:
            run.close()
        assert (ARTIFACTS / filename).stat().st_size > 10_000


def test_with_sign_in_off_the_page_works_as_before(browser: Any, stack: LocalStack) -> None:
    from imagepipe.local.stack import free_port, start_events, start_front, stop_processes

    # Given a second front on the same endpoint, with sign-in off, and its events server
    port, events_port = free_port(), free_port()
    env = dict(stack.env, IMAGEPIPE_AUTH="off", IMAGEPIPE_PORT=str(port),
               IMAGEPIPE_EVENTS_PORT=str(events_port),
               IMAGEPIPE_EVENTS_URL=f"http://127.0.0.1:{events_port}/api/events")
    events = start_events(env, "127.0.0.1", events_port)
    front = start_front(env, "127.0.0.1", port, workers=1)
    run = None
    try:
        # When the page opens, nobody signs in
        run = PageRun(browser, f"http://127.0.0.1:{port}", viewport={"width": 1280,
                                                                      "height": 900})
        page = run.page
        page.wait_for_selector("#gallery-status:not(:empty)")

        # Then there is no sign-in form and no account, and the photos and gallery are there
        assert not page.locator("#sign-in").is_visible()
        assert not page.locator("#account").is_visible()
        assert page.get_by_label("Or import an image from a web address").is_visible()
        assert page.locator("#gallery-status").inner_text() in {"Newest first.",
                                                                "No results yet."}
        assert not _cookie_names(run)
        _no_errors(run)
    finally:
        if run is not None:
            run.close()
        stop_processes(front, events)
