"""What the servers tests start on loopback (sshd, moto_server) have in common."""

from __future__ import annotations

import socket
from pathlib import Path


def free_port() -> int:
    """A port free on 127.0.0.1 right now (a server may still lose it in a race: retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(log: Path, offset: int = 0) -> str:
    """The end of what a server logged since ``offset``, for error messages."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")[-4000:]
    except OSError:
        return ""
