"""The result record and its DynamoDB table: the one definition all services share.

`record` holds the value, `codec` the one table of its fields (its attributes, its JSON and
the reading back), `indexes` the table's index schema, `cursors` the pagination cursors,
`writes` the never-backwards writes and `store` the ResultStore that runs them all.
"""

from __future__ import annotations

from imagepipe.core.records.codec import ErrorJson, LabelJson, ResultJson
from imagepipe.core.records.cursors import InvalidCursor
from imagepipe.core.records.indexes import FEED_ALL, INDEXES, Index, label_key, model_key
from imagepipe.core.records.parts import (
    STATUSES,
    Category,
    ImageFacts,
    Label,
    Status,
    WebhookDelivery,
)
from imagepipe.core.records.record import ResultRecord
from imagepipe.core.records.store import (
    BATCH_GET_MAX,
    UNREAD,
    Page,
    ResultStore,
    StoreError,
    Unread,
)

__all__ = [
    "BATCH_GET_MAX",
    "FEED_ALL",
    "INDEXES",
    "STATUSES",
    "UNREAD",
    "Category",
    "ErrorJson",
    "ImageFacts",
    "Index",
    "InvalidCursor",
    "Label",
    "LabelJson",
    "Page",
    "ResultJson",
    "ResultRecord",
    "ResultStore",
    "Status",
    "StoreError",
    "Unread",
    "WebhookDelivery",
    "label_key",
    "model_key",
]
