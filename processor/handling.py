"""The handling of one batch: parse the messages, fetch and decode the objects, classify.

Each stage returns values (processor.batch): an image that fails here gets its outcome at once,
and the rest go on to the model. Nothing here writes a record or deletes a message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from imagepipe.core.aws import error_code
from imagepipe.core.hierarchy import search_words
from imagepipe.core.ids import image_id_for_object
from imagepipe.core.records import ImageFacts, Label, ResultStore
from imagepipe.core.settings import Settings
from processor.batch import (
    Done,
    Failed,
    Fetched,
    Handled,
    Image,
    Outcome,
    Prepared,
    Received,
    Retry,
)
from processor.decode import decode_image, progressive_prefix
from processor.dedupe import RecentResults, classify_once, content_sha256
from processor.errors import PermanentError, TransientError
from processor.events import MalformedEvent, ObjectCreated, parse_body
from processor.model import Prediction
from processor.pipeline import StageTimes

logger = logging.getLogger(__name__)

# S3 error codes that mean the object will not come back by retrying.
_GONE = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchBucket"})
_DENIED = frozenset({"AccessDenied", "403", "Forbidden"})
# The first ranged read: a web image whole, or a phone photo's header and first scan.
HEAD_BYTES = 256 * 1024


class Classifier(Protocol):
    """What the worker needs of a model (processor.model.Classifier is the real one)."""

    name: str
    version: str
    input_size: int

    def preprocess(self, image: Any) -> Any: ...

    def classify(self, images: list[Any], top_k: int = 5) -> list[list[Label]]: ...


class BatchHandler:
    """Turns one receive into an outcome per image; the writer does the rest."""

    def __init__(
        self,
        settings: Settings,
        s3: Any,
        classifier: Classifier,
        store: ResultStore,
        pool: ThreadPoolExecutor,
        stage_times: StageTimes,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self._s3 = s3
        self.classifier = classifier
        self._store = store
        self._pool = pool
        self._stage_times = stage_times
        self._clock = clock
        self._recent = RecentResults()

    def parse(self, messages: Sequence[dict[str, Any]]) -> Received:
        """The images the messages announce, one per object however often it is announced."""
        received_at = self._clock()
        images: dict[tuple[str, str], Image] = {}
        ack: dict[str, dict[str, Any]] = {}
        malformed = ignored = 0
        for message in messages:
            message_id = message.get("MessageId", "?")
            try:
                events = parse_body(message.get("Body", ""))
            except MalformedEvent as exc:
                # Left unacknowledged: after max receives the queue moves it to the DLQ.
                logger.error("message %s is malformed, leaving it for the dead-letter queue: %s",
                             message_id, exc)
                malformed += 1
                continue
            ack[message_id] = message
            for event in events:
                if event.bucket != self.settings.bucket:
                    logger.warning("message %s: ignoring object %s in foreign bucket %s",
                                   message_id, event.key, event.bucket)
                    ignored += 1
                    continue
                # One object can be announced twice in a batch (multipart uploads, retries).
                slot = (event.bucket, event.key)
                receives = _receive_count(message)
                if slot in images:
                    seen = images[slot]
                    images[slot] = replace(seen, message_ids=(*seen.message_ids, message_id),
                                           receives=max(seen.receives, receives))
                    continue
                images[slot] = Image(event, image_id_for_object(event.bucket, event.key),
                                     (message_id,), received_at, receives=receives)
        return Received(messages, tuple(images.values()), ack, malformed=malformed,
                        ignored=ignored)

    def fetch(self, received: Received, pool: ThreadPoolExecutor | None = None) -> Prepared:
        """Read and decode the objects concurrently (on `pool`, else the handler's); those
        that fail are settled here."""
        fetched: list[Fetched] = []
        settled: list[Handled] = []
        pool = pool or self._pool
        for image, result in zip(received.images, pool.map(self._fetch, received.images),
                                 strict=True):
            if isinstance(result, Fetched):
                fetched.append(result)
            else:
                settled.append(Handled(image, result))
        return Prepared(received, tuple(fetched), tuple(settled))

    def classify(self, prepared: Prepared, pool: ThreadPoolExecutor | None = None
                 ) -> list[Handled]:
        """Every image of the batch with its outcome, in the order they were received; the
        lookups of earlier results run on `pool`, else the handler's."""
        ready = list(prepared.fetched)
        if self.settings.reuse_results:
            # Bytes already labelled by this model (or twice in the batch) are classified once.
            outcomes = classify_once(self._store, self.classifier, ready, self._run_model,
                                     (pool or self._pool).map, recent=self._recent)
        else:
            outcomes = self._run_model(ready)
        by_id = {h.image.image_id: h for h in prepared.settled}
        by_id.update((item.image_id, Handled(item.image, outcome))
                     for item, outcome in zip(ready, outcomes, strict=True))
        return [by_id[image.image_id] for image in prepared.received.images]

    def _fetch(self, image: Image) -> Fetched | Outcome:
        """Read and decode one object; a failure here is the image's outcome."""
        start = time.perf_counter()
        base = image.base_record(self.settings.result_expiry_days)
        timings: dict[str, float] = {}
        min_side = min_decode_side(self.classifier.input_size)
        try:
            with self._stage_times.measure("download"):
                read = self._read_object(image.event, min_side)
            self._stage_times.add_bytes("download", len(read.data))
            size = read.size
            timings["download_ms"] = _ms_since(start)
            base = replace(base, image=ImageFacts(bytes=size), sha256=read.sha256)
            decode_start = time.perf_counter()
            with self._stage_times.measure("decode"):
                decoded = decode_image(read.data, self.settings.max_pixels, min_side=min_side,
                                       partial=self.settings.partial_decode,
                                       dc_only=self.settings.partial_decode_dc,
                                       vips_formats=self.settings.vips_decode)
                # Crop and resize here, in the fetch threads, so it overlaps inference.
                pixels = self.classifier.preprocess(decoded.image)
            timings["decode_ms"] = _ms_since(decode_start)
        except PermanentError as exc:
            logger.warning("image %s (key %r) failed: %s %s",
                           image.image_id, image.key, exc.code, exc.message)
            return Failed(base.failed(exc.code, exc.message, timings=timings))
        except TransientError as exc:
            logger.warning("image %s (key %r) will be retried: %s", image.image_id, image.key, exc)
            return Retry(str(exc), base)
        except Exception:
            # An unexpected decoder failure is a property of the bytes, not of the moment.
            logger.exception("image %s (key %r): unexpected decode error", image.image_id,
                             image.key)
            return Failed(base.failed("decode_error", "the image could not be decoded",
                                      timings=timings))
        facts = ImageFacts(format=decoded.format, width=decoded.width, height=decoded.height,
                           bytes=size)
        return Fetched(image, replace(base, image=facts, timings=timings), pixels)

    def _read_object(self, event: ObjectCreated, min_side: int) -> ObjectRead:
        """The object's bytes: whole, or with partial decoding the head a progressive JPEG needs.

        With partial decoding the first GET asks for the first HEAD_BYTES only; a progressive
        JPEG whose needed scans are not complete yet is extended range by range (each twice
        the last), anything else gets the rest in one more GET. Later ranges must match the
        first one's ETag, so an object replaced meanwhile is retried, not spliced.
        """
        cap = self.settings.max_upload_bytes
        if self.settings.partial_decode:
            try:
                response = self._get(event, Range=f"bytes=0-{HEAD_BYTES - 1}")
            except TransientError as exc:
                if exc.__cause__ is not None and error_code(exc.__cause__) == "InvalidRange":
                    # S3's answer to any range of an empty object.
                    return ObjectRead(b"", 0, content_sha256(b""))
                raise
        else:
            response = self._get(event)
        size = _object_size(response)
        if size > cap:
            response["Body"].close()
            raise PermanentError("too_large", f"{size} bytes is more than the {cap} byte cap")
        etag = response.get("ETag")
        # Unranged (partial decoding off, or an endpoint that ignores ranges and answers 200
        # with everything): the whole object, up to the cap, in this one read.
        ranged = bool(response.get("ContentRange"))
        data = self._read_body(response, HEAD_BYTES + 1 if ranged else cap + 1)
        claimed = response.get("Metadata", {}).get("sha256", "")
        while self.settings.partial_decode and len(data) < size:
            prefix = progressive_prefix(data, min_side, self.settings.partial_decode_dc)
            if prefix is not None and prefix.end is not None:
                # The record's hash is the uploader's claim (the CLI sets it), or none: a
                # ranged read has no checksum. Reuse is per owner, so a false claim misleads
                # only the one who made it.
                sha256 = claimed.lower() if _is_sha256(claimed) else None
                return ObjectRead(data, size, sha256)
            last = size - 1 if prefix is None else min(size, 2 * len(data)) - 1
            extra: dict[str, str] = {"IfMatch": etag} if etag else {}
            more = self._get(event, Range=f"bytes={len(data)}-{last}", **extra)
            if not str(more.get("ContentRange", "")).startswith(f"bytes {len(data)}-"):
                more["Body"].close()
                raise TransientError("get_object: the range asked for did not come back")
            chunk = self._read_body(more, last + 1 - len(data) + 1)
            if not chunk:
                raise TransientError("get_object: the range came back empty")
            data += chunk
        if len(data) > cap:
            raise PermanentError("too_large", f"the object is more than the {cap} byte cap")
        return ObjectRead(data, len(data), content_sha256(data))

    def _get(self, event: ObjectCreated, **options: str) -> dict[str, Any]:
        """One GetObject, its failures sorted into permanent and transient."""
        try:
            return self._s3.get_object(Bucket=event.bucket, Key=event.key, **options)
        except ClientError as exc:
            code = error_code(exc)
            if code in _GONE:
                raise PermanentError("object_missing", "the object no longer exists") from exc
            if code in _DENIED:
                raise PermanentError("access_denied", "the processor may not read the object"
                                     ) from exc
            raise TransientError(f"get_object: {code or exc}") from exc
        except BotoCoreError as exc:
            raise TransientError(f"get_object: {exc}") from exc

    @staticmethod
    def _read_body(response: dict[str, Any], limit: int) -> bytes:
        """At most `limit` bytes of a response's body (one past the caller's cap: a wrong
        Content-Length cannot smuggle more in)."""
        body = response["Body"]
        try:
            return body.read(limit)
        except (BotoCoreError, OSError) as exc:
            raise TransientError(f"reading the object: {exc}") from exc
        finally:
            body.close()

    def _run_model(self, items: list[Fetched]) -> list[Outcome]:
        """One model call for the items; an outcome for each, in order."""
        if not items:
            return []
        start = time.perf_counter()
        try:
            with self._stage_times.measure("inference", len(items)):
                predictions = self._label([item.pixels for item in items])
        except Exception:
            # The model failing is not the images' fault: retry them later.
            logger.exception("classifying a batch of %d failed; leaving it for redelivery",
                             len(items))
            return [Retry("the model failed on this batch", item.record) for item in items]
        per_image = _ms_since(start) / len(items)
        outcomes: list[Outcome] = []
        for item, prediction in zip(items, predictions, strict=True):
            timings = {**item.record.timings, "inference_ms": per_image}
            outcomes.append(Done(item.record.done(
                prediction.labels, self.classifier.name, self.classifier.version,
                categories=tuple(prediction.categories), words=prediction.words,
                timings=timings)))
        return outcomes

    def _label(self, pixels: list[Any]) -> list[Prediction]:
        """The labels, categories and search words of each image.

        The real model (processor.model.Classifier) has `label_images`; a model that only
        classifies (the tests' fakes) gets flat labels, found by their own names.
        """
        settings = self.settings
        label_images = getattr(self.classifier, "label_images", None)
        if label_images is not None:
            predictions: list[Prediction] = label_images(
                pixels, settings.top_k, min_score=settings.min_score,
                category_top_k=settings.category_top_k,
                category_min_score=settings.category_min_score)
            return predictions
        flat = []
        for top in self.classifier.classify(pixels, top_k=settings.top_k):
            labels = [label for label in top if label.score >= settings.min_score]
            flat.append(Prediction(labels, [], search_words(None, labels, [])))
        return flat


@dataclass(frozen=True)
class ObjectRead:
    """What was read of an object: all of it, or the head that holds what the model needs."""

    data: bytes
    size: int  # the whole object's
    sha256: str | None  # of the whole object, where known


def _object_size(response: dict[str, Any]) -> int:
    """The whole object's size from a ranged GET's Content-Range (``bytes 0-9/1234``)."""
    content_range = str(response.get("ContentRange") or "")
    total = content_range.rpartition("/")[2]
    if total.isdigit():
        return int(total)
    return int(response.get("ContentLength", 0))  # a 200 answer: the whole object


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)


def _receive_count(message: dict[str, Any]) -> int:
    try:
        return int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1))
    except (TypeError, ValueError):
        return 1


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def min_decode_side(input_size: int) -> int:
    """The short side to decode an image to for a model of this input size."""
    # The model crops the central 224/256 of the short side; decode at least that much.
    return -(-input_size * 256 // 224)
