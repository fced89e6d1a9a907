"""Tests for shared.p2p.engine: two sans-I/O Connections (client and server) paired in memory.

What one side ``send``s is fed to the other's ``receive_data`` and its events are
collected, so every legal sequence of the protocol, the version gates, DATA framing
and the error paths are exercised without any I/O.
"""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.annex.keys import Key
from shared.p2p import messages as m
from shared.p2p.engine import (
    NEED_DATA,
    BadRequest,
    Closed,
    Connection,
    DataChunk,
    Event,
    LocalProtocolError,
    PeerProtocolError,
    ProtocolError,
    Role,
    State,
)
from shared.p2p.messages import MAX_LINE, MAX_VERSION, Message, encode

SERVER_UUID = "2cd1e7c9-ca5e-45a8-a12e-162bb49045d5"
KEY = Key.parse(f"SHA256E-s3--{hashlib.sha256(b'foo').hexdigest()}.txt")
VERSIONS = range(MAX_VERSION + 1)


def events(conn: Connection) -> list[Event]:
    """Every complete event ``conn`` has, up to NEED_DATA (or Closed, which repeats)."""
    out: list[Event] = []
    for _ in range(10_000):
        ev = conn.next_event()
        if ev is NEED_DATA:
            return out
        out.append(ev)
        if isinstance(ev, Closed):
            return out
    raise AssertionError("next_event never ran out of events")


class Pair:
    """A client and a server Connection wired back to back."""

    def __init__(self, client_max: int = MAX_VERSION, server_max: int = MAX_VERSION) -> None:
        self.client = Connection(Role.CLIENT, client_max)
        self.server = Connection(Role.SERVER, server_max)

    def c2s(self, *msgs: Message) -> list[Event]:
        """The client sends ``msgs``; returns what the server makes of them."""
        for msg in msgs:
            self.server.receive_data(self.client.send(msg))
        return events(self.server)

    def s2c(self, *msgs: Message) -> list[Event]:
        for msg in msgs:
            self.client.receive_data(self.server.send(msg))
        return events(self.client)

    def c_data(self, payload: bytes) -> list[Event]:
        self.server.receive_data(self.client.send_data(payload))
        return events(self.server)

    def s_data(self, payload: bytes) -> list[Event]:
        self.client.receive_data(self.server.send_data(payload))
        return events(self.client)

    def states(self) -> tuple[State, State]:
        return self.client.state, self.server.state

    def both(self, state: State) -> None:
        assert self.states() == (state, state)

    def handshake(self) -> int:
        """git-annex-shell p2pstdio's start: AUTH-SUCCESS unasked, then VERSION."""
        assert self.s2c(m.AuthSuccess(SERVER_UUID)) == [m.AuthSuccess(SERVER_UUID)]
        assert self.c2s(m.Version(self.client.max_version)) == [m.Version(self.client.max_version)]
        agreed = min(self.client.max_version, self.server.max_version)
        assert self.s2c(m.Version(agreed)) == [m.Version(agreed)]
        assert self.client.version == self.server.version == agreed
        self.both(State.IDLE)
        return agreed


def pair_at(version: int) -> Pair:
    p = Pair(version, MAX_VERSION)
    p.handshake()
    return p


# --- start and version negotiation -----------------------------------------------------


def test_p2pstdio_start_server_speaks_first() -> None:
    p = Pair()
    p.both(State.AUTH)
    assert p.server.send(m.AuthSuccess(SERVER_UUID)) == f"AUTH-SUCCESS {SERVER_UUID}\n".encode()
    assert p.server.state is State.IDLE
    p.client.receive_data(f"AUTH-SUCCESS {SERVER_UUID}\n".encode())
    assert events(p.client) == [m.AuthSuccess(SERVER_UUID)]
    p.both(State.IDLE)
    assert p.client.version == p.server.version == 0  # until VERSION is agreed


def test_auth_exchange() -> None:
    p = Pair()
    assert p.c2s(m.Auth("client-uuid", "token")) == [m.Auth("client-uuid", "token")]
    p.both(State.AUTH_REPLY)
    assert p.s2c(m.AuthFailure()) == [m.AuthFailure()]
    p.both(State.AUTH)
    p.c2s(m.Auth("client-uuid", "token2"))
    assert p.s2c(m.AuthSuccess(SERVER_UUID)) == [m.AuthSuccess(SERVER_UUID)]
    p.both(State.IDLE)


