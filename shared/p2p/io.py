"""Blocking drivers for the P2P engine: a client session and a server loop over a byte stream.

The stream is anything with ``recv``/``sendall``/``close`` (a paramiko channel,
a subprocess's pipes, a socket, an in-memory pair in tests); the driver owns
the blocking and leaves timeouts to the stream. Payloads are streamed in
blocks, never held whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from shared.annex.keys import Key
from shared.errors import ClusterError, wrong_content
from shared.p2p import messages as m
from shared.p2p.engine import (
    BadRequest,
    Closed,
    Connection,
    DataChunk,
    LocalProtocolError,
    PeerProtocolError,
    Role,
    State,
    _NeedData,
)
from shared.p2p.messages import MAX_VERSION, Message
from shared.streams import Readable, Writable

BLOCK = 256 * 1024  # payload bytes per send; bounded whatever the object size
RECV = 256 * 1024

READONLY_ERROR = "this repository is read-only; write access denied"
APPENDONLY_ERROR = "this repository is append-only; removal denied"


class Stream(Protocol):
    def recv(self, n: int, /) -> bytes: ...  # b"" at end of stream
    def sendall(self, data: bytes, /) -> object: ...
    def close(self) -> object: ...


class PeerRefused(ClusterError):
    """The server answered a request with ERROR; the session is still usable."""


class ConnectionLost(ClusterError):
    """The stream ended or broke while a request was in flight."""


Progress = Callable[[int], None]


class _Driver:
    def __init__(self, stream: Stream, role: Role, max_version: int) -> None:
        self.stream = stream
        self.conn = Connection(role, max_version)
        self._eof = False

    def _send(self, msg: Message) -> None:
        self._write(self.conn.send(msg))

    def _write(self, data: bytes) -> None:
        try:
            self.stream.sendall(data)
        except (OSError, EOFError) as e:
            raise ConnectionLost(f"sending failed: {e}") from e

    def _event(self) -> Message | DataChunk | BadRequest | Closed:
        while True:
            try:
                ev = self.conn.next_event()
            except PeerProtocolError as e:
                if self._eof:  # the stream ended inside a DATA payload or a line
                    raise ConnectionLost(str(e)) from e
                raise
            if not isinstance(ev, _NeedData):
                return ev
            try:
                data = self.stream.recv(RECV)
            except TimeoutError as e:
                raise ConnectionLost("the peer stopped answering (timed out)") from e
            except (OSError, EOFError) as e:
                raise ConnectionLost(f"receiving failed: {e}") from e
            self._eof = not data
            self.conn.receive_data(data)

    def _send_payload(self, source: Readable, length: int, progress: Progress | None) -> None:
        """Send ``length`` bytes of ``source`` after a DATA line, and only if ``source``
        has exactly that many: the last block is held back until the end of ``source``
        is seen, because a peer that has every byte may commit them (git-annex-shell
        does, without waiting for VALID, when the connection then drops).

        A source that is short or long leaves no way out but to close the connection,
        as the spec says; that is what the caller must do after this raises.
        """
        left, held = length, b""
        while left:
            block = source.read(min(BLOCK, left))
            if not block:
                raise ClusterError(f"the data ended {left} bytes short of {length}")
            left -= len(block)
            if held:
                self._send_block(held, progress)
            held = block
        if source.read(1):
            raise ClusterError(f"the data is longer than the {length} bytes announced")
        if held:
            self._send_block(held, progress)

    def _send_block(self, block: bytes, progress: Progress | None) -> None:
        self._write(self.conn.send_data(block))
        if progress is not None:
            progress(len(block))

    def close(self) -> None:
        self.stream.close()


# -- client ----------------------------------------------------------------------


@dataclass
class PutResult:
    """``stored``: the server took the data now (False: it had the key already).
    ``uuids``: other repositories the server says hold the key (v2+ *-PLUS)."""

    stored: bool
    uuids: tuple[str, ...] = ()


class Client(_Driver):
    """A client session: checks who answered, negotiates the version, then serves requests
    one at a time. After ``ConnectionLost`` or ``PeerProtocolError`` it is unusable."""

    def __init__(self, stream: Stream, max_version: int = MAX_VERSION) -> None:
        super().__init__(stream, Role.CLIENT, max_version)
        self.uuid = ""  # the server's, from AUTH-SUCCESS

    @property
    def version(self) -> int:
        return self.conn.version

    @property
    def usable(self) -> bool:
        return self.conn.state is State.IDLE

    def _reply(self) -> Message:
        ev = self._event()
        if isinstance(ev, Closed):
            raise ConnectionLost("the peer closed the connection")
        assert isinstance(ev, Message)  # a client never gets BadRequest; chunks only in get()
        return ev

    def _refused(self, ev: Message, what: str) -> ClusterError:
        if isinstance(ev, m.Error):
            return PeerRefused(ev.text)
        return PeerProtocolError(f"unexpected {ev.command} in answer to {what}")

    def handshake(self, expect_uuid: str | None = None, bypass: tuple[str, ...] = ()) -> str:
        """Read the server's AUTH-SUCCESS (as git-annex-shell p2pstdio sends it) and agree
        on a version. Returns the server's UUID; refuses one that is not ``expect_uuid``."""
        ev = self._reply()
        if not isinstance(ev, m.AuthSuccess):
            raise PeerProtocolError(f"expected AUTH-SUCCESS, got {ev.command}")
        if expect_uuid is not None and ev.uuid != expect_uuid:
            raise PeerProtocolError(f"the server is {ev.uuid}, expected {expect_uuid}")
        self.uuid = ev.uuid
        self._send(m.Version(self.conn.max_version))
        ev = self._reply()
        if not isinstance(ev, (m.Version, m.Error)):
            raise PeerProtocolError(f"expected VERSION, got {ev.command}")
        if bypass and self.version >= 2:
            self._send(m.Bypass(bypass))
        return self.uuid

    def checkpresent(self, key: Key) -> bool:
        self._send(m.CheckPresent(key))
        ev = self._reply()
        if isinstance(ev, (m.Success, m.Failure)):
            return isinstance(ev, m.Success)
        raise self._refused(ev, "CHECKPRESENT")

    def remove(self, key: Key, before: int | None = None) -> tuple[bool, tuple[str, ...]]:
        """(removed, UUIDs it was removed from besides the server's own, v2+)."""
        self._send(m.Remove(key) if before is None else m.RemoveBefore(before, key))
        ev = self._reply()
        if isinstance(ev, (m.Success, m.Failure)):
            return isinstance(ev, m.Success), ()
        if isinstance(ev, (m.SuccessPlus, m.FailurePlus)):
            return isinstance(ev, m.SuccessPlus), ev.uuids
        raise self._refused(ev, "REMOVE")

    def gettimestamp(self) -> int:
        self._send(m.GetTimestamp())
        ev = self._reply()
        if isinstance(ev, m.Timestamp):
            return ev.timestamp
        raise self._refused(ev, "GETTIMESTAMP")

    def lockcontent(self, key: Key) -> bool:
        """True: locked until ``unlockcontent``, which must be the next request."""
        self._send(m.LockContent(key))
        ev = self._reply()
        if isinstance(ev, (m.Success, m.Failure)):
            return isinstance(ev, m.Success)
        raise self._refused(ev, "LOCKCONTENT")

    def unlockcontent(self) -> None:
        self._send(m.UnlockContent())

    def put(
        self,
        key: Key,
        source: Readable,
        size: int,
        af: str | None = None,
        progress: Progress | None = None,
    ) -> PutResult:
        """Send the object from the offset the server asks for (skipping that much of
        ``source``, which is read sequentially). Raises PeerRefused when the server says
        no (ERROR, or FAILURE after the data: it did not verify or could not store)."""
        offer = self._offer(key, af)
        if isinstance(offer, PutResult):
            return offer
        offset = offer
        if offset > size:
            raise PeerProtocolError(f"PUT-FROM {offset} is past the end of a {size}-byte object")
        _skip(source, offset)
        if progress is not None and offset:
            progress(offset)
        if size == offset and source.read(1):  # DATA 0 would be a complete payload
            raise ClusterError(f"the data is longer than the {size} bytes announced")
        self._send(m.Data(size - offset))
        self._send_payload(source, size - offset, progress)
        if self.version >= 1:
            self._send(m.Valid())  # we read it in one pass; git-annex verifies the hash
        return self._stored(
            "the repository did not accept the content: it did not match the key, or it "
            "could not be written there",
            "the data of a PUT",
        )

    def data_present(self, key: Key, af: str | None = None) -> PutResult:
        """Store ``key`` by telling the server (v4+) that its content already reached the
        repository some other way: PUT, then DATA-PRESENT instead of DATA when asked for
        the data. git-annex does this after uploading to a proxied special remote itself;
        the server checks that the content is there. Raises PeerRefused when it is not
        (FAILURE) or the server says ERROR, LocalProtocolError below version 4, before
        anything is sent."""
        if self.version < 4:
            raise LocalProtocolError(f"DATA-PRESENT needs protocol version 4, not {self.version}")
        offer = self._offer(key, af)
        if isinstance(offer, PutResult):
            return offer
        self._send(m.DataPresent())
        return self._stored(
            "the repository does not have the content said to be there", "DATA-PRESENT"
        )

    def _offer(self, key: Key, af: str | None) -> PutResult | int:
        """PUT: the server has the key already (a PutResult), or the offset it wants."""
        self._send(m.Put(af, key))
        ev = self._reply()
        if isinstance(ev, m.AlreadyHave):
            return PutResult(False)
        if isinstance(ev, m.AlreadyHavePlus):
            return PutResult(False, ev.uuids)
        if not isinstance(ev, m.PutFrom):
            raise self._refused(ev, "PUT")
        return ev.offset

    def _stored(self, failure: str, what: str) -> PutResult:
        """The server's verdict on a PUT's content: stored, or PeerRefused(failure)."""
        ev = self._reply()
        if isinstance(ev, m.Success):
            return PutResult(True)
        if isinstance(ev, m.SuccessPlus):
            return PutResult(True, ev.uuids)
        if isinstance(ev, (m.Failure, m.FailurePlus)):
            raise PeerRefused(failure)
        raise self._refused(ev, what)

    def get(
        self,
        key: Key,
        sink: Writable,
        offset: int = 0,
        af: str | None = None,
        progress: Progress | None = None,
    ) -> tuple[int, bool]:
        """Write the object from ``offset`` to ``sink``. Returns (bytes received, valid):
        ``valid`` is False when the server said INVALID (absent, or changed while sent),
        in which case we answer FAILURE and the caller must discard what it got."""
        self._send(m.Get(offset, af, key))
        ev = self._reply()
        if not isinstance(ev, m.Data):
            raise self._refused(ev, "GET")
        got = 0
        while got < ev.length:
            chunk = self._event()
            if not isinstance(chunk, DataChunk):
                raise ConnectionLost(f"the data ended after {got} of {ev.length} bytes")
            sink.write(chunk.data)
            got += len(chunk.data)
            if progress is not None:
                progress(len(chunk.data))
        valid = True
        if self.version >= 1:
            ev2 = self._reply()
            if not isinstance(ev2, (m.Valid, m.Invalid)):
                raise PeerProtocolError(f"expected VALID or INVALID, got {ev2.command}")
            valid = isinstance(ev2, m.Valid)
        self._send(m.Success() if valid else m.Failure())
        return got, valid


