"""Logging setup for entry points (library modules only ever call ``logging.getLogger(__name__)``)."""

from __future__ import annotations

import logging
import os


def configure(level: str | None = None) -> None:
    """One console handler with timestamps; noisy third-party loggers turned down."""
    level = (level or os.environ.get("IMAGENET_SPARK_LOG_LEVEL", "INFO")).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        force=True)
    for noisy in ("py4j", "petastorm", "pyarrow", "urllib3", "absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