def test_no_request_before_authentication() -> None:
    p = Pair()
    with pytest.raises(LocalProtocolError):
        p.client.send(m.CheckPresent(KEY))
    with pytest.raises(LocalProtocolError):
        p.client.send(m.Version(4))
    p.client.receive_data(b"SUCCESS\n")
    with pytest.raises(PeerProtocolError):
        p.client.next_event()


@pytest.mark.parametrize(("cmax", "smax"), list(itertools.product(VERSIONS, VERSIONS)))
def test_version_negotiation(cmax: int, smax: int) -> None:
    p = Pair(cmax, smax)
    assert p.handshake() == min(cmax, smax)


def test_server_may_not_answer_above_what_was_proposed() -> None:
    p = Pair(2, 4)
    p.s2c(m.AuthSuccess(SERVER_UUID))
    p.c2s(m.Version(2))
    with pytest.raises(LocalProtocolError):
        p.server.send(m.Version(3))
    p.client.receive_data(b"VERSION 3\n")
    with pytest.raises(PeerProtocolError):
        p.client.next_event()


def test_server_may_not_answer_above_its_own_max() -> None:
    p = Pair(4, 1)
    p.s2c(m.AuthSuccess(SERVER_UUID))
    p.c2s(m.Version(4))
    with pytest.raises(LocalProtocolError):
        p.server.send(m.Version(2))


def test_client_may_not_propose_above_its_max() -> None:
    p = Pair(1, 4)
    p.s2c(m.AuthSuccess(SERVER_UUID))
    with pytest.raises(LocalProtocolError):
        p.client.send(m.Version(2))


def test_old_server_answers_version_with_error() -> None:
    p = Pair(4, 4)
    p.s2c(m.AuthSuccess(SERVER_UUID))
    p.c2s(m.Version(4))
    assert p.s2c(m.Error("unknown command")) == [m.Error("unknown command")]
    assert p.client.version == p.server.version == 0
    p.both(State.IDLE)


def test_max_version_is_checked() -> None:
    with pytest.raises(ValueError):
        Connection(Role.CLIENT, MAX_VERSION + 1)
    with pytest.raises(ValueError):
        Connection(Role.SERVER, -1)


# --- requests ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("answer", [m.Success(), m.Failure(), m.Error("no")])
def test_checkpresent(version: int, answer: Message) -> None:
    p = pair_at(version)
    assert p.c2s(m.CheckPresent(KEY)) == [m.CheckPresent(KEY)]
    p.both(State.RESULT)
    assert p.s2c(answer) == [answer]
    p.both(State.IDLE)


@pytest.mark.parametrize("version", VERSIONS)
def test_lockcontent_then_unlock(version: int) -> None:
    p = pair_at(version)
    assert p.c2s(m.LockContent(KEY)) == [m.LockContent(KEY)]
    p.both(State.LOCK_RESULT)
    assert p.s2c(m.Success()) == [m.Success()]
    p.both(State.LOCKED)
    with pytest.raises(LocalProtocolError):  # the next message must be UNLOCKCONTENT
        p.client.send(m.CheckPresent(KEY))
    assert p.c2s(m.UnlockContent()) == [m.UnlockContent()]
    p.both(State.IDLE)


@pytest.mark.parametrize("answer", [m.Failure(), m.Error("no")])
def test_lockcontent_refused(answer: Message) -> None:
    p = pair_at(4)
    p.c2s(m.LockContent(KEY))
    p.s2c(answer)
    p.both(State.IDLE)
    with pytest.raises(LocalProtocolError):
        p.client.send(m.UnlockContent())


def test_server_receiving_another_request_while_locked() -> None:
    p = pair_at(4)
    p.c2s(m.LockContent(KEY))
    p.s2c(m.Success())
    p.server.receive_data(encode(m.CheckPresent(KEY)))
    with pytest.raises(PeerProtocolError):
        p.server.next_event()
    assert p.server.state is State.CLOSED


