"""A sans-I/O P2P protocol engine, one class for both roles (after h11).

Feed it the bytes the peer sent (``receive_data``), take events out
(``next_event``), and turn what we want to say into bytes (``send`` and
``send_data``). It owns the framing (lines, ``DATA`` payloads delivered as
they arrive, so memory stays bounded whatever the object size) and the
conversation: which message may come next from which side, at which
protocol version. The table of legal moves is ``_MOVES``; version gates are
``_SINCE``. Drivers that own sockets, channels and timeouts are in
``shared.p2p.io``.

Our own mistakes raise ``LocalProtocolError``; the peer's raise
``PeerProtocolError`` and leave the connection unusable, except that a
server receiving a request it does not know gets a ``BadRequest`` event to
answer with ``ERROR`` and carries on, as git-annex-shell does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shared.errors import ClusterError
from shared.p2p import messages as m
from shared.p2p.messages import MAX_LINE, MAX_VERSION, MalformedMessage, Message


class ProtocolError(ClusterError):
    """The conversation broke a rule of the protocol."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow now (a bug on our side)."""


class PeerProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow; the connection is done."""


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"

    @property
    def other(self) -> Role:
        return Role.SERVER if self is Role.CLIENT else Role.CLIENT


class State(enum.Enum):
    """Whose turn it is and what may come; both peers track the same state."""

    AUTH = "waiting for authentication"
    AUTH_REPLY = "waiting for the answer to AUTH"
    IDLE = "waiting for a request"
    VERSION_REPLY = "waiting for VERSION"
    RESULT = "waiting for SUCCESS or FAILURE"
    REMOVE_RESULT = "waiting for the result of a removal"
    LOCK_RESULT = "waiting for the result of LOCKCONTENT"
    LOCKED = "waiting for UNLOCKCONTENT"
    TIMESTAMP_REPLY = "waiting for TIMESTAMP"
    PUT_REPLY = "waiting for PUT-FROM or ALREADY-HAVE"
    PUT_DATA = "waiting for the DATA of a PUT"
    PUT_VALIDITY = "waiting for VALID or INVALID after a PUT"
    PUT_RESULT = "waiting for the result of a PUT"
    GET_DATA = "waiting for the DATA of a GET"
    GET_VALIDITY = "waiting for VALID or INVALID after a GET"
    GET_ACK = "waiting for the client to acknowledge a GET"
    CLOSED = "closed"


C, S = Role.CLIENT, Role.SERVER

# (state, sender, message type) -> next state. DATA is handled apart (a payload follows).
_MOVES: dict[tuple[State, Role, type[Message]], State] = {
    (State.AUTH, C, m.Auth): State.AUTH_REPLY,
    (State.AUTH, S, m.AuthSuccess): State.IDLE,  # git-annex-shell speaks first, unasked
    (State.AUTH_REPLY, S, m.AuthSuccess): State.IDLE,
    (State.AUTH_REPLY, S, m.AuthFailure): State.AUTH,
    (State.IDLE, C, m.Version): State.VERSION_REPLY,
    (State.IDLE, C, m.Bypass): State.IDLE,
    (State.IDLE, C, m.CheckPresent): State.RESULT,
    (State.IDLE, C, m.LockContent): State.LOCK_RESULT,
    (State.IDLE, C, m.Remove): State.REMOVE_RESULT,
    (State.IDLE, C, m.RemoveBefore): State.REMOVE_RESULT,
    (State.IDLE, C, m.GetTimestamp): State.TIMESTAMP_REPLY,
    (State.IDLE, C, m.Put): State.PUT_REPLY,
    (State.IDLE, C, m.Get): State.GET_DATA,
    (State.VERSION_REPLY, S, m.Version): State.IDLE,
    (State.RESULT, S, m.Success): State.IDLE,
    (State.RESULT, S, m.Failure): State.IDLE,
    (State.REMOVE_RESULT, S, m.Success): State.IDLE,
    (State.REMOVE_RESULT, S, m.Failure): State.IDLE,
    (State.REMOVE_RESULT, S, m.SuccessPlus): State.IDLE,
    (State.REMOVE_RESULT, S, m.FailurePlus): State.IDLE,
    (State.LOCK_RESULT, S, m.Success): State.LOCKED,
    (State.LOCK_RESULT, S, m.Failure): State.IDLE,
    (State.LOCKED, C, m.UnlockContent): State.IDLE,
    (State.TIMESTAMP_REPLY, S, m.Timestamp): State.IDLE,
    (State.PUT_REPLY, S, m.AlreadyHave): State.IDLE,
    (State.PUT_REPLY, S, m.AlreadyHavePlus): State.IDLE,
    (State.PUT_REPLY, S, m.PutFrom): State.PUT_DATA,
    (State.PUT_DATA, C, m.DataPresent): State.PUT_RESULT,
    (State.PUT_VALIDITY, C, m.Valid): State.PUT_RESULT,
    (State.PUT_VALIDITY, C, m.Invalid): State.PUT_RESULT,
    (State.PUT_RESULT, S, m.Success): State.IDLE,
    (State.PUT_RESULT, S, m.Failure): State.IDLE,
    (State.PUT_RESULT, S, m.SuccessPlus): State.IDLE,
    (State.PUT_RESULT, S, m.FailurePlus): State.IDLE,
    (State.GET_VALIDITY, S, m.Valid): State.GET_ACK,
    (State.GET_VALIDITY, S, m.Invalid): State.GET_ACK,
    (State.GET_ACK, C, m.Success): State.IDLE,
    (State.GET_ACK, C, m.Failure): State.IDLE,
}
# Who sends DATA in which state, and the state after the payload (by version >= 1 or not).
_DATA: dict[State, tuple[Role, State, State]] = {
    State.PUT_DATA: (C, State.PUT_VALIDITY, State.PUT_RESULT),
    State.GET_DATA: (S, State.GET_VALIDITY, State.GET_ACK),
}
# States in which the server answers a request: an ERROR there is the answer.
_ANSWERING = {
    State.AUTH_REPLY,
    State.VERSION_REPLY,
    State.RESULT,
    State.REMOVE_RESULT,
    State.LOCK_RESULT,
    State.TIMESTAMP_REPLY,
    State.PUT_REPLY,
    State.PUT_RESULT,
    State.GET_DATA,
}
# The first protocol version that has a message; VERSION 0 peers know the rest.
_SINCE: dict[type[Message], int] = {
    m.Valid: 1,
    m.Invalid: 1,
    m.Bypass: 2,
    m.AlreadyHavePlus: 2,
    m.SuccessPlus: 2,
    m.FailurePlus: 2,
    m.RemoveBefore: 3,
    m.GetTimestamp: 3,
    m.Timestamp: 3,
    m.DataPresent: 4,
}


class _NeedData:
    """The type of NEED_DATA (a singleton)."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
