"""Servers the suite starts on loopback: free ports for them, and stopping them whole."""

from __future__ import annotations

import os
import signal
import socket
import subprocess


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 now (held together, so no two are the same)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def stop_group(proc: subprocess.Popen, wait_s: float = 10) -> None:
    """End a server started with start_new_session=True, and every process it started:
    SIGTERM to its process group, SIGKILL after `wait_s` (Ray drains a node for up to 30 s
    on SIGTERM; nothing here needs draining)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
