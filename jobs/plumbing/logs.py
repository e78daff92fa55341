"""One logging setup for every entry point: timestamps, stage loggers, quiet third parties."""

from __future__ import annotations

import logging

_NOISY = ("py4j", "ray", "urllib3", "filelock", "transformers", "sentence_transformers", "httpx")


class _Py4JRootRetry(logging.Filter):
    """Drops py4j's retry notice, which it logs on the root logger (so `_NOISY` misses it).

    py4j reconnects when the JVM has closed an idle pooled connection and logs a
    full traceback at INFO although the retried command succeeds; errors it logs
    at WARNING and above still pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from_py4j = record.name == "root" and "py4j" in record.pathname
        return not (from_py4j and record.levelno < logging.WARNING)


def setup(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Py4JRootRetry())
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