def test_unlockcontent_with_a_key_is_understood() -> None:
    p = pair_at(4)
    p.c2s(m.LockContent(KEY))
    p.s2c(m.Success())
    p.server.receive_data(f"UNLOCKCONTENT {KEY}\n".encode())
    assert events(p.server) == [m.UnlockContent()]
    assert p.server.state is State.IDLE


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "answer",
    [m.Success(), m.Failure(), m.SuccessPlus(("u1", "u2")), m.FailurePlus(("u1",)), m.Error("x")],
)
def test_remove(version: int, answer: Message) -> None:
    p = pair_at(version)
    p.c2s(m.Remove(KEY))
    p.both(State.REMOVE_RESULT)
    if isinstance(answer, (m.SuccessPlus, m.FailurePlus)) and version < 2:
        with pytest.raises(LocalProtocolError):
            p.server.send(answer)
        p.client.receive_data(encode(answer))
        with pytest.raises(PeerProtocolError):
            p.client.next_event()
        return
    assert p.s2c(answer) == [answer]
    p.both(State.IDLE)


@pytest.mark.parametrize("version", VERSIONS)
def test_remove_before_and_timestamps(version: int) -> None:
    p = pair_at(version)
    if version < 3:
        for msg in (m.GetTimestamp(), m.RemoveBefore(100, KEY)):
            with pytest.raises(LocalProtocolError):
                p.client.send(msg)
            p.server.receive_data(encode(msg))
            [bad] = events(p.server)
            assert isinstance(bad, BadRequest)
            assert bad.reply == "unexpected command"
            p.both(State.IDLE)
        with pytest.raises(LocalProtocolError):
            p.server.send(m.Timestamp(5))
        return
    assert p.c2s(m.GetTimestamp()) == [m.GetTimestamp()]
    p.both(State.TIMESTAMP_REPLY)
    assert p.s2c(m.Timestamp(9689)) == [m.Timestamp(9689)]
    p.both(State.IDLE)
    assert p.c2s(m.RemoveBefore(9700, KEY)) == [m.RemoveBefore(9700, KEY)]
    p.both(State.REMOVE_RESULT)
    assert p.s2c(m.SuccessPlus(("u",))) == [m.SuccessPlus(("u",))]
    p.both(State.IDLE)


@pytest.mark.parametrize("version", VERSIONS)
def test_bypass(version: int) -> None:
    p = pair_at(version)
    if version < 2:
        with pytest.raises(LocalProtocolError):
            p.client.send(m.Bypass(("gw",)))
        p.server.receive_data(b"BYPASS gw\n")
        [bad] = events(p.server)
        assert isinstance(bad, BadRequest)
        assert bad.reply == "unexpected command"
    else:
        assert p.c2s(m.Bypass(("gw1", "gw2"))) == [m.Bypass(("gw1", "gw2"))]
    p.both(State.IDLE)  # no reply either way


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("answer", [m.AlreadyHave(), m.AlreadyHavePlus(("u1",)), m.Error("ro")])
def test_put_answered_without_data(version: int, answer: Message) -> None:
    p = pair_at(version)
    assert p.c2s(m.Put("a file", KEY)) == [m.Put("a_file", KEY)]
    p.both(State.PUT_REPLY)
    if isinstance(answer, m.AlreadyHavePlus) and version < 2:
        with pytest.raises(LocalProtocolError):
            p.server.send(answer)
        return
    assert p.s2c(answer) == [answer]
    p.both(State.IDLE)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("validity", [m.Valid(), m.Invalid()])
@pytest.mark.parametrize(
    "result", [m.Success(), m.Failure(), m.SuccessPlus(("u",)), m.FailurePlus(()), m.Error("e")]
)
def test_put_with_data(version: int, validity: Message, result: Message) -> None:
    p = pair_at(version)
    p.c2s(m.Put(None, KEY))
    assert p.s2c(m.PutFrom(1)) == [m.PutFrom(1)]
    p.both(State.PUT_DATA)
    assert p.c2s(m.Data(2)) == [m.Data(2)]
    assert p.c_data(b"oo") == [DataChunk(b"oo", last=True)]
    if version >= 1:
        p.both(State.PUT_VALIDITY)
        with pytest.raises(LocalProtocolError):  # VALID or INVALID must come first
            p.client.send(m.DataPresent())
        assert p.c2s(validity) == [validity]
    else:
        with pytest.raises(LocalProtocolError):
            p.client.send(validity)
    p.both(State.PUT_RESULT)
    if isinstance(result, (m.SuccessPlus, m.FailurePlus)) and version < 2:
        with pytest.raises(LocalProtocolError):
            p.server.send(result)
        return
    assert p.s2c(result) == [result]
    p.both(State.IDLE)


