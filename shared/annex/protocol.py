"""The external-special-remote side of our remotes, built on annexremote.

annexremote parses requests and maps ``RemoteError`` to replies; this fixes
its known pitfalls (protocol notes, section 2.2): VERSION 2, EXTENSIONS, GETORDERED,
AVAILABILITY UNAVAILABLE, a private utf-8/surrogateescape stdout, timed PROGRESS,
and bugs that fail one key instead of killing the process.

Escaping: in every outgoing message, CR and LF become the two characters
``\\r`` / ``\\n`` (backslashes untouched, so it is one-way): a raw newline
anywhere would desynchronise the protocol.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import traceback
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, BinaryIO, Literal

import annexremote

RemoteError = annexremote.RemoteError
UnsupportedRequest = annexremote.UnsupportedRequest
Availability = Literal["global", "local", "unavailable"]

SUPPORTED_EXTENSIONS = frozenset({"INFO", "GETGITREMOTENAME", "UNAVAILABLERESPONSE"})
"""Extensions we accept when offered; git-annex rejects replies naming others."""

SHORT_TRANSFER = 256 * 1024
"""Transfers this short get no PROGRESS timer: at 1 MiB/s they are over within the
timer's half-second interval anyway."""


def escape(text: str) -> str:
    """Make ``text`` safe inside one protocol line."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def describe(exc: BaseException) -> str:
    """``ExcType: message`` so git-annex shows what went wrong in one line."""
    msg = str(exc)
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def claim_stdout() -> BinaryIO:
    """Move the protocol to a private, non-inheritable copy of fd 1.

    fd 1 (inherited by children) and ``sys.stdout`` then go to stderr, so stray
    output cannot corrupt the protocol.
    """
    sys.stdout.flush()
    private = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(private, "wb")


class _Wrapper(io.TextIOWrapper):
    """A text wrapper that never closes the caller's binary stream when collected."""

    def __del__(self) -> None:
        pass


class AnnexProtocol(annexremote.Protocol):  # type: ignore[misc]
    """annexremote's request parser with our replies where it falls short."""

    def __init__(self, remote: Remote) -> None:
        super().__init__(remote)
        self.version = "VERSION 2"
        self.offered: frozenset[str] = frozenset()

    def command(self, line: str) -> str | list[str] | None:
        """Like annexremote's, without ``strip()``: trailing spaces can belong to a path."""
        command, sep, param = line.partition(" ")
        method = self.lookupMethod(command) or self.do_UNKNOWN
        reply = method(param) if sep else method()
        if method != self.do_EXPORT:
            self.exporting = False
        return reply  # type: ignore[no-any-return]

    def do_EXTENSIONS(self, param: str = "") -> str:
        offered = param.split()
        self.offered = frozenset(offered)
        self.extensions = [e for e in offered if e in SUPPORTED_EXTENSIONS]
        return " ".join(["EXTENSIONS", *self.extensions])

    def do_GETORDERED(self) -> str:
        return "ORDERED" if getattr(self.remote, "ordered", False) else "UNORDERED"

    def do_GETAVAILABILITY(self) -> str:
        value = self.remote.getavailability()
        if value == "unavailable" and "UNAVAILABLERESPONSE" not in self.offered:
            value = "global"  # older git-annex would reject UNAVAILABLE
        if value not in ("global", "local", "unavailable"):
            raise ValueError(f"availability must be global, local or unavailable: {value!r}")
        return f"AVAILABILITY {str(value).upper()}"

    def do_LISTCONFIGS(self) -> list[str]:
        """One message per config, so each is escaped on its own."""
        reply = []
        for name, description in sorted(self.remote.listconfigs().items()):
            if not name or len(str(name).split()) != 1:
                raise ValueError(f"config name must be one word: {name!r}")
            reply.append(f"CONFIG {name} {description}")
        return [*reply, "CONFIGEND"]

    def do_GETINFO(self) -> list[str]:
        reply = []
        for field, value in sorted(self.remote.info.items()):
            reply += [f"INFOFIELD {field}", f"INFOVALUE {value}"]
        return [*reply, "INFOEND"]

    def _per_key(self, failure: str, handler: Callable[..., Any], *args: str) -> str:
        """A bug fails this key only; protocol errors (out of step) stay fatal."""
        try:
            return str(handler(*args))
        except annexremote.ProtocolError:
            raise
        except Exception as exc:
            self.remote.annex.debug_traceback(exc)
            return f"{failure} {describe(exc)}".rstrip()

    def do_TRANSFER(self, param: str) -> str:
        parts = param.split(" ", 2)
        if len(parts) != 3:
            raise SyntaxError(f"expected TRANSFER Method Key File, got {param!r}")
        method, key, _ = parts
        return self._per_key(f"TRANSFER-FAILURE {method} {key}", super().do_TRANSFER, param)

    def do_CHECKPRESENT(self, key: str) -> str:
        return self._per_key(f"CHECKPRESENT-UNKNOWN {key}", super().do_CHECKPRESENT, key)

    def do_REMOVE(self, key: str) -> str:
        return self._per_key(f"REMOVE-FAILURE {key}", super().do_REMOVE, key)

    def do_WHEREIS(self, key: str) -> str:
        # WHEREIS-FAILURE carries no message; the traceback went out as DEBUG.
        reply = self._per_key("WHEREIS-FAILURE", super().do_WHEREIS, key)
        return reply if reply.startswith("WHEREIS-SUCCESS") else "WHEREIS-FAILURE"