def _one_line(text: str) -> str:
    return " ".join(text.split())[:1000]


def _skip(source: Readable, n: int) -> None:
    while n:
        block = source.read(min(BLOCK, n))
        if not block:
            raise ClusterError(f"the data ended before the resume offset ({n} bytes short)")
        n -= len(block)


# -- server ----------------------------------------------------------------------


class Backend(Protocol):
    """What a server serves. Keys arrive validated; errors raised here become FAILURE."""

    def present(self, key: Key) -> bool: ...

    def put_offset(self, key: Key) -> int:
        """How much of a partial upload of ``key`` is kept (0: start over)."""
        ...

    def store(
        self, key: Key, offset: int, length: int, data: Readable, valid: Callable[[], bool]
    ) -> tuple[str, ...]:
        """Take ``length`` bytes (the object from ``offset``) from ``data``, read to its
        end even on failure; commit only if the whole object checks out and ``valid()``
        (asked after the last byte) allows it. Returns extra UUIDs that now hold it."""
        ...

    def retrieve(self, key: Key, offset: int) -> tuple[int, Iterator[bytes]] | None:
        """(total size, blocks from ``offset``), or None when the key is not here."""
        ...

    def remove(self, key: Key) -> tuple[bool, tuple[str, ...]]: ...

    def lock(self, key: Key) -> bool:
        """Keep ``key`` from being removed until ``unlock`` (or 10 minutes after a lost
        connection); False when absent or not lockable."""
        ...

    def unlock(self, key: Key) -> None: ...


