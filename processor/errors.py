"""What the processor does with a failure: record it (permanent) or retry it (transient)."""

from __future__ import annotations


class ProcessingError(Exception):
    """Base of the processor's failures; the subclass says what to do."""


class PermanentError(ProcessingError):
    """Retrying cannot help: write a `failed` result with this reason code and acknowledge."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TransientError(ProcessingError):
    """Retrying may help: leave the message for redelivery."""
