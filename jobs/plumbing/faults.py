"""Failpoints: kill this process at a named point, so tests can put a `kill -9` exactly
between two commits instead of hoping a timer lands there.

`KAR_FAULT=<name>` in the environment makes `point(<name>)` SIGKILL the process: no
cleanup runs, as with an operator's or the OOM killer's `kill -9`. Unset, a point costs
one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "KAR_FAULT"


def point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
