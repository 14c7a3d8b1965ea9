"""Logging set-up for the entry points (services and CLI); modules only get loggers."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str = "INFO", name: str = "imagepipe") -> None:
    """One handler on stderr with time, process name and logger; quiet the chatty libraries."""
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "werkzeug", "absl", "h5py"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
