"""One logging setup for every entry point: timestamps, stage loggers, quiet third parties."""

from __future__ import annotations

import logging

_NOISY = ("py4j", "ray", "urllib3", "filelock", "transformers", "sentence_transformers", "httpx")


def setup(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