@pytest.mark.parametrize("version", VERSIONS)
def test_put_data_present(version: int) -> None:
    p = pair_at(version)
    p.c2s(m.Put(None, KEY))
    p.s2c(m.PutFrom(0))
    if version < 4:
        with pytest.raises(LocalProtocolError):
            p.client.send(m.DataPresent())
        p.server.receive_data(b"DATA-PRESENT\n")
        with pytest.raises(PeerProtocolError):
            p.server.next_event()
        return
    assert p.c2s(m.DataPresent()) == [m.DataPresent()]
    p.both(State.PUT_RESULT)
    assert p.s2c(m.Success()) == [m.Success()]
    p.both(State.IDLE)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("validity", [m.Valid(), m.Invalid()])
@pytest.mark.parametrize("ack", [m.Success(), m.Failure()])
def test_get(version: int, validity: Message, ack: Message) -> None:
    p = pair_at(version)
    assert p.c2s(m.Get(0, "f", KEY)) == [m.Get(0, "f", KEY)]
    p.both(State.GET_DATA)
    assert p.s2c(m.Data(3)) == [m.Data(3)]
    assert p.s_data(b"fo") == [DataChunk(b"fo", last=False)]
    assert p.s_data(b"o") == [DataChunk(b"o", last=True)]
    if version >= 1:
        p.both(State.GET_VALIDITY)
        with pytest.raises(LocalProtocolError):  # the server's validity comes first
            p.client.send(ack)
        assert p.s2c(validity) == [validity]
    else:
        with pytest.raises(LocalProtocolError):
            p.server.send(validity)
    p.both(State.GET_ACK)
    assert p.c2s(ack) == [ack]
    p.both(State.IDLE)


def test_get_refused_with_error() -> None:
    p = pair_at(4)
    p.c2s(m.Get(0, None, KEY))
    assert p.s2c(m.Error("no")) == [m.Error("no")]
    p.both(State.IDLE)


C, S = Role.CLIENT, Role.SERVER
ANSWERING_POINTS: dict[str, list[tuple[Role, Message]]] = {
    "version": [(C, m.Version(4))],
    "checkpresent": [(C, m.CheckPresent(KEY))],
    "remove": [(C, m.Remove(KEY))],
    "remove-before": [(C, m.RemoveBefore(1, KEY))],
    "lockcontent": [(C, m.LockContent(KEY))],
    "gettimestamp": [(C, m.GetTimestamp())],
    "put": [(C, m.Put(None, KEY))],
    "put-result": [(C, m.Put(None, KEY)), (S, m.PutFrom(0)), (C, m.Data(0)), (C, m.Valid())],
    "data-present": [(C, m.Put(None, KEY)), (S, m.PutFrom(0)), (C, m.DataPresent())],
    "get": [(C, m.Get(0, None, KEY))],
}


@pytest.mark.parametrize("point", ANSWERING_POINTS)
def test_server_error_at_each_answering_point(point: str) -> None:
    p = pair_at(4)
    for sender, msg in ANSWERING_POINTS[point]:
        assert (p.c2s(msg) if sender is C else p.s2c(msg)) == [msg]
    assert p.states()[0] is not State.IDLE
    error = m.Error("this repository is read-only; write access denied")
    assert p.s2c(error) == [error]
    p.both(State.IDLE)
    assert p.c2s(m.CheckPresent(KEY)) == [m.CheckPresent(KEY)]  # and the session goes on


def test_server_may_send_error_unsolicited() -> None:
    p = pair_at(4)
    assert p.s2c(m.Error("going down")) == [m.Error("going down")]
    p.both(State.IDLE)


def test_client_error_closes_the_conversation() -> None:
    p = pair_at(4)
    assert p.c2s(m.Error("expected VALID or INVALID")) == [m.Error("expected VALID or INVALID")]
    p.both(State.CLOSED)
    with pytest.raises(LocalProtocolError):
        p.server.send(m.Success())
    with pytest.raises(LocalProtocolError):
        p.client.send(m.CheckPresent(KEY))