"""``next_event`` found no complete event in what was received so far."""


@dataclass(frozen=True)
class DataChunk:
    """Part of a DATA payload, in order; ``last`` on the one that completes it."""

    data: bytes
    last: bool


@dataclass(frozen=True)
class BadRequest:
    """(Server role) a request we cannot take: send ``ERROR <reply>`` and go on serving,
    as git-annex does (its texts: "unknown command", "unexpected command")."""

    reply: str
    reason: str
    line: bytes


@dataclass(frozen=True)
class Closed:
    """The peer closed the stream between messages; ``state`` says what was pending
    (IDLE: a clean end; anything else: the request in flight is lost)."""

    state: State


Event = Message | DataChunk | BadRequest | Closed | _NeedData


class Connection:
    """One end of a P2P conversation. Not thread-safe: one driver owns it."""

    def __init__(self, role: Role, max_version: int = MAX_VERSION) -> None:
        if not 0 <= max_version <= MAX_VERSION:
            raise ValueError(f"max_version must be 0 to {MAX_VERSION}")
        self.role = role
        self.max_version = max_version
        self.version = 0  # until VERSION is agreed
        self.state = State.AUTH
        self._proposed = 0  # the VERSION the client asked for
        self._buf = bytearray()
        self._whole: bytes | None = None  # payload bytes received as they came: no copy
        self._eof = False
        self._in_payload = 0  # bytes of the peer's DATA still to come
        self._out_payload = 0  # bytes of our DATA still to send
        self._after_payload = State.IDLE

    # -- bookkeeping shared by both directions -----------------------------

    def _allowed(self, msg: Message, sender: Role) -> State:
        """The state after ``msg`` from ``sender``, or a reason it is not allowed."""
        since = _SINCE.get(type(msg), 0)
        if self.version < since:
            raise ProtocolError(f"{msg.command} needs protocol version {since}, not {self.version}")
        if isinstance(msg, m.Version) and sender is S and msg.version > self._proposed:
            raise ProtocolError(f"VERSION {msg.version} answers a proposal of {self._proposed}")
        if isinstance(msg, m.Error):
            if sender is C:
                return State.CLOSED  # the server gives up on a client that sent ERROR
            if self.state in _ANSWERING:
                return State.AUTH if self.state is State.AUTH_REPLY else State.IDLE
            return self.state  # unsolicited: either side may send ERROR at any time
        if isinstance(msg, m.Data):
            if self.state not in _DATA or _DATA[self.state][0] is not sender:
                raise ProtocolError(f"DATA is not expected from the {sender.value} now")
            return self.state
        nxt = _MOVES.get((self.state, sender, type(msg)))
        if nxt is None:
            raise ProtocolError(f"{msg.command} from the {sender.value} while {self.state.value}")
        return nxt

    def _apply(self, msg: Message, sender: Role, nxt: State) -> None:
        if isinstance(msg, m.Data):
            _, with_validity, without = _DATA[self.state]
            self._after_payload = with_validity if self.version >= 1 else without
            if sender is self.role:
                self._out_payload = msg.length
            else:
                self._in_payload = msg.length
            if msg.length == 0:
                self.state = self._after_payload
            return
        if isinstance(msg, m.Version):
            if sender is C:
                self._proposed = msg.version
            else:
                self.version = msg.version
        if isinstance(msg, m.Error) and self.state is State.VERSION_REPLY:
            self.version = 0  # an old server that does not know VERSION
        self.state = nxt

    # -- sending ------------------------------------------------------------

    def send(self, msg: Message) -> bytes:
        """The bytes for ``msg``; raises LocalProtocolError if it is not ours to send now."""
        if self._out_payload:
            raise LocalProtocolError(f"{self._out_payload} bytes of DATA are still to be sent")
        if self.state is State.CLOSED:
            raise LocalProtocolError("the connection is closed")
        if isinstance(msg, m.Version):
            if self.role is S and not msg.version <= min(self._proposed, self.max_version):
                raise LocalProtocolError(f"VERSION {msg.version} is above what was agreed")
            if self.role is C and msg.version > self.max_version:
                raise LocalProtocolError(f"VERSION {msg.version} is above our maximum")
        try:
            nxt = self._allowed(msg, self.role)
        except ProtocolError as e:
            raise LocalProtocolError(str(e)) from None
        data = m.encode(msg)
        self._apply(msg, self.role, nxt)
        return data

    def send_data(self, data: bytes) -> bytes:
        """Part of our announced DATA payload; refuses to send more than was announced."""
        if len(data) > self._out_payload:
            raise LocalProtocolError(
                f"{len(data)} bytes offered but only {self._out_payload} announced"
            )
        self._out_payload -= len(data)
        if self._out_payload == 0 and data:
            self.state = self._after_payload
        return data

    @property
    def sending_payload(self) -> int:
        """Bytes of our DATA still to send."""
        return self._out_payload

    # -- receiving ------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` means the peer closed its side."""
        if not data:
            self._eof = True
        elif not self._buf and self._whole is None and len(data) <= self._in_payload:
            self._whole = data  # the usual case in a big DATA: handed on as it is
        else:
            if self._whole is not None:
                self._buf += self._whole
                self._whole = None
            self._buf += data

    def _payload_chunk(self, chunk: bytes) -> DataChunk:
        self._in_payload -= len(chunk)
        if not self._in_payload:
            self.state = self._after_payload
        return DataChunk(chunk, last=not self._in_payload)

    def next_event(self) -> Event:
        """The next complete event, or NEED_DATA."""
        if self._in_payload:
            if self._whole is not None:
                chunk, self._whole = self._whole, None
                return self._payload_chunk(chunk)
            if not self._buf:
                if self._eof:
                    self.state = State.CLOSED
                    raise PeerProtocolError(
                        f"connection closed with {self._in_payload} bytes of DATA still due"
                    )
                return NEED_DATA
            n = min(self._in_payload, len(self._buf))
            chunk = bytes(memoryview(self._buf)[:n])
            del self._buf[:n]
            return self._payload_chunk(chunk)
        nl = self._buf.find(b"\n")
        if nl < 0:
            if len(self._buf) > MAX_LINE:
                self.state = State.CLOSED
                raise PeerProtocolError(f"no end of line in {len(self._buf)} bytes")
            if self._eof:
                if self._buf:
                    self.state = State.CLOSED
                    raise PeerProtocolError("connection closed in the middle of a message")
                was, self.state = self.state, State.CLOSED
                return Closed(was)
            return NEED_DATA
        line = bytes(self._buf[:nl])
        del self._buf[: nl + 1]
        try:
            msg = m.parse(line)
        except MalformedMessage as e:
            return self._bad(line, str(e), "unknown command")
        try:
            nxt = self._allowed(msg, self.role.other)
        except ProtocolError as e:
            return self._bad(line, str(e), "unexpected command")
        self._apply(msg, self.role.other, nxt)
        return msg

    def _bad(self, line: bytes, reason: str, reply: str) -> BadRequest:
        """A server answers a bad request and goes on; anything else ends the conversation."""
        if self.role is S and self.state is State.IDLE:
            return BadRequest(reply, reason, line)
        self.state = State.CLOSED
        shown = line[:200].decode("utf-8", "replace")
        raise PeerProtocolError(f"{reason} (peer sent {shown!r})")
