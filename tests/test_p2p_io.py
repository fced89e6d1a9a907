"""Tests for shared.p2p.io: the blocking Client against the blocking Server, in memory.

Each test runs ``Server(...).serve()`` in a thread on one end of a
``socket.socketpair()`` and drives a ``Client`` on the other, over a small
dict-backed Backend that verifies uploads as a real repository does. Most tests
run over a matrix of (client max version, server max version).
"""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from shared.annex.keys import ContentVerifier, Key
from shared.errors import ClusterError, IntegrityError
from shared.p2p import messages as m
from shared.p2p.engine import (
    NEED_DATA,
    Connection,
    DataChunk,
    Event,
    LocalProtocolError,
    PeerProtocolError,
    Role,
)
from shared.p2p.io import (
    APPENDONLY_ERROR,
    BLOCK,
    READONLY_ERROR,
    Backend,
    Client,
    ConnectionLost,
    Mode,
    PeerRefused,
    PutResult,
    Server,
)
from shared.p2p.messages import Message
from shared.streams import Readable

pytestmark = pytest.mark.timeout(60)

SERVER_UUID = "2cd1e7c9-ca5e-45a8-a12e-162bb49045d5"
OTHER_UUIDS = ("0a1b2c3d-0000-4000-8000-000000000001", "0a1b2c3d-0000-4000-8000-000000000002")
TIMEOUT = 5.0
VERSION_PAIRS = [(4, 4), (4, 1), (1, 4), (0, 4), (4, 0), (2, 3), (3, 4)]


def key_for(data: bytes, ext: str = ".bin") -> Key:
    return Key("SHA256E", hashlib.sha256(data).hexdigest() + ext, size=len(data))