def test_client_error_in_the_middle_of_a_request() -> None:
    p = pair_at(4)
    p.c2s(m.Put(None, KEY))
    p.s2c(m.PutFrom(0))
    assert p.c2s(m.Error("expected PUT_FROM or ALREADY_HAVE")) == [
        m.Error("expected PUT_FROM or ALREADY_HAVE")
    ]
    p.both(State.CLOSED)


@pytest.mark.parametrize(
    "msg",
    [m.Success(), m.Data(1), m.PutFrom(0), m.Timestamp(1), m.AlreadyHave(), m.Valid()],
)
def test_server_cannot_send_out_of_turn(msg: Message) -> None:
    p = pair_at(4)
    with pytest.raises(LocalProtocolError):
        p.server.send(msg)
    p.both(State.IDLE)  # a refused send changes nothing


@pytest.mark.parametrize(
    "msg", [m.Success(), m.Data(1), m.Valid(), m.UnlockContent(), m.AuthSuccess("x")]
)
def test_client_cannot_send_out_of_turn(msg: Message) -> None:
    p = pair_at(4)
    with pytest.raises(LocalProtocolError):
        p.client.send(msg)
    p.both(State.IDLE)


# --- DATA framing --------------------------------------------------------------------------


def put_ready(version: int = 4) -> Pair:
    """A pair where the client is to send the DATA of a PUT."""
    p = pair_at(version)
    p.c2s(m.Put(None, KEY))
    p.s2c(m.PutFrom(0))
    return p


def get_ready(version: int = 4) -> Pair:
    """A pair where the server is to send the DATA of a GET."""
    p = pair_at(version)
    p.c2s(m.Get(0, None, KEY))
    return p


def test_data_wire_format_has_no_newline_after_payload() -> None:
    p = put_ready()
    wire = p.client.send(m.Data(3)) + p.client.send_data(b"foo") + p.client.send(m.Valid())
    assert wire == b"DATA 3\nfooVALID\n"
    p.server.receive_data(wire)
    assert events(p.server) == [m.Data(3), DataChunk(b"foo", last=True), m.Valid()]
    assert p.server.state is State.PUT_RESULT


def test_payload_that_looks_like_messages_is_data() -> None:
    payload = b"SUCCESS\nDATA 5\n\n\nVALID\n"
    p = get_ready()
    p.client.receive_data(b"DATA %d\n" % len(payload) + payload + b"INVALID\n")
    assert events(p.client) == [
        m.Data(len(payload)),
        DataChunk(payload, last=True),
        m.Invalid(),
    ]
    assert p.client.state is State.GET_ACK


@pytest.mark.parametrize("version", [0, 1, 4])
def test_data_zero(version: int) -> None:
    p = get_ready(version)
    wire = p.server.send(m.Data(0))
    assert wire == b"DATA 0\n"
    assert p.server.sending_payload == 0
    expected: list[Event] = [m.Data(0)]
    if version >= 1:
        wire += p.server.send(m.Invalid())
        expected.append(m.Invalid())
    p.client.receive_data(wire)
    assert events(p.client) == expected  # no DataChunk at all
    p.both(State.GET_ACK)


def test_payload_fed_byte_by_byte() -> None:
    payload = bytes(range(256)) + b"\n" * 3
    wire = b"DATA %d\n" % len(payload) + payload + b"VALID\n"
    p = get_ready()
    got: list[Event] = []
    for i in range(len(wire)):
        p.client.receive_data(wire[i : i + 1])
        got += events(p.client)
    assert got[0] == m.Data(len(payload))
    chunks = got[1:-1]
    assert all(isinstance(c, DataChunk) and len(c.data) == 1 for c in chunks)
    assert b"".join(c.data for c in chunks if isinstance(c, DataChunk)) == payload
    assert [c.last for c in chunks if isinstance(c, DataChunk)] == [False] * (len(payload) - 1) + [
        True
    ]
    assert got[-1] == m.Valid()


def test_payload_in_one_blob_with_next_message_glued_on() -> None:
    payload = b"x" * 10_000
    p = get_ready()
    p.client.receive_data(b"DATA 10000\n" + payload + b"VALID\n")
    assert events(p.client) == [m.Data(10_000), DataChunk(payload, last=True), m.Valid()]
    assert p.client.state is State.GET_ACK


