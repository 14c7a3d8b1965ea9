"""The page people expect, in a real browser against the real stack: a page per result, delete,
uploads they can control, photos that survive a reload, one tile per content, and axe-core's
WCAG 2.2 AA rules with no violation on every state these tests reach.

The browser, the stack and the sign-in are those of tests/test_web_browser.py.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from axe_playwright_python.base import AXE_SCRIPT
from playwright.sync_api import expect

from imagepipe.core.records import ResultStore
from imagepipe.local.stack import LocalStack
from imagepipe.local.state import local_session
from tests import test_web_browser as web_browser
from tests.conftest import ARTIFACTS, wait_for
from tests.test_web_browser import CAT_CLASSES, PageRun

pytestmark = pytest.mark.slow

# The fixtures of tests/test_web_browser.py, found by pytest under these names.
browser = web_browser.browser
demo = web_browser.demo
people = web_browser.people

# WCAG 2.0, 2.1 and 2.2, levels A and AA.
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]


def axe_violations(page: Any) -> list[str]:
    """axe-core's WCAG A/AA violations on the page as it is now: "rule: target" lines.

    Injected as a function: the page's CSP refuses strings evaluated as code.
    """
    page.evaluate("() => {" + AXE_SCRIPT + "\n}")
    results = page.evaluate(
        "async (tags) => await axe.run(document, {runOnly: {type: 'tag', values: tags}})",
        WCAG_TAGS)
    assert len(results["passes"]) > 10, "axe-core checked next to nothing"
    return [f"{v['id']}: {node['target']} {node.get('failureSummary', '')}"
            for v in results["violations"] for node in v["nodes"]]


def assert_accessible(page: Any) -> None:
    violations = axe_violations(page)
    assert violations == [], "\n".join(violations)


def unique_cat(photos: Any, quality: int) -> bytes:
    """The cat photo as new bytes (another JPEG quality): labelled afresh, not reused."""
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(photos.cat_jpeg)).save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture
def person(people: Any) -> Iterator[tuple[str, str]]:
    """Someone new, whose photos are only those of the test."""
    import uuid

    yield people(f"page-{uuid.uuid4().hex[:8]}")


def open_page(browser: Any, front: str, user: tuple[str, str], **context: Any) -> PageRun:
    context.setdefault("viewport", {"width": 1280, "height": 800})
    return PageRun(browser, front, user=user, **context)


def aws(stack: LocalStack, service: str) -> Any:
    return local_session().client(service, endpoint_url=stack.endpoint_url)


def test_a_result_has_a_page_reached_from_its_card_and_after_a_reload(
        browser: Any, front: str, photos, person: tuple[str, str], people: Any) -> None:
    run = open_page(browser, front, person)
    try:
        page = run.page
        run.choose(("chelsea.jpg", "image/jpeg", photos.cat_jpeg))
        card = run.wait_state("chelsea.jpg", "done")
        image_id = card.get_attribute("data-image-id")
        assert "chelsea.jpg: done" in page.locator("#announcer").inner_text()
        assert page.locator("#batch-summary").inner_text() == "1 of 1 done"
        assert_accessible(page)

        # Reloaded, the page still has the photo: from the server, not from the tab.
        page.reload()
        page.wait_for_selector("#gallery-status:not(:empty)")
        tile = page.locator(f".tile[data-image-id='{image_id}']")
        tile.wait_for()
        assert tile.locator("img").get_attribute("alt") == ""
        assert page.locator(".card").count() == 0

        # From the tile to the page of the result
        tile.locator("a").click()
        page.wait_for_url(f"{front}/results/{image_id}")
        page.locator("#result-body").wait_for()
        # The top label, or the confident category above a coin-toss label ("a domestic cat")
        assert re.search("cat", page.locator("#result-title").inner_text())
        # The categories lead where the model has them; the five labels follow.
        assert page.locator("#result-labels ol.labels").last.locator(".label-name").count() == 5
        facts = page.locator("#result-facts").inner_text()
        assert "efficientnet_lite0" in facts and "pixels" in facts and "ms" in facts
        shown = json.loads(page.locator("#result-json").inner_text())
        assert shown["image_id"] == image_id and shown["status"] == "done"
        page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                               arg=page.locator("#result-figure img").element_handle())
        assert page.locator("#download-json").get_attribute("download") == f"{image_id}.json"

        # Copy JSON puts the same JSON on the clipboard
        run.context.grant_permissions(["clipboard-read", "clipboard-write"])
        page.get_by_role("button", name="Copy JSON").click()
        expect(page.locator("#copy-status")).to_have_text("Copied.")
        copied = page.evaluate("() => navigator.clipboard.readText()")
        assert json.loads(copied) == shown
        assert_accessible(page)
        # Dark mode keeps every contrast too.
        page.emulate_media(color_scheme="dark")
        assert_accessible(page)
        assert run.errors == [], run.errors
    finally:
        run.close()

    # The address is the owner's: signed out it asks for sign-in, someone else finds nothing.
    stranger = PageRun(browser, front, viewport={"width": 1280, "height": 800})
    try:
        stranger.page.goto(f"{front}/results/{image_id}")
        expect(stranger.page.locator("#result-title")).to_have_text("Sign in to see this photo")
        assert_accessible(stranger.page)
    finally:
        stranger.close()
    other = open_page(browser, front, people(f"page-other-{image_id[:6]}"))
    try:
        other.page.goto(f"{front}/results/{image_id}")
        expect(other.page.locator("#result-title")).to_have_text("No such photo")
    finally:
        other.close()


def test_delete_from_the_page_leaves_nothing_behind(browser: Any, front: str, photos,
                                                   stack: LocalStack,
                                                   person: tuple[str, str]) -> None:
    s3, dynamodb = aws(stack, "s3"), aws(stack, "dynamodb")
    settings = stack.settings
    run = open_page(browser, front, person)
    try:
        page = run.page
        run.choose(("to-delete.jpg", "image/jpeg", unique_cat(photos, 81)))
        card = run.wait_state("to-delete.jpg", "done")
        image_id = card.get_attribute("data-image-id")
        key = ResultStore(dynamodb, settings.table).get(image_id).key
        assert s3.head_object(Bucket=settings.bucket, Key=key)

        # From the card to its page, and delete, confirmed
        card.get_by_role("link", name="Open the result of to-delete.jpg").click()
        page.wait_for_url(f"{front}/results/{image_id}")
        page.get_by_role("button", name="Delete this photo").click()
        assert_accessible(page)
        page.get_by_role("button", name="Yes, delete it").click()
        expect(page.locator("#result-title")).to_have_text("Deleted")

        # Gone: the object, the record (and so every index entry), the tile, the page
        listed = s3.list_objects_v2(Bucket=settings.bucket, Prefix=key)
        assert listed.get("KeyCount", 0) == 0
        assert "Item" not in dynamodb.get_item(TableName=settings.table,
                                               Key={"image_id": {"S": image_id}})
        page.get_by_role("link", name="Back to your photos").click()
        page.wait_for_selector("#gallery-status:not(:empty)")
        assert page.locator(f".tile[data-image-id='{image_id}']").count() == 0
        page.goto(f"{front}/results/{image_id}")
        expect(page.locator("#result-title")).to_have_text("No such photo")
        assert_accessible(page)
    finally:
        run.close()


def test_cancel_a_slow_upload_and_retry_after_an_offline_failure(
        browser: Any, front: str, photos, stack: LocalStack, person: tuple[str, str]) -> None:
    dynamodb = aws(stack, "dynamodb")
    run = open_page(browser, front, person)
    try:
        page = run.page
        network = run.context.new_cdp_session(page)
        # A slow line: the upload takes many seconds.
        network.send("Network.emulateNetworkConditions", {
            "offline": False, "latency": 100, "downloadThroughput": 64 * 1024,
            "uploadThroughput": 4 * 1024})
        # Four photos at once: three upload, the fourth waits for a slot (not "checking").
        run.choose(*[(name, "image/jpeg", unique_cat(photos, 83 + i)) for i, name in
                     enumerate(("slow.jpg", "slow-2.jpg", "slow-3.jpg", "slow-4.jpg"))])
        names = [n.split("\n")[0] for n in page.locator(".card .card-name").all_inner_texts()]
        assert names == ["slow.jpg", "slow-2.jpg", "slow-3.jpg", "slow-4.jpg"]
        card = run.card("slow.jpg")
        expect(card).to_have_attribute("data-state", "uploading")
        expect(card).to_have_attribute("data-image-id", re.compile(r"^[\w-]{22}$"))
        image_id = card.get_attribute("data-image-id")
        expect(run.card("slow-4.jpg")).to_have_attribute("data-state", "waiting")
        assert run.card("slow-4.jpg").locator(".badge").inner_text() == "Waiting"
        assert page.locator("#batch-summary").inner_text() == "0 of 4 done, 4 in progress"
        assert_accessible(page)

        card.get_by_role("button", name="Cancel slow.jpg").click()
        expect(card).to_have_attribute("data-state", "cancelled")
        # No pending record is left to wait for the upload that will not come.
        wait_for(lambda: "Item" not in dynamodb.get_item(
            TableName=stack.settings.table, Key={"image_id": {"S": image_id}}),
            "the cancelled upload's record deleted")
        assert run.context.request.get(f"{front}/api/results/{image_id}").status == 404
        card.get_by_role("button", name="Dismiss slow.jpg").click()
        expect(card).to_have_count(0)
        for name in ("slow-2.jpg", "slow-3.jpg", "slow-4.jpg"):
            run.card(name).get_by_role("button", name=f"Cancel {name}").click()
            expect(run.card(name)).to_have_attribute("data-state", "cancelled")
        assert page.locator("#batch-summary").inner_text() == "0 of 3 done, 3 failed or cancelled"
        page.get_by_role("button", name="Clear failed").click()
        expect(page.locator(".card")).to_have_count(0)

        # Offline, a photo fails with a reason; back online, Retry sends the same file.
        network.send("Network.emulateNetworkConditions", {
            "offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
        run.choose(("offline.jpg", "image/jpeg", unique_cat(photos, 84)))
        failed = run.wait_state("offline.jpg", "failed")
        assert "could not be reached" in failed.locator(".reason").inner_text()
        assert "Details: network" in failed.locator(".reason-code").inner_text()
        assert page.locator("#batch-summary").inner_text() == "0 of 1 done, 1 failed or cancelled"
        assert_accessible(page)
        network.send("Network.emulateNetworkConditions", {
            "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
        failed.get_by_role("button", name="Retry offline.jpg").click()
        done = run.wait_state("offline.jpg", "done")
        assert run.top_labels("offline.jpg")[0] in CAT_CLASSES
        assert done.locator(".thumb img").get_attribute("src").startswith("blob:")
        # One announcement per outcome (the log keeps the last five).
        announced = [line.split(":")[0] for line in page.locator("#announcer p").all_inner_texts()]
        assert announced == ["slow-2.jpg", "slow-3.jpg", "slow-4.jpg", "offline.jpg",
                             "offline.jpg"], announced
    finally:
        run.close()


def test_a_never_sent_upload_is_not_shown_as_processing_after_its_expiry(
        browser: Any, front: str, stack: LocalStack, person: tuple[str, str]) -> None:
    dynamodb = aws(stack, "dynamodb")
    run = open_page(browser, front, person)
    try:
        page = run.page
        # A presigned upload that is never sent (a closed tab, say)
        image_id = page.evaluate("""async () => {
            const csrf = document.cookie.split("; ").find((c) => c.startsWith("imagepipe_csrf"))
            const response = await fetch("/api/uploads", {method: "POST", headers: {
                "Content-Type": "application/json", "X-CSRF-Token": csrf.split("=")[1]},
                body: JSON.stringify({filename: "never.jpg", content_type: "image/jpeg",
                                      size: 1000})});
            return (await response.json()).image_id;
        }""")
        assert image_id, "presigned"
        page.reload()
        tile = page.locator(f".tile[data-image-id='{image_id}']")
        expect(tile).to_contain_text("Processing")

        # Its expiry passes (the stack's presign expiry plus the margin; here: dated back)
        dynamodb.update_item(TableName=stack.settings.table, Key={"image_id": {"S": image_id}},
                             UpdateExpression="SET expires_at = expires_at - :gap",
                             ExpressionAttributeValues={":gap": {"N": "100000"}})

        page.reload()
        page.wait_for_selector("#gallery-status:not(:empty)")
        assert page.locator(f".tile[data-image-id='{image_id}']").count() == 0
        assert page.locator(".tile", has_text="Processing").count() == 0
        page.goto(f"{front}/results/{image_id}")
        expect(page.locator("#result-title")).to_have_text("No such photo")
    finally:
        run.close()


def test_two_uploads_of_the_same_photo_show_one_tile(browser: Any, front: str, photos,
                                                     person: tuple[str, str]) -> None:
    run = open_page(browser, front, person)
    try:
        page = run.page
        same = unique_cat(photos, 86)
        run.choose(("first.jpg", "image/jpeg", same))
        first = run.wait_state("first.jpg", "done").get_attribute("data-image-id")
        run.choose(("again.jpg", "image/jpeg", same))
        again = run.wait_state("again.jpg", "done")
        note = again.get_by_role("link", name="You sent this photo before")
        assert note.get_attribute("href") == f"/results/{first}"

        page.reload()
        page.wait_for_selector(".tile")
        tiles = page.locator(".tile")
        expect(tiles).to_have_count(1)
        assert tiles.first.get_attribute("data-count") == "2"
        assert "sent 2 times" in tiles.first.inner_text()
        assert_accessible(page)
    finally:
        run.close()


@pytest.mark.parametrize(("name", "context"), [
    ("result-page-1280x800.png", {"viewport": {"width": 1280, "height": 800}}),
    ("result-page-390x844.png", {"viewport": {"width": 390, "height": 844}, "is_mobile": True,
                                 "has_touch": True, "device_scale_factor": 2}),
])
def test_screenshots_of_a_result_page(browser: Any, front: str, photos, demo: tuple[str, str],
                                      name: str, context: dict[str, Any]) -> None:
    """The page of a result at both sizes, light, for people to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    run = open_page(browser, front, demo, color_scheme="light", **context)
    try:
        page = run.page
        run.choose(("chelsea.jpg", "image/jpeg", photos.cat_jpeg))
        image_id = run.wait_state("chelsea.jpg", "done").get_attribute("data-image-id")
        page.goto(f"{front}/results/{image_id}")
        page.locator("#result-body").wait_for()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                               arg=page.locator("#result-figure img").element_handle())
        assert page.evaluate("document.documentElement.scrollWidth") <= \
            context["viewport"]["width"]
        assert_accessible(page)
        page.screenshot(path=str(ARTIFACTS / name), full_page=True)
        assert run.errors == [], run.errors
    finally:
        run.close()
    assert (ARTIFACTS / name).stat().st_size > 10_000


