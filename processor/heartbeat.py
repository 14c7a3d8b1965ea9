"""The processor's heartbeat: a small item in the results table, rewritten every few seconds."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError

from imagepipe.core.heartbeats import ProcessorBeat, processor_id, write_beat
from imagepipe.core.records import StoreError
from imagepipe.core.timestamps import utc_now

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = 15.0


class Heartbeat:
    """Tells `imagepipe status` this processor is alive; writes at most once per interval."""

    def __init__(
        self,
        dynamodb: Any,
        table: str,
        model: str,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = dynamodb
        self._table = table
        self._model = model
        self._interval = interval
        self._clock = clock
        self._pid = os.getpid()
        self._id = processor_id(self._pid)
        self._started_at = utc_now()
        self._last: float | None = None

    def beat(self, batches: int, images: int) -> bool:
        """Write the heartbeat unless one was written within the interval; True if written."""
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            return False
        self._last = now
        beat = ProcessorBeat(
            processor_id=self._id, host=socket.gethostname(), pid=self._pid, model=self._model,
            started_at=self._started_at, last_seen=utc_now(), batches=batches, images=images,
        )
        try:
            write_beat(self._db, self._table, beat)
        except (StoreError, BotoCoreError) as exc:
            # A missed beat only makes the processor look idle for a while; never stop for it.
            logger.warning("heartbeat not written: %s", exc)
            return False
        return True