class ProgressMeter:
    """Absolute byte count for the current transfer, sent by a timer thread.

    ``meter(delta)`` and ``meter.set(n)`` only update a number, so callers may
    use them per block from any thread; while the meter is entered, a daemon
    thread sends ``PROGRESS`` at most every ``interval`` seconds if it changed.
    """

    def __init__(
        self, master: AnnexMaster, start: int, interval: float, timer: bool = True
    ) -> None:
        """``timer=False``: no thread, only the PROGRESS sent on exit (a transfer too
        short for the timer to matter, where starting and joining a thread per file
        costs more than the transfer's own work)."""
        self._master = master
        self._lock = threading.Lock()
        self._value = self._sent = max(0, start)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = (
            threading.Thread(target=self._run, name="annexproto-progress", daemon=True)
            if timer
            else None
        )

    def __call__(self, delta: int) -> None:
        """Add ``delta`` bytes; negative rewinds (e.g. restarting on another node)."""
        with self._lock:
            self._value = max(0, self._value + delta)

    def set(self, absolute: int) -> None:
        with self._lock:
            self._value = max(0, absolute)

    def flush(self, *, now: bool = True) -> None:
        """Send PROGRESS if the value changed since the last one sent; ``now=False``:
        it leaves with the next message flushed (the reply that follows at once)."""
        with self._lock:
            if self._value != self._sent:
                self._sent = self._value
                self._master._send_lines(f"PROGRESS {self._value}", flush=now)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()
            self._master.flush()  # DEBUG lines waiting (see AnnexMaster.debug)

    def __enter__(self) -> ProgressMeter:
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Join the timer before the final flush so nothing follows the reply."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.flush(now=False)


class AnnexMaster(annexremote.Master):  # type: ignore[misc]
    """annexremote's Master writing one escaped utf-8 line per message, thread-safely."""

    progress_interval: float = 0.5

    def __init__(self, output: BinaryIO) -> None:
        super().__init__(_Wrapper(output, encoding="utf-8", errors="surrogateescape", newline="\n"))
        self._write_lock = threading.Lock()
        self.input: io.TextIOWrapper | None = None

    @property
    def extensions(self) -> frozenset[str]:
        """Everything git-annex offered (we only reply with SUPPORTED_EXTENSIONS)."""
        protocol: AnnexProtocol | None = getattr(self, "protocol", None)
        return protocol.offered if protocol else frozenset()

    def LinkRemote(self, remote: Remote) -> None:
        super().LinkRemote(remote)
        self.protocol = AnnexProtocol(remote)

    def _send(self, *args: object) -> None:
        self._send_lines(" ".join(map(str, args)))

    def _send_lines(self, *messages: str, flush: bool = True) -> None:
        with self._write_lock:
            for message in messages:
                self.output.write(escape(message) + "\n")
            if flush:
                self.output.flush()

    def flush(self) -> None:
        with self._write_lock:
            self.output.flush()

    def debug(self, *args: object) -> None:
        """DEBUG, left in the buffer until the next message that is flushed: the reply
        to the request being served, a request of ours, or a timed PROGRESS (at most
        ``progress_interval`` later during a transfer). A flush per line is a write,
        and a wake-up of git-annex, per file for nothing when --debug is off."""
        self._send_lines(" ".join(["DEBUG", *map(str, args)]), flush=False)

    def say(self, message: str) -> None:
        """Show ``message`` to the user if git-annex can (INFO), else log it (DEBUG)."""
        self._send("INFO" if "INFO" in self.extensions else "DEBUG", message)

    def debug_traceback(self, exc: BaseException) -> None:
        lines = traceback.format_exception(exc)
        self._send_lines(*(f"DEBUG {line}" for chunk in lines for line in chunk.splitlines()))

    def progress_meter(
        self, start: int = 0, *, interval: float | None = None, size: int | None = None
    ) -> ProgressMeter:
        """``with master.progress_meter() as add:`` reports a transfer on a timer.

        The last PROGRESS is sent on exit, before the handler returns its reply.
        ``size``: the transfer's length where known; one of at most ``SHORT_TRANSFER``
        bytes gets no timer (it takes a few round trips, and starting and joining a
        thread per file costs about as much as one).
        """
        return ProgressMeter(
            self,
            start,
            self.progress_interval if interval is None else interval,
            timer=size is None or size > SHORT_TRANSFER,
        )

    def Listen(self, stream: BinaryIO) -> int:
        """Serve requests until EOF (0) or a fatal error (1, after DEBUG+ERROR)."""
        if not hasattr(self, "protocol"):
            raise annexremote.NotLinkedError("Please execute LinkRemote(remote) first.")
        self.input = _Wrapper(stream, encoding="utf-8", errors="surrogateescape", newline="\n")
        try:
            self._send(self.protocol.version)
            while line := self.input.readline():
                try:
                    reply = self.protocol.command(line.removesuffix("\n"))
                except annexremote.UnsupportedRequest:
                    reply = "UNSUPPORTED-REQUEST"
                if reply:
                    self._send_lines(*([reply] if isinstance(reply, str) else reply))
        except Exception as exc:
            self.fatal(exc)
            return 1
        return 0

    def fatal(self, exc: BaseException) -> None:
        """Tell git-annex why we stop; the caller then exits with status 1."""
        try:
            self.debug_traceback(exc)
            self._send("ERROR", describe(exc))
        except (OSError, ValueError):
            pass  # git-annex is gone; nobody to tell.

    def close(self) -> None:
        """Flush and let go of the caller's streams without closing them."""
        for stream in (self.output, self.input):
            try:
                if stream is not None and not stream.closed:
                    stream.flush()
                    stream.detach()
            except (OSError, ValueError):
                pass  # already detached, or the pipe is gone