def blob(n: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking bytes."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d-%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:n])


# --- a faithful in-memory Backend -------------------------------------------------------


class DictBackend:
    """A repository in a dict: uploads are verified (size and SHA256) and committed only
    when valid() allows; partial uploads are kept for resuming; locks block removal."""

    def __init__(self, extra_uuids: tuple[str, ...] = ()) -> None:
        self.objects: dict[Key, bytes] = {}
        self.partial: dict[Key, bytes] = {}
        self.locked: set[Key] = set()
        self.extra_uuids = extra_uuids
        self.received: list[int] = []  # payload bytes read by each store()
        self.validity: list[bool] = []  # what valid() said, per store()
        self.on_put_offset: Callable[[Key], None] | None = None
        self.on_block: Callable[[int], None] | None = None  # after each retrieve block
        self.on_store_block: Callable[[int], None] | None = None  # after each block stored
        self._mutex = threading.Lock()

    def present(self, key: Key) -> bool:
        with self._mutex:
            return key in self.objects

    def put_offset(self, key: Key) -> int:
        if self.on_put_offset is not None:
            self.on_put_offset(key)
        with self._mutex:
            return len(self.partial.get(key, b""))

    def store(
        self, key: Key, offset: int, length: int, data: Readable, valid: Callable[[], bool]
    ) -> tuple[str, ...]:
        with self._mutex:
            kept = self.partial.get(key, b"")
        if offset > len(kept):
            raise ValueError(f"asked to resume at {offset} with {len(kept)} bytes kept")
        buf = bytearray(kept[:offset])
        got = 0
        try:
            while block := data.read(BLOCK):
                buf += block
                got += len(block)
                if self.on_store_block is not None:
                    self.on_store_block(got)
        finally:  # whatever arrived is kept for a resume, as git-annex keeps its tmp file
            self.received.append(got)
            with self._mutex:
                self.partial[key] = bytes(buf)
        ok = valid()
        self.validity.append(ok)
        verifier = ContentVerifier(key)
        verifier.update(bytes(buf))
        try:
            if got != length:
                raise IntegrityError(f"got {got} bytes of {length}")
            verifier.verify()
            if not ok:
                raise IntegrityError("the client said the content changed while sent")
        except IntegrityError:
            with self._mutex:
                del self.partial[key]  # suspect data must not be resumed from
            raise
        with self._mutex:
            self.objects[key] = bytes(buf)
            del self.partial[key]
        return self.extra_uuids

    def retrieve(self, key: Key, offset: int) -> tuple[int, Iterator[bytes]] | None:
        with self._mutex:
            obj = self.objects.get(key)
        if obj is None:
            return None

        def blocks() -> Iterator[bytes]:
            for start in range(offset, len(obj), BLOCK):
                yield obj[start : start + BLOCK]
                if self.on_block is not None:
                    self.on_block(start)

        return len(obj), blocks()

    def remove(self, key: Key) -> tuple[bool, tuple[str, ...]]:
        with self._mutex:
            if key in self.locked:
                return False, ()
            self.objects.pop(key, None)
            return True, self.extra_uuids

    def lock(self, key: Key) -> bool:
        with self._mutex:
            if key not in self.objects:
                return False
            self.locked.add(key)
            return True

    def unlock(self, key: Key) -> None:
        with self._mutex:
            self.locked.discard(key)


def test_dict_backend_is_a_backend() -> None:
    backend: Backend = DictBackend()  # checked by mypy's structural typing too
    assert not backend.present(key_for(b""))


# --- running a server in a thread -------------------------------------------------------


class Running:
    """A Server serving one end of a socketpair in a thread; ``sock`` is the other end."""

    def __init__(
        self,
        backend: DictBackend,
        server_max: int = 4,
        mode: str = Mode.READWRITE,
        uuid: str = SERVER_UUID,
    ) -> None:
        self.sock, self.server_sock = socket.socketpair()
        self.sock.settimeout(TIMEOUT)
        self.server_sock.settimeout(TIMEOUT)
        self.logs: list[str] = []
        self.server = Server(
            self.server_sock, backend, uuid, mode=mode, max_version=server_max, log=self.logs.append
        )
        self.error: BaseException | None = None
        self.returned = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.server.serve()
            self.returned = True
        except BaseException as e:
            self.error = e
        finally:
            self.server.close()

    def join(self, timeout: float = TIMEOUT) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the server did not stop"

    def stop(self) -> None:
        """Close our end and wait for the server to finish; it must end cleanly."""
        self.sock.close()
        self.join()


class Session(Running):
    """A Running server plus a Client that has done the handshake."""

    def __init__(
        self,
        backend: DictBackend,
        client_max: int = 4,
        server_max: int = 4,
        mode: str = Mode.READWRITE,
    ) -> None:
        super().__init__(backend, server_max=server_max, mode=mode)
        self.client = Client(self.sock, client_max)
        assert self.client.handshake(SERVER_UUID) == SERVER_UUID
        assert self.client.version == min(client_max, self.server.conn.max_version)


@pytest.fixture(params=VERSION_PAIRS, ids=[f"c{c}-s{s}" for c, s in VERSION_PAIRS])
def versions(request: pytest.FixtureRequest) -> tuple[int, int]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def backend() -> DictBackend:
    return DictBackend(extra_uuids=OTHER_UUIDS)


@pytest.fixture
def session(versions: tuple[int, int], backend: DictBackend) -> Iterator[Session]:
    cmax, smax = versions
    s = Session(backend, cmax, server_max=smax)
    yield s
    if s.thread.is_alive():
        s.stop()
    assert s.error is None, f"the server failed: {s.error!r}"


def plus(session: Session, uuids: tuple[str, ...]) -> tuple[str, ...]:
    """The extra UUIDs a client sees: only at v2+, where *-PLUS exists."""
    return uuids if session.client.version >= 2 else ()


# --- handshake ------------------------------------------------------------------------------


def test_handshake(versions: tuple[int, int], backend: DictBackend) -> None:
    cmax, smax = versions
    r = Running(backend, server_max=smax)
    client = Client(r.sock, cmax)
    assert client.uuid == ""
    assert client.handshake() == SERVER_UUID
    assert client.uuid == SERVER_UUID
    assert client.version == min(cmax, smax)
    assert client.usable
    r.stop()
    assert r.error is None and r.returned


def test_handshake_refuses_an_unexpected_uuid(backend: DictBackend) -> None:
    r = Running(backend, uuid="00000000-0000-0000-0000-000000000bad")
    client = Client(r.sock)
    with pytest.raises(PeerProtocolError, match="expected"):
        client.handshake(expect_uuid=SERVER_UUID)
    r.stop()


@pytest.mark.parametrize("cmax", [1, 2, 4])
def test_handshake_with_bypass(cmax: int, backend: DictBackend) -> None:
    r = Running(backend)
    client = Client(r.sock, cmax)
    client.handshake(SERVER_UUID, bypass=("gw-1", "gw-2"))  # sent at v2+ only
    k = key_for(b"x")
    assert client.checkpresent(k) is False  # and no stray reply is left behind
    r.stop()
    assert r.error is None and not r.logs


def test_handshake_with_a_server_that_does_not_know_version(backend: DictBackend) -> None:
    """An old server answers VERSION with ERROR; the client then speaks version 0."""
    a, b = socket.socketpair()
    a.settimeout(TIMEOUT)
    b.settimeout(TIMEOUT)
    b.sendall(f"AUTH-SUCCESS {SERVER_UUID}\n".encode())
    client = Client(a)

    def old_server() -> None:
        assert recv_line(b) == b"VERSION 4"
        b.sendall(b"ERROR unknown command\n")
        assert recv_line(b) == b"CHECKPRESENT " + str(key_for(b"")).encode()
        b.sendall(b"SUCCESS\n")

    t = threading.Thread(target=old_server, daemon=True)
    t.start()
    assert client.handshake(SERVER_UUID) == SERVER_UUID
    assert client.version == 0
    assert client.checkpresent(key_for(b""))
    t.join(TIMEOUT)
    a.close()
    b.close()


def recv_line(sock: socket.socket) -> bytes:
    out = bytearray()
    while not out.endswith(b"\n"):
        c = sock.recv(1)
        assert c, "EOF"
        out += c
    return bytes(out[:-1])


# --- checkpresent, put ----------------------------------------------------------------------


def test_checkpresent(session: Session, backend: DictBackend) -> None:
    data = b"hello"
    k = key_for(data)
    assert session.client.checkpresent(k) is False
    backend.objects[k] = data
    assert session.client.checkpresent(k) is True
    assert session.client.usable


@pytest.mark.parametrize("size", [0, 1, 1000, BLOCK, 3 * 1024 * 1024 + 17])
def test_put(session: Session, backend: DictBackend, size: int) -> None:
    data = blob(size, seed=size)
    k = key_for(data)
    progress: list[int] = []
    result = session.client.put(
        k, io.BytesIO(data), size, af="dir/a file.bin", progress=progress.append
    )
    assert result == PutResult(True, plus(session, OTHER_UUIDS))
    assert backend.objects[k] == data
    assert k not in backend.partial
    assert sum(progress) == size
    assert all(0 < p <= BLOCK for p in progress)
    assert backend.validity == [True]
    assert session.client.usable
    out = io.BytesIO()
    assert session.client.get(k, out) == (size, True)
    assert out.getvalue() == data


def test_put_without_plus_uuids(versions: tuple[int, int]) -> None:
    backend = DictBackend()
    s = Session(backend, versions[0], server_max=versions[1])
    data = b"abc"
    assert s.client.put(key_for(data), io.BytesIO(data), 3) == PutResult(True, ())
    s.stop()
    assert s.error is None


def test_put_already_have(session: Session, backend: DictBackend) -> None:
    data = b"already here"
    k = key_for(data)
    backend.objects[k] = data
    source = io.BytesIO(data)
    assert session.client.put(k, source, len(data)) == PutResult(False)
    assert source.tell() == 0  # nothing was read
    assert backend.received == []
    assert session.client.usable


class Counting:
    """A Readable that counts what was read from it."""

    def __init__(self, data: bytes) -> None:
        self.inner = io.BytesIO(data)
        self.read_bytes = 0

    def read(self, n: int = -1, /) -> bytes:
        block = self.inner.read(n)
        self.read_bytes += len(block)
        return block


@pytest.mark.parametrize("kept", [1, 1000, BLOCK + 5])
def test_put_resumes_from_the_servers_offset(
    session: Session, backend: DictBackend, kept: int
) -> None:
    data = blob(2 * BLOCK + 123, seed=kept)
    k = key_for(data)
    backend.partial[k] = data[:kept]
    # The source's first ``kept`` bytes are wrong: the object only checks out if the
    # client skips exactly that many and sends the rest.
    source = Counting(b"\0" * kept + data[kept:])
    progress: list[int] = []
    result = session.client.put(k, source, len(data), progress=progress.append)
    assert result.stored
    assert backend.objects[k] == data
    assert backend.received == [len(data) - kept]
    assert source.read_bytes == len(data)
    assert progress[0] == kept  # the skipped part counts as done
    assert sum(progress) == len(data)


def test_put_resumes_after_an_interrupted_upload(versions: tuple[int, int]) -> None:
    """An upload cut off by a lost connection is resumed by the next session."""
    cmax, smax = versions
    backend = DictBackend()
    data = blob(3 * BLOCK + 7, seed=9)
    k = key_for(data)

    class Breaking(io.BytesIO):
        def read(self, n: int | None = -1, /) -> bytes:
            if self.tell() >= 2 * BLOCK:
                raise OSError("disk went away")
            return super().read(n)

    s1 = Session(backend, cmax, server_max=smax)
    with pytest.raises(OSError):
        s1.client.put(k, Breaking(data), len(data))
    assert not s1.client.usable
    s1.stop()  # the server sees the stream end inside DATA
    assert isinstance(s1.error, ConnectionLost)
    assert k not in backend.objects
    kept = len(backend.partial[k])
    assert 0 < kept < len(data)
    assert backend.partial[k] == data[:kept]

    s2 = Session(backend, cmax, server_max=smax)
    source = Counting(data)
    assert s2.client.put(k, source, len(data)).stored
    assert backend.objects[k] == data
    assert backend.received[-1] == len(data) - kept
    s2.stop()
    assert s2.error is None


def test_put_with_wrong_content_is_refused(session: Session, backend: DictBackend) -> None:
    good, bad = b"good content", b"evil content"
    k = key_for(good)
    with pytest.raises(PeerRefused):
        session.client.put(k, io.BytesIO(bad), len(bad))
    assert k not in backend.objects
    assert k not in backend.partial
    assert session.client.usable  # FAILURE is an answer, not a broken session
    assert session.client.put(k, io.BytesIO(good), len(good)).stored
    assert backend.objects[k] == good


def test_put_with_wrong_size_is_refused(session: Session, backend: DictBackend) -> None:
    data = b"twelve bytes"
    k = key_for(data)
    with pytest.raises(PeerRefused):
        session.client.put(k, io.BytesIO(data[:5]), 5)
    assert k not in backend.objects
    assert session.client.usable


@pytest.mark.parametrize("size", [0, 10, 2 * BLOCK])
def test_put_source_longer_than_announced(
    session: Session, backend: DictBackend, size: int
) -> None:
    """A source that grew: the client refuses to finish the DATA (so the server never has
    every byte), and the session is over; nothing is committed."""
    data = blob(size)
    k = key_for(data)
    with pytest.raises(ClusterError, match="longer") as exc:
        session.client.put(k, io.BytesIO(data + b"more"), size)
    assert not isinstance(exc.value, (PeerRefused, ConnectionLost))
    assert not session.client.usable  # the DATA cannot be finished: hang up
    session.stop()
    if size:
        assert isinstance(session.error, ConnectionLost)  # EOF inside DATA
        session.error = None
        assert backend.received == [size - min(size, BLOCK)]  # the last block held back
    else:
        assert session.returned  # refused before DATA 0 went out: a clean hang-up
        assert backend.received == []
    assert k not in backend.objects


def test_put_source_shorter_than_announced(session: Session, backend: DictBackend) -> None:
    data = blob(BLOCK + 10)
    k = key_for(data)
    with pytest.raises(ClusterError, match="short"):
        session.client.put(k, io.BytesIO(data[:-1]), len(data))
    assert not session.client.usable
    session.stop()
    assert isinstance(session.error, ConnectionLost)
    session.error = None
    assert k not in backend.objects


@pytest.mark.parametrize("cmax", [0, 1, 4])
def test_server_honours_invalid(cmax: int) -> None:
    """VALID/INVALID from a (git-annex) client that saw its file change while sending."""
    backend = DictBackend()
    r = Running(backend)
    raw = RawClient(r.sock, cmax)
    data = b"content"
    k = key_for(data)
    raw.send(m.Put(None, k))
    assert raw.reply() == m.PutFrom(0)
    raw.send(m.Data(len(data)))
    raw.send_data(data)
    if cmax >= 1:
        raw.send(m.Invalid())
        assert raw.reply() == m.Failure()
        assert k not in backend.objects
        assert backend.validity == [False]
        raw.send(m.Put(None, k))
        assert raw.reply() == m.PutFrom(0)
        raw.send(m.Data(len(data)))
        raw.send_data(data)
        raw.send(m.Valid())
    assert raw.reply() == m.Success()
    assert backend.objects[k] == data
    r.stop()
    assert r.error is None


# --- DATA-PRESENT ---------------------------------------------------------------------------


def test_data_present(session: Session, backend: DictBackend) -> None:
    data = b"uploaded out of band"
    k = key_for(data)
    if session.client.version < 4:
        with pytest.raises(LocalProtocolError):
            session.client.data_present(k)
        assert session.client.usable
        return
    with pytest.raises(PeerRefused):  # it is not there
        session.client.data_present(k)
    assert session.client.usable

    def arrives(key: Key) -> None:  # lands while the PUT is pending
        backend.objects[key] = data

    backend.on_put_offset = arrives
    assert session.client.data_present(k) == PutResult(True)
    assert backend.received == []  # no DATA was sent
    backend.on_put_offset = None
    assert session.client.data_present(k) == PutResult(False)  # ALREADY-HAVE


# --- get -----------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0, 1, BLOCK + 3, 2 * BLOCK + 99, 2 * BLOCK + 100])
def test_get(session: Session, backend: DictBackend, offset: int) -> None:
    data = blob(2 * BLOCK + 100, seed=offset)
    k = key_for(data)
    backend.objects[k] = data
    out = io.BytesIO()
    progress: list[int] = []
    got, valid = session.client.get(k, out, offset=offset, af="x y", progress=progress.append)
    assert (got, valid) == (len(data) - offset, True)
    assert out.getvalue() == data[offset:]
    assert sum(progress) == got
    assert session.client.usable


def test_get_past_the_end(session: Session, backend: DictBackend) -> None:
    k = key_for(b"abc")
    backend.objects[k] = b"abc"
    out = io.BytesIO()
    assert session.client.get(k, out, offset=10) == (0, True)


def test_get_absent_key(session: Session) -> None:
    out = io.BytesIO()
    got, valid = session.client.get(key_for(b"nope"), out)
    assert got == 0
    assert out.getvalue() == b""
    assert valid is (session.client.version == 0)  # v0 has no INVALID to say it
    assert session.client.usable


def test_get_then_more_requests(session: Session, backend: DictBackend) -> None:
    data = blob(5000)
    k = key_for(data)
    backend.objects[k] = data
    for _ in range(3):
        out = io.BytesIO()
        assert session.client.get(k, out) == (5000, True)
        assert session.client.checkpresent(k)


def spoil_after_first_block(backend: DictBackend) -> None:
    """The backend's source turns out to be wrong after its first block went out (an
    encrypted copy that does not decrypt)."""

    def on_block(start: int) -> None:
        raise IntegrityError("the copy does not decrypt", "n1")

    backend.on_block = on_block


def test_get_of_wrong_content_ends_invalid(backend: DictBackend) -> None:
    """The client must discard it (git-annex does on INVALID), and the session goes on."""
    data = blob(3 * BLOCK)
    k = key_for(data)
    backend.objects[k] = data
    spoil_after_first_block(backend)
    session = Session(backend)
    out = io.BytesIO()
    assert session.client.get(k, out) == (len(data), False)
    assert out.getvalue()[:BLOCK] == data[:BLOCK] and out.getvalue()[BLOCK:] == bytes(2 * BLOCK)
    assert any("does not decrypt" in line for line in session.logs)
    assert session.client.checkpresent(k)  # still in step
    session.stop()
    assert session.error is None


def test_get_of_wrong_content_hangs_up_at_v0(backend: DictBackend) -> None:
    """Version 0 has no INVALID: the only honest answer is to end the connection."""
    data = blob(3 * BLOCK)
    k = key_for(data)
    backend.objects[k] = data
    spoil_after_first_block(backend)
    session = Session(backend, client_max=0)
    with pytest.raises(ConnectionLost):
        session.client.get(k, io.BytesIO())
    session.join()
    assert isinstance(session.error, IntegrityError)


# --- remove, timestamps, locks --------------------------------------------------------------


def test_remove(session: Session, backend: DictBackend) -> None:
    data = b"to be removed"
    k = key_for(data)
    backend.objects[k] = data
    assert session.client.remove(k) == (True, plus(session, OTHER_UUIDS))
    assert k not in backend.objects
    assert session.client.remove(k) == (True, plus(session, OTHER_UUIDS))  # absent: success


def test_remove_before(session: Session, backend: DictBackend) -> None:
    data = b"timed"
    k = key_for(data)
    backend.objects[k] = data
    if session.client.version < 3:
        with pytest.raises(LocalProtocolError):
            session.client.remove(k, before=2**40)
        with pytest.raises(LocalProtocolError):
            session.client.gettimestamp()
        assert session.client.usable  # refused before anything was sent
        assert session.client.checkpresent(k)
        return
    assert session.client.remove(k, before=0) == (False, ())  # too late: refused
    assert k in backend.objects
    now = session.client.gettimestamp()
    assert abs(now - time.monotonic()) < 5
    assert session.client.remove(k, before=now + 60) == (True, plus(session, OTHER_UUIDS))
    assert k not in backend.objects


@pytest.mark.parametrize(("cmax", "smax"), [(4, 4), (1, 4), (0, 0)])
def test_lock_blocks_removal_from_another_session(cmax: int, smax: int) -> None:
    backend = DictBackend()
    data = b"locked"
    k = key_for(data)
    backend.objects[k] = data
    a = Session(backend, cmax, server_max=smax)
    b = Session(backend, cmax, server_max=smax)
    assert a.client.lockcontent(k) is True
    assert b.client.remove(k) == (False, ())
    assert k in backend.objects
    a.client.unlockcontent()
    assert a.client.checkpresent(k)  # the server has taken the UNLOCKCONTENT by now
    assert b.client.remove(k) == (True, ())
    assert k not in backend.objects
    assert a.client.lockcontent(k) is False  # absent: cannot be locked
    assert a.client.usable
    a.stop()
    b.stop()
    assert a.error is None and b.error is None


def test_lock_released_when_the_client_goes_away(backend: DictBackend) -> None:
    k = key_for(b"z")
    backend.objects[k] = b"z"
    s = Session(backend)
    assert s.client.lockcontent(k)
    assert backend.locked == {k}
    s.stop()
    assert s.error is None
    assert backend.locked == set()


def test_lockcontent_then_unlockcontent(session: Session, backend: DictBackend) -> None:
    k = key_for(b"q")
    backend.objects[k] = b"q"
    assert session.client.lockcontent(k)
    with pytest.raises(LocalProtocolError):  # nothing but UNLOCKCONTENT now
        session.client.checkpresent(k)
    session.client.unlockcontent()
    assert session.client.usable
    assert session.client.checkpresent(k)
    assert backend.locked == set()


# --- server modes ---------------------------------------------------------------------------


@pytest.mark.parametrize(("cmax", "smax"), [(4, 4), (1, 1), (0, 4)])
def test_readonly_server(cmax: int, smax: int) -> None:
    backend = DictBackend()
    data = b"read only"
    k = key_for(data)
    backend.objects[k] = data
    s = Session(backend, cmax, server_max=smax, mode=Mode.READONLY)
    new = b"new"
    with pytest.raises(PeerRefused) as exc:
        s.client.put(key_for(new), io.BytesIO(new), 3)
    assert str(exc.value) == READONLY_ERROR
    assert s.client.usable
    with pytest.raises(PeerRefused) as exc:
        s.client.remove(k)
    assert str(exc.value) == READONLY_ERROR
    assert s.client.usable
    assert s.client.checkpresent(k)
    out = io.BytesIO()
    assert s.client.get(k, out) == (len(data), True)
    assert s.client.lockcontent(k)
    s.client.unlockcontent()
    assert key_for(new) not in backend.objects
    assert k in backend.objects
    s.stop()
    assert s.error is None


@pytest.mark.parametrize(("cmax", "smax"), [(4, 4), (1, 1), (4, 3)])
def test_appendonly_server(cmax: int, smax: int) -> None:
    backend = DictBackend()
    s = Session(backend, cmax, server_max=smax, mode=Mode.APPENDONLY)
    data = b"append only"
    k = key_for(data)
    assert s.client.put(k, io.BytesIO(data), len(data)).stored
    with pytest.raises(PeerRefused) as exc:
        s.client.remove(k)
    assert str(exc.value) == APPENDONLY_ERROR
    assert s.client.usable
    if s.client.version >= 3:
        with pytest.raises(PeerRefused) as exc:
            s.client.remove(k, before=s.client.gettimestamp() + 60)
        assert str(exc.value) == APPENDONLY_ERROR
    assert s.client.checkpresent(k)
    assert backend.objects[k] == data
    s.stop()
    assert s.error is None


# --- lost connections -----------------------------------------------------------------------


def test_server_dies_during_get(session: Session, backend: DictBackend) -> None:
    data = blob(4 * BLOCK)
    k = key_for(data)
    backend.objects[k] = data

    def die(start: int) -> None:
        session.server_sock.shutdown(socket.SHUT_RDWR)

    backend.on_block = die
    out = io.BytesIO()
    with pytest.raises(ConnectionLost):
        session.client.get(k, out)
    assert not session.client.usable
    assert 0 < len(out.getvalue()) < len(data)
    session.join()
    assert isinstance(session.error, ConnectionLost)
    session.error = None


def test_server_dies_during_put(session: Session, backend: DictBackend) -> None:
    data = blob(16 * BLOCK)
    k = key_for(data)

    def die(got: int) -> None:
        session.server_sock.shutdown(socket.SHUT_RDWR)

    backend.on_store_block = die
    with pytest.raises(ConnectionLost):
        session.client.put(k, io.BytesIO(data), len(data))
    assert not session.client.usable
    session.join()
    assert session.error is not None
    session.error = None
    assert k not in backend.objects


def test_server_dies_before_answering(session: Session, backend: DictBackend) -> None:
    k = key_for(b"x")

    def die(key: Key) -> None:
        session.server_sock.shutdown(socket.SHUT_RDWR)

    backend.on_put_offset = die
    with pytest.raises(ConnectionLost):
        session.client.put(k, io.BytesIO(b"x"), 1)
    assert not session.client.usable
    session.join()
    session.error = None


def test_server_closes_between_requests(session: Session) -> None:
    session.server_sock.shutdown(socket.SHUT_RDWR)
    with pytest.raises(ConnectionLost):
        session.client.checkpresent(key_for(b""))
    assert not session.client.usable
    session.join()
    assert session.returned  # for the server, a clean end between requests


def test_server_stops_answering(backend: DictBackend) -> None:
    a, b = socket.socketpair()
    a.settimeout(0.2)
    b.sendall(f"AUTH-SUCCESS {SERVER_UUID}\n".encode())
    client = Client(a)
    with pytest.raises(ConnectionLost, match="timed out"):
        client.handshake()
    assert not client.usable
    a.close()
    b.close()


# --- the server against a hand-driven client ------------------------------------------------


class RawClient:
    """A client engine over a socket, for saying what Client never would."""

    def __init__(self, sock: socket.socket, version: int = 4) -> None:
        self.sock = sock
        self.conn = Connection(Role.CLIENT, version)
        assert isinstance(self.reply(), m.AuthSuccess)
        self.send(m.Version(version))
        assert self.reply() == m.Version(version)

    def send(self, msg: Message) -> None:
        self.sock.sendall(self.conn.send(msg))

    def send_data(self, data: bytes) -> None:
        self.sock.sendall(self.conn.send_data(data))

    def event(self) -> Event:
        while (ev := self.conn.next_event()) is NEED_DATA:
            self.conn.receive_data(self.sock.recv(65536))
        return ev

    def reply(self) -> Event:
        return self.event()


def test_server_answers_garbage_and_carries_on(backend: DictBackend) -> None:
    r = Running(backend)
    raw = RawClient(r.sock)
    k = key_for(b"")
    for line, reply in [
        (b"HELLO world\n", "unknown command"),
        (b"SUCCESS\n", "unexpected command"),
        (b"CHECKPRESENT ../../etc/passwd\n", "unknown command"),
        (b"UNLOCKCONTENT\n", "unexpected command"),
    ]:
        r.sock.sendall(line)
        assert raw.event() == m.Error(reply)
    raw.send(m.CheckPresent(k))
    assert raw.reply() == m.Failure()
    r.stop()
    assert r.error is None
    assert len(r.logs) == 4


def test_server_stops_on_client_error(backend: DictBackend) -> None:
    r = Running(backend)
    raw = RawClient(r.sock)
    raw.send(m.Error("expected VERSION"))
    r.join(2)  # without waiting for the client to hang up
    assert r.returned and r.error is None


@pytest.mark.parametrize("where", ["put-data", "locked", "get-ack"])
def test_server_stops_on_client_error_mid_request(backend: DictBackend, where: str) -> None:
    data = b"payload"
    k = key_for(data)
    backend.objects[k] = data
    r = Running(backend)
    raw = RawClient(r.sock)
    if where == "put-data":
        other = key_for(b"other")
        raw.send(m.Put(None, other))
        assert raw.reply() == m.PutFrom(0)
    elif where == "locked":
        raw.send(m.LockContent(k))
        assert raw.reply() == m.Success()
    else:
        raw.send(m.Get(0, None, k))
        assert raw.reply() == m.Data(len(data))
        assert raw.reply() == DataChunk(data, last=True)
        assert raw.reply() == m.Valid()
    raw.send(m.Error("giving up"))
    r.join(2)  # the socket stays open: the server must not wait for more
    assert r.returned and r.error is None
    assert backend.locked == set()


def test_server_sees_client_vanish_mid_payload(backend: DictBackend) -> None:
    r = Running(backend)
    raw = RawClient(r.sock)
    k = key_for(b"0123456789")
    raw.send(m.Put(None, k))
    assert raw.reply() == m.PutFrom(0)
    raw.send(m.Data(10))
    raw.send_data(b"01234")
    r.stop()
    assert isinstance(r.error, ConnectionLost)
    assert backend.partial[k] == b"01234"
    assert k not in backend.objects


def test_get_timestamp_is_monotonic(backend: DictBackend) -> None:
    s = Session(backend)
    t1 = s.client.gettimestamp()
    t2 = s.client.gettimestamp()
    assert t1 <= t2
    s.stop()


def test_stream_errors_become_connection_lost() -> None:
    class Broken:
        def recv(self, n: int, /) -> bytes:
            raise ConnectionResetError("reset by peer")

        def sendall(self, data: bytes, /) -> None:
            raise BrokenPipeError("broken pipe")

        def close(self) -> None:
            pass

    client = Client(Broken())
    with pytest.raises(ConnectionLost):
        client.handshake()
    server = Server(Broken(), DictBackend(), SERVER_UUID)
    with pytest.raises(ConnectionLost):
        server.serve()