class Mode:
    READWRITE = "readwrite"
    APPENDONLY = "appendonly"
    READONLY = "readonly"


@dataclass
class _Payload:
    """The peer's DATA payload as a Readable, pulled from the engine on demand."""

    driver: Server
    left: int
    pending: bytearray = field(default_factory=bytearray)

    def read(self, n: int = -1, /) -> bytes:
        while not self.pending and self.left:
            ev = self.driver._event()
            if not isinstance(ev, DataChunk):
                raise ConnectionLost("the client stopped sending in the middle of DATA")
            self.left -= len(ev.data)
            if n < 0 or len(ev.data) <= n:
                return ev.data  # the whole chunk: no copy
            self.pending += ev.data
        size = len(self.pending) if n < 0 else min(n, len(self.pending))
        out = bytes(self.pending[:size])
        del self.pending[:size]
        return out

    def drain(self) -> None:
        while self.read(BLOCK):
            pass


class Server(_Driver):
    """Serves one client until it leaves: ``AUTH-SUCCESS uuid`` first, as
    git-annex-shell p2pstdio does, then requests one at a time."""

    def __init__(
        self,
        stream: Stream,
        backend: Backend,
        uuid: str,
        mode: str = Mode.READWRITE,
        max_version: int = MAX_VERSION,
        log: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(stream, Role.SERVER, max_version)
        self.backend, self.uuid, self.mode = backend, uuid, mode
        self.log = log or (lambda _msg: None)

    def serve(self) -> None:
        self._send(m.AuthSuccess(self.uuid))
        while True:
            ev = self._event()
            if isinstance(ev, (Closed, m.Error)):
                return  # a client that sent ERROR is in an unknown state: stop, as git-annex
            if isinstance(ev, BadRequest):
                self.log(f"bad request: {ev.reason}")
                self._send(m.Error(ev.reply))
                continue
            assert isinstance(ev, Message)
            self._handle(ev)
            if self.conn.state is State.CLOSED:
                return  # the client sent ERROR (or left) in the middle of the request

    def _result(self, ok: bool, uuids: tuple[str, ...] = (), plus: bool = False) -> None:
        if plus and uuids and self.conn.version >= 2:
            self._send(m.SuccessPlus(uuids) if ok else m.FailurePlus(uuids))
        else:
            self._send(m.Success() if ok else m.Failure())

    def _handle(self, req: Message) -> None:
        if isinstance(req, m.Version):
            self._send(m.Version(min(req.version, self.conn.max_version)))
        elif isinstance(req, m.Bypass):  # no reply; a backend relaying to gateways uses it
            hook = getattr(self.backend, "bypass", None)
            if hook is not None:
                hook(req.uuids)
        elif isinstance(req, m.CheckPresent):
            try:
                present = self.backend.present(req.key)
            except Exception as e:  # unknown is not absent: git-annex takes ERROR as unknown
                self.log(f"checking {req.key}: {e}")
                self._send(m.Error(_one_line(f"cannot tell whether {req.key} is present: {e}")))
            else:
                self._result(present)
        elif isinstance(req, m.GetTimestamp):
            self._send(m.Timestamp(int(time.monotonic())))
        elif isinstance(req, (m.Remove, m.RemoveBefore)):
            self._remove(req)
        elif isinstance(req, m.LockContent):
            self._lock(req.key)
        elif isinstance(req, m.Put):
            self._put(req.key)
        elif isinstance(req, m.Get):
            self._get(req.key, req.offset)
        else:  # the engine lets through only what the table allows
            raise LocalProtocolError(f"no handler for {req.command}")

    def _try(self, fn: Callable[[], bool], what: str) -> bool:
        try:
            return fn()
        except Exception as e:  # the client gets FAILURE; the reason goes to our log
            self.log(f"{what}: {e}")
            return False

    def _remove(self, req: m.Remove | m.RemoveBefore) -> None:
        if self.mode != Mode.READWRITE:
            self._send(m.Error(READONLY_ERROR if self.mode == Mode.READONLY else APPENDONLY_ERROR))
            return
        if isinstance(req, m.RemoveBefore) and time.monotonic() >= req.timestamp:
            self._result(False)  # too late: the other copies' locks may have expired
            return
        try:
            ok, uuids = self.backend.remove(req.key)
        except Exception as e:
            self.log(f"removing {req.key}: {e}")
            ok, uuids = False, ()
        self._result(ok, uuids, plus=True)

    def _lock(self, key: Key) -> None:
        locked = self._try(lambda: self.backend.lock(key), f"locking {key}")
        self._result(locked)
        if locked:
            ev = self._event()
            self.backend.unlock(key)
            if isinstance(ev, Closed | m.Error):
                return

    def _put(self, key: Key) -> None:
        if self.mode == Mode.READONLY:
            self._send(m.Error(READONLY_ERROR))
            return
        if self._try(lambda: self.backend.present(key), f"checking {key}"):
            self._send(m.AlreadyHave())
            return
        offset = 0
        try:
            offset = self.backend.put_offset(key)
        except Exception as e:
            self.log(f"resume offset of {key}: {e}")
        self._send(m.PutFrom(offset))
        ev = self._event()
        if isinstance(ev, m.DataPresent):
            self._result(self._try(lambda: self.backend.present(key), f"checking {key}"))
            return
        if not isinstance(ev, m.Data):
            if isinstance(ev, Closed | m.Error):
                return
            raise PeerProtocolError("expected DATA")
        payload = _Payload(self, ev.length)
        verdict: list[bool] = []

        def valid() -> bool:
            payload.drain()
            if self.conn.version < 1:
                return True
            if not verdict:
                answer = self._event()
                if not isinstance(answer, (m.Valid, m.Invalid)):
                    raise PeerProtocolError("expected VALID or INVALID")
                verdict.append(isinstance(answer, m.Valid))
            return verdict[0]

        try:
            uuids = self.backend.store(key, offset, ev.length, payload, valid)
            ok = True
        except (ConnectionLost, PeerProtocolError):
            raise
        except Exception as e:
            self.log(f"storing {key}: {e}")
            uuids, ok = (), False
        valid()  # whatever the backend did, the rest of the upload is consumed
        self._result(ok, uuids, plus=True)

    def _get(self, key: Key, offset: int) -> None:
        try:
            found = self.backend.retrieve(key, offset)
        except Exception as e:
            self.log(f"reading {key}: {e}")
            found = None
        if found is None:
            self._send(m.Data(0))  # git-annex's way to say "not here": no bytes, INVALID
            if self.conn.version >= 1:
                self._send(m.Invalid())
        else:
            size, blocks = found
            length = max(0, size - offset)
            self._send(m.Data(length))
            sent = 0
            try:
                for block in blocks:
                    block = block[: length - sent]
                    if block:
                        self._write(self.conn.send_data(block))
                        sent += len(block)
            except Exception as e:
                if not wrong_content(e) or self.conn.version < 1:
                    raise  # the connection ends; the client keeps what it got, to resume
                # What went out is wrong: fill up the announced length and say INVALID,
                # on which git-annex discards the download rather than keep it to resume.
                self.log(f"reading {key}: {e}")
                while sent < length:
                    filler = bytes(min(BLOCK, length - sent))
                    self._write(self.conn.send_data(filler))
                    sent += len(filler)
                self._send(m.Invalid())
            else:
                if sent < length:
                    # The object shrank while read: the only way out is to hang up.
                    raise ConnectionLost(f"{key} ended {length - sent} bytes early while sent")
                if self.conn.version >= 1:
                    self._send(m.Valid())
        ev = self._event()  # the client's SUCCESS or FAILURE
        if isinstance(ev, Closed):
            return
