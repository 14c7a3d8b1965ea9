"""The one table of a result record's fields, from which its three shapes are derived.

Each row names a field of ResultRecord, the attribute the table keeps it in, where the results
API shows it and how its value converts. The DynamoDB attributes (`to_attributes`), the JSON
(`to_json`) and the reading back (`from_attributes`) all walk the rows, so a new field is one
row here, and its key in ResultJson when the API shows it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypedDict, cast

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from imagepipe.core.records.parts import Category, ImageFacts, Label, Status, WebhookDelivery

if TYPE_CHECKING:
    from imagepipe.core.records.record import ResultRecord


class LabelJson(TypedDict):
    label: str
    score: float
    class_id: int
    parents: list[str]


class CategoryJson(TypedDict):
    label: str
    score: float


class ErrorJson(TypedDict):
    code: str
    message: str


class ResultJson(TypedDict):
    """The wire shape of GET /api/results/<image_id>."""

    image_id: str
    status: Status
    labels: list[LabelJson]
    categories: list[CategoryJson]
    model: dict[str, str] | None
    image: dict[str, Any]
    error: ErrorJson | None
    created_at: str
    processed_at: str | None
    timings: dict[str, float]
    source: str
    sha256: str | None
    duplicate_of: str | None
    reused: bool
    owner: str | None
    webhook: dict[str, Any] | None


# The table's one TTL attribute: results that expire by setting, and the daily quota counters.
TTL_ATTRIBUTE = "expires_at"
WEBHOOK_ATTRIBUTE = "webhook"


def decimal(value: float) -> Decimal:
    """A number as the table keeps it."""
    # DynamoDB numbers are decimals; six places are plenty for scores and milliseconds.
    return Decimal(str(round(float(value), 6)))


@dataclass(frozen=True)
class Kind:
    """How one kind of value converts: to a plain attribute value, back, and to JSON."""

    to_attribute: Callable[[Any], Any]
    from_attribute: Callable[[Any], Any]
    to_json: Callable[[Any], Any]


def _same(value: Any) -> Any:
    return value


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


TEXT = Kind(_same, _same, _same)
FLAG = Kind(_same, bool, _same)
INTEGER = Kind(_same, _int_or_none, _same)
NUMBER = Kind(decimal, float, _same)


def list_of(item: Kind) -> Kind:
    """A tuple kept as a list."""
    return Kind(lambda value: [item.to_attribute(x) for x in value],
                lambda raw: tuple(item.from_attribute(x) for x in raw or ()),
                lambda value: [item.to_json(x) for x in value])


def mapping_of(item: Kind) -> Kind:
    """A dict of names to values of one kind, kept as a map."""
    return Kind(lambda value: {k: item.to_attribute(v) for k, v in value.items()},
                lambda raw: {k: item.from_attribute(v) for k, v in (raw or {}).items()},
                lambda value: {k: item.to_json(v) for k, v in value.items()})


def optional(kind: Kind) -> Kind:
    """A value that may be None, kept as no attribute then."""
    return Kind(lambda value: None if value is None else kind.to_attribute(value),
                lambda raw: None if raw is None else kind.from_attribute(raw),
                lambda value: None if value is None else kind.to_json(value))


def dataclass_of(cls: Callable[..., Any], fields: dict[str, Kind]) -> Kind:
    """A dataclass kept as a map with an entry per field."""
    return Kind(
        lambda value: {name: kind.to_attribute(getattr(value, name))
                       for name, kind in fields.items()},
        lambda raw: cls(**{name: kind.from_attribute((raw or {}).get(name))
                           for name, kind in fields.items()}),
        lambda value: {name: kind.to_json(getattr(value, name)) for name, kind in fields.items()},
    )


@dataclass(frozen=True)
class Field:
    """One field of ResultRecord: where the table and the API keep it, and how it converts."""

    name: str
    # The table's attribute; None for the image ID, which is the item's key.
    attribute: str | None
    # The JSON key; "object.key" nests it, "object.*" spreads a map into the object; None: unseen.
    json: str | None
    kind: Kind = TEXT
    # The value a record read back gets when its item lacks the attribute.
    missing: Any = None
    # An index key: left out of the item when unset or empty, which key attributes cannot be.
    sparse: bool = False
    # What the JSON shows when the value is None.
    json_unset: Any = None
    # The JSON object this sits in is null when this is unset.
    json_gate: bool = False


# In the order of the JSON's keys.
FIELDS: tuple[Field, ...] = (
    Field("image_id", None, "image_id"),
    Field("status", "status", "status", missing="pending"),
    Field("labels", "labels", "labels",
          list_of(dataclass_of(Label, {"label": TEXT, "score": NUMBER, "class_id": INTEGER,
                                       "parents": list_of(TEXT)}))),
    # The labels' parents that score well: the words people search for, with honest scores.
    Field("categories", "categories", "categories",
          list_of(dataclass_of(Category, {"label": TEXT, "score": NUMBER}))),
    # Every word the result answers to in a search, with its score: what `search` wrote for
    # it, so that the next outcome of the image knows which word items to delete.
    Field("words", "search_words", None, mapping_of(NUMBER)),
    Field("model_name", "model_name", "model.name", json_gate=True),
    Field("model_version", "model_version", "model.version", json_unset=""),
    Field("bucket", "bucket", "image.bucket", missing=""),
    Field("key", "object_key", "image.key", missing=""),
    Field("image", "image", "image.*",
          dataclass_of(ImageFacts, {"format": TEXT, "width": INTEGER, "height": INTEGER,
                                    "bytes": INTEGER})),
    Field("error_code", "error_code", "error.code", json_gate=True),
    Field("error_message", "error_message", "error.message", json_unset=""),
    Field("created_at", "created_at", "created_at", missing=""),
    Field("processed_at", "processed_at", "processed_at"),
    Field("timings", "timings", "timings", mapping_of(NUMBER)),
    Field("etag", "etag", None),
    Field("source", "source", "source", missing="bucket"),
    Field("event_time", "event_time", None),
    Field("sha256", "sha256", "sha256", sparse=True),
    Field("duplicate_of", "duplicate_of", "duplicate_of"),
    Field("reused", "reused", "reused", FLAG),
    # The Cognito `sub` of the user the image belongs to; None: no user's (admins only).
    Field("owner", "owner", "owner", sparse=True),
    # When the table's TTL removes the record (epoch seconds); None: kept.
    Field("expires_at", TTL_ATTRIBUTE, None, INTEGER, sparse=True),
    # The webhook deliverer's account of the result's event (it alone writes it); None: none.
    Field("webhook", WEBHOOK_ATTRIBUTE, "webhook",
          optional(dataclass_of(WebhookDelivery, {"attempts": INTEGER, "last_status": INTEGER,
                                                  "delivered_at": TEXT})), sparse=True),
)


def to_json(record: ResultRecord) -> ResultJson:
    """The record as the results API returns it."""
    closed = {row.json.partition(".")[0] for row in FIELDS
              if row.json and row.json_gate and not getattr(record, row.name)}
    body: dict[str, Any] = {}
    for row in FIELDS:
        if row.json is None:
            continue
        outer, _, inner = row.json.partition(".")
        if outer in closed:
            body[outer] = None
            continue
        value = getattr(record, row.name)
        shown = row.json_unset if value is None else row.kind.to_json(value)
        if not inner:
            body[outer] = shown
        elif inner == "*":
            body.setdefault(outer, {}).update(shown)
        else:
            body.setdefault(outer, {})[inner] = shown
    return cast(ResultJson, body)


def to_attributes(record: ResultRecord) -> dict[str, Any]:
    """The record's fields as plain attribute values (numbers as Decimal), without the key."""
    attrs: dict[str, Any] = {}
    for row in FIELDS:
        value = getattr(record, row.name)
        if row.attribute is None or (row.sparse and not value):
            continue
        attrs[row.attribute] = None if value is None else row.kind.to_attribute(value)
    return attrs


def from_attributes(attrs: dict[str, Any]) -> dict[str, Any]:
    """The record fields, but the key, that these attribute values hold, by field name."""
    return {row.name: row.kind.from_attribute(attrs.get(row.attribute, row.missing))
            for row in FIELDS if row.attribute is not None}


_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def to_dynamo(value: Any) -> dict[str, Any]:
    """A plain attribute value as DynamoDB's typed value."""
    return _serializer.serialize(value)


def from_dynamo(item: dict[str, Any]) -> dict[str, Any]:
    """An item's typed values as plain attribute values."""
    return {name: _deserializer.deserialize(value) for name, value in item.items()}