@settings(deadline=None, max_examples=100, derandomize=True)
@given(
    st.binary(max_size=2000),
    st.lists(st.integers(0, 2100), max_size=20),
    st.sampled_from([0, 1, 4]),
)
def test_any_split_of_a_get_reply_gives_the_same_conversation(
    payload: bytes, cuts: list[int], version: int
) -> None:
    wire = b"DATA %d\n" % len(payload) + payload + (b"VALID\n" if version >= 1 else b"")
    p = get_ready(version)
    p.server.send(m.Data(len(payload)))
    p.server.send_data(payload)
    if version >= 1:
        p.server.send(m.Valid())
    bounds = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    got: list[Event] = []
    for a, b in itertools.pairwise(bounds):
        p.client.receive_data(wire[a:b])
        before = len(got)
        got += events(p.client)
        for ev in got[before:]:  # a chunk never holds more than was just fed
            if isinstance(ev, DataChunk):
                assert 0 < len(ev.data) <= b - a
    assert got[0] == m.Data(len(payload))
    chunks = [e for e in got if isinstance(e, DataChunk)]
    assert b"".join(c.data for c in chunks) == payload
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True] * bool(chunks)
    assert got[len(chunks) + 1 :] == ([m.Valid()] if version >= 1 else [])
    p.both(State.GET_ACK)


@settings(deadline=None, max_examples=100, derandomize=True)
@given(st.binary(min_size=1, max_size=2000), st.lists(st.integers(0, 2100), max_size=20))
def test_pieces_fed_before_events_are_read(payload: bytes, cuts: list[int]) -> None:
    wire = b"DATA %d\n" % len(payload) + payload + b"VALID\n"
    p = put_ready()
    bounds = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    for a, b in itertools.pairwise(bounds):
        p.server.receive_data(wire[a:b])  # no event read in between
    got = events(p.server)
    assert got[0] == m.Data(len(payload))
    assert b"".join(e.data for e in got if isinstance(e, DataChunk)) == payload
    assert got[-1] == m.Valid()


def test_a_piece_inside_a_payload_is_passed_on_without_a_copy() -> None:
    piece = bytes(range(256)) * 256
    p = put_ready()
    p.server.receive_data(p.client.send(m.Data(3 * len(piece))))
    assert events(p.server) == [m.Data(3 * len(piece))]
    p.server.receive_data(piece)
    (chunk,) = events(p.server)
    assert isinstance(chunk, DataChunk) and chunk.data is piece


def test_100_mib_payload_in_1_mib_pieces_stays_bounded() -> None:
    piece = bytes(range(256)) * 4096  # 1 MiB
    count = 100
    total = count * len(piece)
    p = put_ready()
    p.server.receive_data(p.client.send(m.Data(total)))
    assert events(p.server) == [m.Data(total)]
    received = 0
    for i in range(count):
        p.server.receive_data(p.client.send_data(piece))
        evs = events(p.server)
        for ev in evs:
            assert isinstance(ev, DataChunk)
            assert len(ev.data) <= len(piece)
            received += len(ev.data)
        assert len(p.server._buf) == 0  # nothing accumulates between pieces
        assert evs[-1].last is (i == count - 1)  # type: ignore[union-attr]
    assert received == total
    assert p.client.sending_payload == 0
    p.both(State.PUT_VALIDITY)


def test_payload_glued_to_the_data_line_in_unaligned_pieces() -> None:
    piece_size = 1 << 20
    payload = b"z" * (3 * piece_size)
    wire = b"DATA %d\n" % len(payload) + payload + b"VALID\n"
    p = put_ready()
    sizes: list[int] = []
    for start in range(0, len(wire), piece_size):
        p.server.receive_data(wire[start : start + piece_size])
        for ev in events(p.server):
            if isinstance(ev, DataChunk):
                sizes.append(len(ev.data))
                assert len(ev.data) <= piece_size
        assert len(p.server._buf) <= piece_size
    assert sum(sizes) == len(payload)
    assert p.server.state is State.PUT_RESULT


def test_sending_more_than_announced() -> None:
    p = put_ready()
    p.client.send(m.Data(3))
    with pytest.raises(LocalProtocolError):
        p.client.send_data(b"four")
    p.client.send_data(b"12")
    with pytest.raises(LocalProtocolError):
        p.client.send_data(b"34")
    assert p.client.sending_payload == 1


