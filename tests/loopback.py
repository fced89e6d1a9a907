"""What the servers tests start on loopback (sshd, moto_server) have in common."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


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


def on_a_port(what: str, port: int, run: Callable[[int], bool], log: Path) -> int:
    """Run a server (``run(port)``: False when it lost a race for the port) on ``port``
    when it has one (a restart keeps it), else on one of up to five free ports; return
    the port it listens on."""
    fixed = port != 0
    for _ in range(1 if fixed else 5):
        if not fixed:
            port = free_port()
        if run(port):
            return port
    raise RuntimeError(f"{what}: could not bind 127.0.0.1:{port}\n{log_tail(log)}")


def spawn(
    what: str,
    argv: list[str],
    log: Path,
    ready: Callable[[int], bool],
    *,
    started: Callable[[subprocess.Popen[bytes] | None], None],
    stop: Callable[[], None],
    timeout: float,
    in_use: str = "in use",
    poll: float = 0.05,
    **popen: Any,
) -> subprocess.Popen[bytes] | None:
    """Run a server once in its own session, its output appended to ``log``, and wait
    until ``ready(offset)`` (``offset``: where in the log its output starts). The
    process is handed to ``started`` at once, and None once it exited. None when it
    exited with ``in_use`` in its log (it lost a race for its port: try another); it
    raises when the server exited otherwise, or is not ready within ``timeout`` (then
    ``stop`` is called)."""
    offset = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, **popen
        )
    started(proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            started(None)
            new = log_tail(log, offset)
            if in_use in new:
                return None
            raise RuntimeError(f"{what} exited with {proc.returncode}\n{new}")
        if ready(offset):
            return proc
        time.sleep(poll)
    stop()
    raise RuntimeError(f"{what}: not ready after {timeout}s\n{log_tail(log, offset)}")


def accepts(port: int, timeout: float) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
        return True
    except OSError:
        return False


def terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """Terminate a process we started; kill it if it does not go within a few seconds."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(timeout=10)
