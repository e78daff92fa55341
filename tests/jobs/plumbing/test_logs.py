"""Logging setup: py4j's root-logger retry notice is dropped, everything else passes."""

from __future__ import annotations

import logging

import pytest

from jobs.plumbing import logs


def _record(level: int, pathname: str) -> logging.LogRecord:
    message = "Exception while sending command."
    return logging.LogRecord("root", level, pathname, 1, message, None, None)


@pytest.fixture
def root_handler():
    saved = logging.getLogger().handlers[:]
    logs.setup("INFO")
    yield logging.getLogger().handlers[0]
    logging.getLogger().handlers[:] = saved


def test_py4j_retry_notice_on_the_root_logger_is_dropped(root_handler) -> None:
    py4j = "/venv/lib/python3.11/site-packages/py4j/java_gateway.py"
    assert not root_handler.filter(_record(logging.INFO, py4j))
    assert root_handler.filter(_record(logging.ERROR, py4j))  # real failures still show
    assert root_handler.filter(_record(logging.INFO, "/work/jobs/prepare.py"))