def test_sending_less_than_announced() -> None:
    p = put_ready()
    p.client.send(m.Data(3))
    p.client.send_data(b"12")
    for msg in (m.Valid(), m.Invalid(), m.Error("x"), m.Data(1)):
        with pytest.raises(LocalProtocolError):
            p.client.send(msg)
    assert p.client.send_data(b"3") == b"3"
    assert p.client.send(m.Valid()) == b"VALID\n"


def test_data_on_the_wrong_side() -> None:
    p = put_ready()
    with pytest.raises(LocalProtocolError):
        p.server.send(m.Data(1))
    p.client.receive_data(b"DATA 1\nx")
    with pytest.raises(PeerProtocolError):
        p.client.next_event()
    with pytest.raises(LocalProtocolError):
        p.server.send_data(b"x")  # nothing was announced


# --- EOF, overlong lines, garbage ---------------------------------------------------------


def test_clean_eof_between_messages() -> None:
    p = pair_at(4)
    p.server.receive_data(b"")
    assert events(p.server) == [Closed(State.IDLE)]
    assert p.server.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        p.server.send(m.Success())


def test_eof_with_a_request_pending() -> None:
    p = pair_at(4)
    p.c2s(m.CheckPresent(KEY))
    p.client.receive_data(b"")
    assert events(p.client) == [Closed(State.RESULT)]
    assert p.client.state is State.CLOSED


def test_eof_while_locked() -> None:
    p = pair_at(4)
    p.c2s(m.LockContent(KEY))
    p.s2c(m.Success())
    p.server.receive_data(b"")
    assert events(p.server) == [Closed(State.LOCKED)]


def test_eof_before_authentication() -> None:
    p = Pair()
    p.client.receive_data(b"")
    assert events(p.client) == [Closed(State.AUTH)]


@pytest.mark.parametrize("sent", [0, 1, 2])
def test_eof_inside_a_payload(sent: int) -> None:
    p = get_ready()
    p.client.receive_data(b"DATA 3\n" + b"foo"[:sent])
    p.client.receive_data(b"")
    assert events_until_error(p.client) == [m.Data(3)] + (
        [DataChunk(b"foo"[:sent], last=False)] if sent else []
    )
    assert p.client.state is State.CLOSED


def events_until_error(conn: Connection) -> list[Event]:
    got: list[Event] = []
    with pytest.raises(PeerProtocolError):
        for _ in range(1000):
            ev = conn.next_event()
            assert ev is not NEED_DATA
            got.append(ev)
    return got


@pytest.mark.parametrize("role", [Role.CLIENT, Role.SERVER])
def test_eof_inside_a_line(role: Role) -> None:
    conn = pair_at(4).client if role is Role.CLIENT else pair_at(4).server
    conn.receive_data(b"SUCC")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(PeerProtocolError):
        conn.next_event()
    assert conn.state is State.CLOSED


@pytest.mark.parametrize("role", [Role.CLIENT, Role.SERVER])
def test_line_longer_than_max_line(role: Role) -> None:
    conn = pair_at(4).client if role is Role.CLIENT else pair_at(4).server
    conn.receive_data(b"ERROR " + b"x" * (MAX_LINE - 6))
    assert conn.next_event() is NEED_DATA  # exactly MAX_LINE bytes may still end
    conn.receive_data(b"y")
    with pytest.raises(PeerProtocolError):
        conn.next_event()
    assert conn.state is State.CLOSED


def test_line_of_max_line_bytes_is_accepted() -> None:
    p = pair_at(4)
    p.client.receive_data(b"ERROR " + b"x" * (MAX_LINE - 6) + b"\n")
    assert events(p.client) == [m.Error("x" * (MAX_LINE - 6))]


