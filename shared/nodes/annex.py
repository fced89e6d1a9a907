"""``annex+ssh://[user@]host[:port]/path`` and ``annex:///path`` nodes: git-annex repositories.

The node is spoken to as git-annex speaks to its ssh remotes: ``git-annex-shell
p2pstdio DIR OUR-UUID --uuid NODE-UUID`` over one exec channel of the pooled
ssh connection (or a local subprocess for ``annex:///``), kept open for every
request of the process. The repository keeps its own location log, verifies
what it receives, and can be fscked on its own.

URL parameters: ``uuid=`` (the repository's UUID, checked on every connection;
discovered once with ``git-annex-shell configlist`` when not given) and
``shell=`` (the command that runs git-annex-shell there, like git-annex's
``remote.NAME.annex-shell``; default ``git-annex-shell``).
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import unquote, urlsplit

from shared.annex.keys import Key
from shared.errors import (
    ClusterError,
    ConfigError,
    IntegrityError,
    NodeError,
    NotFound,
    PermissionDenied,
    Unavailable,
    Unsupported,
)
from shared.nodes.base import CHEAP_COST, EXPENSIVE_COST, UNKNOWN_SIZE, ExactSource, Node
from shared.nodes.url import NodeSpec
from shared.p2p.engine import ProtocolError
from shared.p2p.io import APPENDONLY_ERROR, READONLY_ERROR, Client, ConnectionLost, PeerRefused
from shared.streams import Readable, Writable
from shared.transport.target import SSHTarget

if TYPE_CHECKING:
    import paramiko

    from shared.transport.ssh import SSHPool

# Who we are to the node's git-annex-shell (it records transfers under this UUID)
# when the caller does not say; the cluster remote passes its own UUID.
ANONYMOUS_UUID = "00000000-0000-0000-0000-000000000000"
IO_TIMEOUT = 60.0
VERIFY_RATE = 50 * 1024 * 1024  # bytes/s we allow the node for hashing what it received
STDERR_KEEP = 4096
# What ``git rev-parse --local-env-vars`` lists: they tie a git command to the repository
# of the git-annex that runs us, so a local node's git-annex-shell must not inherit them.
_REPO_ENV = frozenset(
    {
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_CONFIG",
        "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_COUNT",
        "GIT_OBJECT_DIRECTORY",
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_IMPLICIT_WORK_TREE",
        "GIT_GRAFT_FILE",
        "GIT_INDEX_FILE",
        "GIT_NO_REPLACE_OBJECTS",
        "GIT_REPLACE_REF_BASE",
        "GIT_PREFIX",
        "GIT_INTERNAL_SUPER_PREFIX",
        "GIT_SHALLOW_FILE",
        "GIT_COMMON_DIR",
    }
)


def _local_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _REPO_ENV}


_PARAMS = {
    "annex": ("uuid", "shell"),
    "annex+ssh": ("uuid", "shell"),
    "gateway+ssh": ("uuid", "command"),
}
GATEWAY_COMMAND = "git-annex-remote-proxy serve"


@dataclass(frozen=True)
class Wording:
    """How a node's messages name what answers there, what must be installed there,
    and the setting that gives the command to run: a git-annex repository node
    (``shell=``), a node that is our gateway's target (``command=``), or the one
    gateway of a proxy remote (``gatewaycommand=``, see ``reword``)."""

    peer: str  # "git-annex repository", "gateway"
    program: str  # what runs there: "git-annex" (git-annex-shell), "git-annex-remote-proxy"
    setting: str  # "shell=", "command=", "gatewaycommand="


REPOSITORY = Wording("git-annex repository", "git-annex", "shell=")
GATEWAY = Wording("gateway", "git-annex-remote-proxy", "command=")


def parse_annex_url(spec: NodeSpec) -> tuple[SSHTarget | None, str]:
    """(ssh target or None for a local repository, the directory as git-annex-shell takes it;
    for ``gateway+ssh://host/TARGET``, ``/TARGET``, which our gateway maps to the target)."""
    parts = urlsplit(spec.url)
    known = _PARAMS.get(parts.scheme, ())
    unknown = sorted(set(spec.params) - set(known))
    if unknown:
        raise ConfigError(
            f"node {spec.name}: unknown parameter(s) for {parts.scheme}:// nodes: "
            + ", ".join(unknown)
            + f" (known: {', '.join(known)})"
        )
    path = unquote(parts.path)
    if parts.scheme == "gateway+ssh":
        target = path.strip("/")
        if not parts.hostname or not target or "/" in target:
            raise ConfigError(
                f"node {spec.name}: gateway+ssh:// URL is gateway+ssh://[user@]host[:port]/TARGET"
            )
    if parts.scheme == "annex":
        if parts.netloc or not path.startswith("/"):
            raise ConfigError(
                f"node {spec.name}: annex:/// needs an absolute path: annex:///srv/repo"
            )
        return None, path.rstrip("/") or "/"
    if not parts.hostname:
        raise ConfigError(
            f"node {spec.name}: annex+ssh:// URL needs a host: annex+ssh://[user@]host/path"
        )
    try:
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"node {spec.name}: invalid port in {spec.url!r}") from e
    if not path.startswith("/") or path in ("/", "/~", "/~/"):
        raise ConfigError(
            f"node {spec.name}: annex+ssh:// needs the repository's path: "
            "/abs/path, or /~/path for home-relative"
        )
    user = unquote(parts.username) if parts.username else None
    return SSHTarget(host=parts.hostname, port=port, user=user), path.rstrip("/")


