"""The parts a result record is made of: its status, its labels and the facts of its image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["pending", "done", "failed"]
STATUSES: tuple[Status, ...] = ("pending", "done", "failed")


@dataclass(frozen=True)
class Label:
    """One of the model's classes, with its score and its parents in the hierarchy, nearest
    first (empty for a model without one)."""

    label: str
    score: float
    class_id: int
    parents: tuple[str, ...] = ()


@dataclass(frozen=True)
class Category:
    """A node above the labels: its score is the sum of its classes' probabilities."""

    label: str
    score: float


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
