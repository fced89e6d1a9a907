"""``externaltype=proxy``: one gateway, reached over one ssh session, as a git-annex remote.

The gateway is either ours (``gateway=ssh://[user@]host[:port] target=NAME``: the
remote runs ``git-annex-remote-proxy serve`` there, or ``gatewaycommand=``) or a
native git-annex gateway (``gateway=annex+ssh://[user@]host[:port]/path
target=UUID``: ``git-annex-shell p2pstdio path ... --uuid UUID``, where UUID is
a remote or cluster the gateway proxies), or a server of git-annex's HTTP API
(``gateway=annex+https://host[:port]/git-annex/ target=UUID``: ``git annex p2phttp``
or our ``git-annex-remote-proxy http``, an ``annex+https://`` node of
``shared.nodes.http``). Either way the gateway is one
git-annex repository node spoken to over P2P, so this is the cluster remote
with that single node.
"""

from __future__ import annotations

import re
import shlex
from urllib.parse import quote, urlsplit

from annexremote import RemoteError

from shared.annex.keys import Key
from shared.annex.protocol import AnnexMaster
from shared.cluster.core import Cluster, RemoveFailed, StoreFailed
from shared.cluster.remote import ClusterRemote
from shared.errors import ClusterError, ConfigError
from shared.nodes.annex import Wording, reword
from shared.nodes.url import NAME_RE, NodeSpec, parse_node

DEFAULT_COMMAND = "git-annex-remote-proxy serve"
_UUID_RE = re.compile(r"[0-9a-fA-F-]{36}")

CONFIGS = {
    "gateway": "ssh://[user@]host[:port] for a git-annex-remote-proxy gateway, "
    "annex+ssh://[user@]host[:port]/path/to/repo for a native git-annex gateway, or "
    "annex+https://host[:port]/git-annex/ for a server of git-annex's HTTP API "
    "(git annex p2phttp, or git-annex-remote-proxy http)",
    "target": "the target's name on our gateway over ssh; its UUID over annex+http(s), "
    "and the UUID of the remote or cluster a native gateway proxies",
    "gatewaycommand": f"the command run on our gateway (default: {DEFAULT_COMMAND}), "
    "e.g. to add --config FILE; for a native gateway, the git-annex-shell to run",
    "nodeuuids": "recorded by initremote/enableremote: the UUID the gateway answered with",
}

# How the gateway's messages read to the remote's user: what runs there, and the
# parameter that says how to run it.
OUR_GATEWAY = Wording("gateway", "git-annex-remote-proxy", "gatewaycommand=")
NATIVE_GATEWAY = Wording("git-annex gateway", "git-annex", "gatewaycommand=")