DRAG = """([type, x, y]) => {
    const data = new DataTransfer();
    data.items.add(new File(["x"], "a.jpg", { type: "image/jpeg" }));
    document.elementFromPoint(x, y).dispatchEvent(new DragEvent(type, { dataTransfer: data,
        bubbles: true, cancelable: true, clientX: x, clientY: y }));
}"""


def test_files_dragged_over_a_scrolled_page_show_a_full_window_target(
        browser: Any, front: str, demo: tuple[str, str]) -> None:
    run = open_page(browser, front, demo, viewport={"width": 390, "height": 500})
    try:
        page = run.page
        # Scrolled so that the drop zone is off screen
        page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
        assert not page.locator("#dropzone").is_visible() or \
            page.evaluate("() => document.getElementById('dropzone')"
                          ".getBoundingClientRect().bottom < 0")
        overlay = page.locator("#drop-overlay")

        page.evaluate(DRAG, ["dragenter", 200, 400])

        expect(overlay).to_be_visible()
        box = overlay.bounding_box()
        assert (box["x"], box["y"], box["width"], box["height"]) == (0, 0, 390, 500)
        page.evaluate(DRAG, ["dragleave", 200, 400])
        expect(overlay).to_be_hidden()
    finally:
        run.close()


def test_a_weak_guess_says_not_sure(browser: Any, front: str, person: tuple[str, str]) -> None:
    from PIL import Image

    red = io.BytesIO()
    Image.new("RGB", (1, 1), "red").save(red, "PNG")
    run = open_page(browser, front, person)
    try:
        page = run.page
        run.choose(("red.png", "image/png", red.getvalue()))
        card = run.wait_state("red.png", "done")

        # Under IMAGEPIPE_UNSURE_BELOW (0.3): a guess, shown quietly, not an answer
        assert card.get_attribute("data-unsure") == "true"
        assert card.locator(".state-detail").inner_text().startswith("Not sure: perhaps ")
        assert card.locator(".labels.quiet").count() == 1
        assert "not sure" in " ".join(page.locator("#announcer p").all_inner_texts()).lower()
        tile = page.locator(f".tile[data-image-id='{card.get_attribute('data-image-id')}']")
        expect(tile).to_contain_text("not sure")
        assert_accessible(page)
    finally:
        run.close()