class Remote(annexremote.SpecialRemote):  # type: ignore[misc]
    """Base class of our remotes.

    - ``checkpresent(key) -> bool``: True present, False absent; raise
      ``RemoteError`` when presence cannot be established (node down, timeout):
      that is CHECKPRESENT-UNKNOWN, never a guess.
    - ``configs`` must list every custom initremote parameter (name ->
      description): LISTCONFIGS is always answered, and git-annex then rejects
      any parameter not listed.
    - ``ordered``: RETRIEVE writes the file sequentially (lets a git-annex
      proxy stream it); set False otherwise.
    - ``RemoteError`` gives the request's FAILURE reply with its message; any
      other exception in TRANSFER/CHECKPRESENT/REMOVE/WHEREIS does too, with
      the traceback as DEBUG; elsewhere it ends the process (ERROR, status 1).
    """

    ordered: bool = True
    annex: AnnexMaster
    configs: dict[str, str]
    info: dict[str, str]

    def __init__(self, annex: AnnexMaster) -> None:
        super().__init__(annex)

    @abstractmethod
    def initremote(self) -> None: ...

    @abstractmethod
    def prepare(self) -> None: ...

    @abstractmethod
    def transfer_store(self, key: str, local_file: str) -> None: ...

    @abstractmethod
    def transfer_retrieve(self, key: str, local_file: str) -> None: ...

    @abstractmethod
    def checkpresent(self, key: str) -> bool: ...

    @abstractmethod
    def remove(self, key: str) -> None: ...

    def getcost(self) -> int:
        raise UnsupportedRequest()

    def getavailability(self) -> Availability:
        raise UnsupportedRequest()

    def whereis(self, key: str) -> str:
        raise UnsupportedRequest()

    def close(self) -> None:
        """Release connections; ``run`` calls it once the conversation is over."""


def run(
    factory: Callable[[AnnexMaster], Remote],
    *,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
) -> int:
    """Serve one git-annex conversation; returns the process exit status.

    With ``stdout=None`` (real use) fd 1 is claimed for the protocol first.
    """
    master = AnnexMaster(claim_stdout() if stdout is None else stdout)
    remote: Remote | None = None
    try:
        try:
            remote = factory(master)
            master.LinkRemote(remote)
        except Exception as exc:
            traceback.print_exc()  # before VERSION only ERROR is safe to send
            master._send("ERROR", describe(exc))
            return 1
        return master.Listen(sys.stdin.buffer if stdin is None else stdin)
    except SystemExit as exc:  # annexremote's Remote.error() on git-annex's ERROR
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        if remote is not None:
            remote.close()
        master.close()