@pytest.mark.parametrize(
    ("wire", "reply"),
    [
        (b"HELLO\n", "unknown command"),
        (b"NOTACOMMAND with fields\n", "unknown command"),
        (b"CHECKPRESENT ../../etc/passwd\n", "unknown command"),
        (b"DATA -1\n", "unknown command"),
        (b"\xff\xfe\n", "unknown command"),
        (b"\n", "unknown command"),
        (b"SUCCESS\n", "unexpected command"),
        (b"UNLOCKCONTENT\n", "unexpected command"),
        (b"VALID\n", "unexpected command"),
        (b"PUT-FROM 0\n", "unexpected command"),
        (b"AUTH u t\n", "unexpected command"),
        (b"CONNECT git-upload-pack\n", "unexpected command"),
        (b"NOTIFYCHANGE\n", "unexpected command"),
        (b"DATA 0\n", "unexpected command"),
    ],
)
def test_server_answers_bad_requests_and_carries_on(wire: bytes, reply: str) -> None:
    p = pair_at(4)
    p.server.receive_data(wire)
    [bad] = events(p.server)
    assert isinstance(bad, BadRequest)
    assert bad.reply == reply
    assert bad.line == wire.split(b"\n")[0]
    assert p.server.state is State.IDLE
    assert p.s2c(m.Error(bad.reply)) == [m.Error(bad.reply)]
    p.both(State.IDLE)
    assert p.c2s(m.CheckPresent(KEY)) == [m.CheckPresent(KEY)]
    assert p.s2c(m.Success()) == [m.Success()]


def test_server_bad_request_mid_request_is_fatal() -> None:
    p = put_ready()
    p.server.receive_data(b"HELLO\n")
    with pytest.raises(PeerProtocolError):
        p.server.next_event()
    assert p.server.state is State.CLOSED


@pytest.mark.parametrize(
    "wire",
    [b"HELLO\n", b"CHECKPRESENT " + str(KEY).encode() + b"\n", b"SUCCESS\n", b"DATA 1\nx"],
)
def test_client_receiving_garbage(wire: bytes) -> None:
    p = pair_at(4)
    p.client.receive_data(wire)
    with pytest.raises(PeerProtocolError):
        p.client.next_event()
    assert p.client.state is State.CLOSED


def test_client_receiving_wrong_answer() -> None:
    p = pair_at(4)
    p.c2s(m.CheckPresent(KEY))
    p.client.receive_data(b"PUT-FROM 0\n")
    with pytest.raises(PeerProtocolError):
        p.client.next_event()


# --- any bytes at all: only documented exceptions, always terminating --------------------

VALID_LINES = [
    encode(msg)
    for msg in [
        m.AuthSuccess(SERVER_UUID),
        m.Version(4),
        m.Version(1),
        m.CheckPresent(KEY),
        m.LockContent(KEY),
        m.UnlockContent(),
        m.Remove(KEY),
        m.RemoveBefore(5, KEY),
        m.GetTimestamp(),
        m.Timestamp(5),
        m.Put(None, KEY),
        m.Get(0, None, KEY),
        m.PutFrom(0),
        m.AlreadyHave(),
        m.Success(),
        m.SuccessPlus(("a",)),
        m.Failure(),
        m.Data(0),
        m.Data(3),
        m.DataPresent(),
        m.Valid(),
        m.Invalid(),
        m.Error("x"),
        m.Bypass(("b",)),
    ]
]
chunks = st.lists(st.one_of(st.binary(max_size=40), st.sampled_from(VALID_LINES)), max_size=30)


@settings(
    deadline=None,
    max_examples=300,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.sampled_from([Role.CLIENT, Role.SERVER]),
    st.sampled_from(["fresh", "idle", "put", "get", "locked"]),
    chunks,
    st.booleans(),
)
def test_arbitrary_bytes_only_raise_protocol_errors(
    role: Role, start: str, pieces: list[bytes], eof: bool
) -> None:
    if start == "fresh":
        p = Pair()
    elif start == "idle":
        p = pair_at(4)
    elif start == "put":
        p = put_ready()
    elif start == "get":
        p = get_ready()
    else:
        p = pair_at(4)
        p.c2s(m.LockContent(KEY))
        p.s2c(m.Success())
    conn = p.client if role is Role.CLIENT else p.server
    total = sum(map(len, pieces)) + 2
    feeds = [*pieces, b""] if eof else pieces
    try:
        for piece in feeds:
            conn.receive_data(piece)
            for _ in range(total + 5):  # each event consumes input, or it is the last
                ev = conn.next_event()
                if ev is NEED_DATA or isinstance(ev, Closed):
                    break
                assert isinstance(ev, (Message, DataChunk, BadRequest))
                if isinstance(ev, BadRequest):
                    assert conn.role is Role.SERVER
                    conn.send(m.Error(ev.reply))
            else:
                raise AssertionError("next_event kept producing events")
    except ProtocolError as e:
        assert isinstance(e, PeerProtocolError)
        assert conn.state is State.CLOSED