# -- transports: a running git-annex-shell, as a byte stream -------------------------


class _ChannelStream:
    """An exec channel as a Stream; its stderr is kept (the tail) for error messages."""

    def __init__(self, chan: paramiko.Channel) -> None:
        # Imported here, as ``pool`` does: nodes and gateways that use no ssh need not pay
        # for importing paramiko (a tenth of a second at every start).
        from shared.transport.ssh import send_all

        self._send_all = send_all
        self.chan = chan
        self._err = bytearray()

    def settimeout(self, seconds: float) -> None:
        self.chan.settimeout(seconds)

    def _drain_stderr(self) -> None:
        while self.chan.recv_stderr_ready():
            self._err += self.chan.recv_stderr(65536)
            del self._err[:-STDERR_KEEP]

    def recv(self, n: int, /) -> bytes:
        data: bytes = self.chan.recv(n)
        self._drain_stderr()
        return data

    def sendall(self, data: bytes, /) -> None:
        self._send_all(self.chan, data)
        self._drain_stderr()

    def stderr_text(self) -> str:
        with contextlib.suppress(Exception):
            if self.chan.status_event.wait(0.5 if self.chan.eof_received else 0):
                self._drain_stderr()
        self._drain_stderr()
        return " ".join(self._err.decode(errors="replace").split())

    def close(self) -> None:
        self.chan.close()


class _ProcessStream:
    """A local git-annex-shell's stdin/stdout as a Stream; stderr to a temp file."""

    def __init__(self, argv: Sequence[str]) -> None:
        self._stderr: BinaryIO = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        try:
            self.proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                bufsize=0,
                start_new_session=True,
                env=_local_env(),
            )
        except OSError:
            self._stderr.close()
            raise
        self.timeout = IO_TIMEOUT
        self._closed = False

    def settimeout(self, seconds: float) -> None:
        self.timeout = seconds

    def recv(self, n: int, /) -> bytes:
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        if not select.select([fd], [], [], self.timeout)[0]:
            raise TimeoutError
        return os.read(fd, n)

    def sendall(self, data: bytes, /) -> None:
        view = memoryview(data)
        fd = self.proc.stdin.fileno()  # type: ignore[union-attr]
        while view:
            if not select.select([], [fd], [], self.timeout)[1]:
                raise TimeoutError
            view = view[os.write(fd, view) :]

    def stderr_text(self) -> str:
        if self._stderr.closed:
            return ""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(0.5)
        self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, self._stderr.tell() - STDERR_KEEP))
        return " ".join(self._stderr.read().decode(errors="replace").split())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        try:  # end of input: git-annex-shell commits its journal and exits
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._stderr.close()


# -- the node ----------------------------------------------------------------------


