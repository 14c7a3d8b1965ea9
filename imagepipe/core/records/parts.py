"""The parts a result record is made of: its status, its labels and the facts of its image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["pending", "done", "failed"]
STATUSES: tuple[Status, ...] = ("pending", "done", "failed")


@dataclass(frozen=True)
class Label:
    label: str
    score: float
    class_id: int


@dataclass(frozen=True)
class ImageFacts:
    """What the processor learned about the object and the decoded image."""

    format: str | None = None
    width: int | None = None
    height: int | None = None
    bytes: int | None = None


@dataclass(frozen=True)
class WebhookDelivery:
    """How the webhook delivery of a result's event went so far."""

    attempts: int = 0
    # The receiver's HTTP status at the last attempt; None: no answer (refused, timed out).
    last_status: int | None = None
    delivered_at: str | None = None