class ProxyRemote(ClusterRemote):
    notes_bad_copies = False  # the gateway notes them, among its nodes

    def __init__(self, annex: AnnexMaster) -> None:
        super().__init__(annex)
        self.configs = dict(CONFIGS)

    def _native(self) -> bool:
        gateway: str = self.annex.getconfig("gateway")
        return urlsplit(gateway).scheme in ("annex+ssh", "annex+http", "annex+https")

    def _load(self, recorded: bool = True) -> Cluster:
        cluster = super()._load(recorded)
        for node in cluster.nodes:
            reword(node, NATIVE_GATEWAY if self._native() else OUR_GATEWAY)
        return cluster

    def _command(self) -> str:
        """``gatewaycommand=``, checked to be a command line."""
        command: str = self.annex.getconfig("gatewaycommand").strip()
        try:
            words = shlex.split(command)
        except ValueError as e:
            raise ConfigError(f"gatewaycommand={command!r}: {e}") from None
        if command and not words:
            raise ConfigError("gatewaycommand= must name a command, or be left out")
        return command

    def node_specs(self) -> list[NodeSpec]:
        gateway = self.annex.getconfig("gateway").strip()
        target = self.annex.getconfig("target").strip()
        parts = urlsplit(gateway)
        if not gateway:
            raise ConfigError(
                "gateway= is missing: gateway=ssh://user@host for a git-annex-remote-proxy "
                "gateway, or gateway=annex+ssh://user@host/path/to/repo for a native one"
            )
        if not target:
            raise ConfigError("target= is missing: the target's name (or a native gateway's UUID)")
        if parts.scheme == "ssh":
            if parts.path not in ("", "/") or parts.query:
                raise ConfigError(
                    f"gateway={gateway!r}: give only ssh://[user@]host[:port]; the target "
                    "goes in target="
                )
            if not NAME_RE.fullmatch(target):
                raise ConfigError(f"target={target!r} is not a target name")
            command = self._command() or DEFAULT_COMMAND
            # Our gateway's target, as a cluster names one (a node of ours, not a
            # git-annex repository: it takes chunk keys, checking their size).
            url = f"gateway+ssh://{parts.netloc}/{target}?command={quote(command, safe='')}"
        elif parts.scheme == "annex+ssh":
            if not _UUID_RE.fullmatch(target):
                raise ConfigError(
                    f"target={target!r}: a native gateway's target is the UUID of the remote "
                    "or cluster it proxies (git annex info on the gateway lists them)"
                )
            if parts.query:
                raise ConfigError(f"gateway={gateway!r} must not have a ?query")
            url = f"{gateway}?uuid={target}"
            command = self._command()
            if command:  # git-annex-shell elsewhere than on the login PATH
                url += f"&shell={quote(command, safe='')}"
        elif parts.scheme in ("annex+http", "annex+https"):
            # git-annex's HTTP API (git annex p2phttp, or our gateway's http server):
            # the target's UUID follows /git-annex/. Never a name: the API has no
            # handshake that tells the client the UUID, so the URL's is the node's
            # UUID everywhere (nodeuuids, what the server answers for).
            path = parts.path.rstrip("/")
            if not path.endswith("/git-annex") or parts.query or parts.fragment:
                raise ConfigError(
                    f"gateway={gateway!r}: give the server's annexUrl, "
                    f"{parts.scheme}://host[:port]/git-annex/; the target goes in target="
                )
            if not _UUID_RE.fullmatch(target):
                raise ConfigError(
                    f"target={target!r}: over git-annex's HTTP API the target is its UUID, "
                    "not its name (on a git-annex-remote-proxy gateway, gateway list shows "
                    "each target's UUID; for git annex p2phttp, the served repository's "
                    "git config annex.uuid)"
                )
            if self._command():
                raise ConfigError("gatewaycommand= does not apply to an annex+http(s) gateway")
            url = f"{parts.scheme}://{parts.netloc}{path}/{quote(target, safe='')}"
        else:
            raise ConfigError(
                f"gateway={gateway!r}: use ssh://[user@]host[:port], "
                "annex+ssh://[user@]host[:port]/path or annex+https://host[:port]/git-annex/"
            )
        return [parse_node(f"gateway={url}")]

    def bad_copy_message(self, key: Key, node: str, why: str) -> str:
        return (
            f"the gateway sent a bad copy of {key} ({why}); it reads another node when "
            "asked again. To replace it, on the gateway: git-annex-remote-proxy gateway "
            "fsck TARGET --repair"
        )

    def policy(self) -> tuple[int | None, int | None]:
        return 1, 1

    # A failed store or removal, said as the gateway's failure (the remote's one node),
    # not as a cluster's count of nodes.

    def transfer_store(self, key: str, local_file: str) -> None:
        try:
            super().transfer_store(key, local_file)
        except RemoteError as e:
            cause = e.__cause__
            if isinstance(cause, StoreFailed) and cause.outcome.failed:
                raise RemoteError("; ".join(cause.outcome.failed.values())) from cause
            raise

    def remove(self, key: str) -> None:
        try:
            super().remove(key)
        except RemoteError as e:
            cause = e.__cause__
            if isinstance(cause, RemoveFailed) and cause.failed:
                why = "; ".join(cause.failed.values())
                raise RemoteError(f"could not remove {key} through the gateway: {why}") from cause
            raise

    def check_chunking(self, repos: list[str]) -> None:
        """A native gateway's nodes are repositories that check each object against
        its key: an unencrypted chunk never matches. (Our gateway takes chunk keys.)"""
        try:
            super().check_chunking(repos)
        except ClusterError:
            chunk = self.annex.getconfig("chunk").strip()
            raise ConfigError(
                f"chunk={chunk} cannot be used through a native git-annex gateway unless "
                "encryption is on: its repositories refuse chunks, which do not match their "
                "key; remove chunk=, or use encryption= with it, or reach a "
                "git-annex-remote-proxy gateway (gateway=ssh://...), which takes chunks"
            ) from None

    def prepare(self) -> None:
        super().prepare()
        self.info = {
            "gateway": self.annex.getconfig("gateway"),
            "target": self.annex.getconfig("target"),
        }