class AnnexNode(Node):
    """A git-annex repository reached through git-annex-shell p2pstdio."""

    def __init__(
        self, spec: NodeSpec, client_uuid: str | None = None, pool: SSHPool | None = None
    ) -> None:
        super().__init__(spec)
        self.target, self.path = parse_annex_url(spec)
        self.client_uuid = client_uuid or ANONYMOUS_UUID
        gateway = urlsplit(spec.url).scheme == "gateway+ssh"
        shell = spec.params.get("command" if gateway else "shell") or (
            GATEWAY_COMMAND if gateway else "git-annex-shell"
        )
        self.is_gateway = gateway
        self.wording = GATEWAY if gateway else REPOSITORY
        # Gateways not to reach (BYPASS, P2P v2+): set before the session starts.
        self.bypass: tuple[str, ...] = ()
        try:
            self.shell = shlex.split(shell)
        except ValueError as e:
            raise ConfigError(f"node {spec.name}: {self.wording.setting}{shell!r}: {e}") from e
        if not self.shell:
            raise ConfigError(f"node {spec.name}: {self.wording.setting} must name a command")
        self._uuid: str | None = spec.params.get("uuid") or None
        self._pool = pool
        self._lock = threading.RLock()
        self._client: Client | None = None
        self._stream: _ChannelStream | _ProcessStream | None = None
        self.version: int | None = None  # negotiated, for messages and tests

    @property
    def uuid(self) -> str | None:
        return self._uuid

    @property
    def cost(self) -> int:
        if self.spec.cost is not None:
            return self.spec.cost
        return CHEAP_COST if self.target is None else EXPENSIVE_COST

    @property
    def is_local(self) -> bool:
        return self.target is None

    @property
    def where(self) -> str:
        if self.is_gateway:
            return f"target {self.path.strip('/')} of the gateway on {self.target}"
        return self.path if self.target is None else f"{self.path} on {self.target}"

    def _install(self) -> str:
        """What to do when the command is not there."""
        w = self.wording
        return f"install {w.program} there, or give the command's full path in {w.setting}"

    @property
    def pool(self) -> SSHPool:
        if self._pool is None:
            from shared.transport.ssh import default_pool  # (see _ChannelStream)

            self._pool = default_pool()
        return self._pool

    # -- running git-annex-shell ------------------------------------------------

    def _run(self, argv: Sequence[str]) -> tuple[int, str, str]:
        if self.target is None:
            try:
                p = subprocess.run(
                    list(argv),
                    capture_output=True,
                    timeout=IO_TIMEOUT,
                    stdin=subprocess.DEVNULL,
                    env=_local_env(),
                )
            except (OSError, subprocess.TimeoutExpired) as e:
                raise Unavailable(f"running {argv[0]}: {e}", self.name) from e
            return (
                p.returncode,
                p.stdout.decode(errors="replace"),
                p.stderr.decode(errors="replace"),
            )
        conn = self.pool.connection(self.target)
        status, out, err = conn.run(argv)
        return status, out.decode(errors="replace"), err.decode(errors="replace")

    def _open(self, argv: Sequence[str]) -> _ChannelStream | _ProcessStream:
        if self.target is None:
            try:
                return _ProcessStream(argv)
            except OSError as e:
                raise Unavailable(
                    f"cannot run {argv[0]!r}: {e.strerror or e}; {self._install()}", self.name
                ) from e
        return _ChannelStream(self.pool.connection(self.target).exec(argv))

    def discover_uuid(self) -> str:
        """The repository's UUID from ``git-annex-shell configlist``, asked once."""
        if self._uuid is None:
            status, out, err = self._run([*self.shell, "configlist", self.path])
            found = [
                line.partition("=")[2].strip()
                for line in out.splitlines()
                if line.startswith("annex.uuid=")
            ]
            if status != 0 or not found or not found[0]:
                detail = " ".join(err.split())[-300:] or f"exit status {status}"
                if status == 127:
                    detail = f"{self.shell[0]} was not found there ({detail}); {self._install()}"
                    if self.is_gateway:
                        raise Unavailable(f"cannot reach {self.where}: {detail}", self.name)
                elif self.is_gateway and status != 0:  # our gateway's last line says it all
                    last = next((ln.strip() for ln in reversed(err.splitlines()) if ln.strip()), "")
                    detail = last.removeprefix("git-annex-remote-proxy: ")[:1000] or detail
                    raise Unavailable(f"{self.where}: {detail}", self.name)
                if status == 0:
                    detail = "it has no annex.uuid; run 'git annex init' in it"
                raise Unavailable(
                    f"{self.where} is not a usable {self.wording.peer}: {detail}", self.name
                )
            self._uuid = found[0]
        return self._uuid

    def _session(self) -> Client:
        if self._client is not None and self._client.usable:
            return self._client
        self._drop()
        uuid = self.discover_uuid()
        argv = [*self.shell, "p2pstdio", self.path, self.client_uuid, "--uuid", uuid]
        stream = self._open(argv)
        client = Client(stream)
        try:
            client.handshake(expect_uuid=uuid, bypass=self.bypass)
        except (ClusterError, OSError, EOFError) as e:
            detail = stream.stderr_text() or str(e)
            stream.close()
            if self.shell[0] in detail and ("not found" in detail or "No such file" in detail):
                detail += f"; {self._install()}"
            raise Unavailable(
                f"no P2P session with {self.where} ({shlex.join(self.shell)} p2pstdio): {detail}",
                self.name,
            ) from e
        self._client, self._stream, self.version = client, stream, client.version
        return client

    def _drop(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()
        self._client, self._stream = None, None

    @contextlib.contextmanager
    def _request(self, what: str, timeout: float = IO_TIMEOUT) -> Iterator[Client]:
        """One request on the session; a broken session is dropped and reported as
        Unavailable (the retry wrapper reconnects), refusals as our error types."""
        with self._lock:
            try:
                client = self._session()
            except NodeError as e:
                e.node = e.node or self.name
                raise
            assert self._stream is not None
            self._stream.settimeout(timeout)
            try:
                yield client
            except PeerRefused as e:
                peer = self.wording.peer.removeprefix("git-annex ")  # "the gateway refused"
                raise _refusal(str(e), what, self.name, peer) from e
            except (ConnectionLost, ProtocolError, OSError, EOFError) as e:
                detail = self._stream.stderr_text() if self._stream else ""
                self._drop()
                raise Unavailable(
                    f"{what}: {e}" + (f" ({detail})" if detail else ""), self.name
                ) from e
            except BaseException:
                # Anything else (a failed source mid-DATA): the conversation cannot go on.
                if not client.usable:
                    self._drop()
                raise
            finally:
                if self._stream is not None:
                    self._stream.settimeout(IO_TIMEOUT)

    # -- Node interface -----------------------------------------------------

    def check(self) -> None:
        with self._request("connecting"):
            pass

    def present(self, key: Key) -> int | None:
        with self._request(f"checking {key}") as client:
            if not client.checkpresent(key):
                return None
        # P2P does not tell sizes: the one the key declares, where it does.
        size = key.content_size
        return UNKNOWN_SIZE if size is None else size

    def store(self, key: Key, source: Readable, size: int) -> bool:
        # (Our gateway takes them: it checks each chunk's size, as for encrypted keys.)
        if (
            key.is_chunk
            and not self.is_gateway
            and (key.size is not None or key.new_hash() is not None)
        ):
            raise IntegrityError(
                f"{key} is a chunk of unencrypted content, which a git-annex repository "
                "refuses (it does not match its key); use encryption= with chunk=, or no chunk=",
                self.name,
            )
        with self._request(f"storing {key}", IO_TIMEOUT + size / VERIFY_RATE) as client:
            try:
                result = client.put(key, ExactSource(source, size, key, self.name), size)
            except (PeerRefused, ConnectionLost, ProtocolError, NodeError):
                raise
            except ClusterError as e:  # the data ran short: nothing was committed
                raise IntegrityError(f"storing {key}: {e}", self.name) from e
        return result.stored

    def retrieve(self, key: Key, sink: Writable, offset: int = 0) -> None:
        with self._request(f"reading {key}") as client:
            got, valid = client.get(key, sink, offset)
            expected = key.content_size
            if valid and (expected is None or offset + got == expected or offset >= expected):
                return
            # Bytes already written are wrong whether or not the key is still there:
            # "absent" would let the next node continue after them.
            present = got > 0 or client.checkpresent(key)
        if not present:
            raise NotFound(f"{key} is not in {self.where}", self.name)
        raise IntegrityError(
            f"{key} changed or was cut short while read from {self.where} ({got} bytes)", self.name
        )

    def remove(self, key: Key) -> None:
        with self._request(f"removing {key}") as client:
            removed, _ = client.remove(key)
        if not removed:
            why = (
                "a node of the target failed, or another client holds the key locked; the "
                "gateway's log says which"
                if self.is_gateway
                else "it may be locked by a running git-annex, or the repository could not "
                "be written"
            )
            raise NodeError(f"{self.where} did not remove {key} ({why})", self.name)

    def list_names(self) -> Iterator[str]:
        """Walks the repository's object directory (see ``shared.nodes.annexlist``)."""
        from shared.nodes import annexlist

        if self.is_gateway:
            raise Unsupported("a gateway's target cannot be listed", self.name)
        if self.target is None:
            return annexlist.local_object_names(self.path, _local_env(), self.name)
        chan = self.pool.connection(self.target).exec(annexlist.remote_command(self.path))
        chan.shutdown_write()
        return annexlist.remote_object_names(chan, self.where, self.name)

    def close(self) -> None:
        with self._lock:
            self._drop()


def _refusal(text: str, what: str, node: str, peer: str) -> NodeError:
    """The node's ERROR reply, as the type that says what to do about it."""
    if READONLY_ERROR in text or APPENDONLY_ERROR in text:
        return PermissionDenied(f"{what}: the {peer} refused: {text}", node)
    if "did not accept the content" in text:
        return IntegrityError(f"{what}: {text}", node)
    return NodeError(f"{what}: the {peer} refused: {text}", node)


def reword(node: Node, wording: Wording) -> None:
    """Make the git-annex repository or gateway node under ``node``'s layers word its
    messages as ``wording`` says (a proxy remote: its gateway, ``gatewaycommand=``)."""
    inner: Node | None = node
    while inner is not None and not isinstance(inner, AnnexNode):
        inner = getattr(inner, "inner", None)
    if inner is not None:
        inner.wording = wording
