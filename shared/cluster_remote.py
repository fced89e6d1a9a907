"""An external special remote over a ``shared.cluster.Cluster``: ``externaltype=cluster``,
and (with one gateway node) the base of ``externaltype=proxy``.

This class only translates between git-annex's requests and ``shared.cluster``;
placement, transfers and the data-safety rules live below it. Subclasses say
where the node list comes from (``node_specs``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from annexremote import RemoteError

from shared.annexproto import AnnexMaster, Remote
from shared.cluster import (
    Cluster,
    PresenceUnknown,
    RemoveFailed,
    RetrieveFailed,
    StoreFailed,
)
from shared.errors import ClusterError, InvalidKey
from shared.keys import Key
from shared.nodes import generate_ciphers, open_node, with_ciphers
from shared.nodeurl import NodeSpec, parse_node_list

CONFIGS = {
    "nodes": "the cluster's nodes, whitespace-separated NAME=URL entries "
    "(file:///abs/path, sftp://[user@]host[:port]/path, "
    "annex+ssh://[user@]host[:port]/path, annex:///abs/path or "
    "s3://bucket/prefix?endpoint=URL, with optional "
    "?cost=N&weight=W&state=active|readonly|drain; file, sftp and s3 nodes also take "
    "chunk=SIZE and encryption=shared)",
    "copies": "how many nodes hold each key (default: all nodes)",
    "mincopies": "how many nodes must store a key for a store to succeed (default: copies)",
    "nodeuuids": "recorded by initremote/enableremote: the UUIDs of git-annex repository "
    "nodes (NAME=UUID ...), checked on every connection so that another repository "
    "at a node's path is never written to",
    "nodeciphers": "recorded by initremote/enableremote: the ciphers of nodes with "
    "encryption=shared (NAME=BASE64 ...), generated once and never replaced, so that "
    "every clone reads what any clone wrote",
}


def _parse_uuids(text: str) -> dict[str, str]:
    """``NAME=UUID ...`` as initremote records it; anything else is ignored (re-recorded
    by the next enableremote)."""
    pairs = (entry.partition("=") for entry in text.split())
    return {name: uuid for name, sep, uuid in pairs if sep and name and uuid}


def _positive_int(name: str, text: str) -> int | None:
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ClusterError(f"{name}={text!r} is not a whole number") from None
    if value < 1:
        raise ClusterError(f"{name}={value} must be at least 1")
    return value


def with_recorded(specs: list[NodeSpec], nodeuuids: str, nodeciphers: str) -> list[NodeSpec]:
    """Hand repository nodes their recorded UUIDs and encrypting nodes their ciphers
    (``nodeuuids``/``nodeciphers`` as the remote's configuration holds them)."""
    uuids = _parse_uuids(nodeuuids)
    return with_ciphers(
        [
            replace(s, params={**s.params, "uuid": uuids[s.name]})
            if s.scheme in _IDENTIFIED and s.name in uuids and "uuid" not in s.params
            else s
            for s in specs
        ],
        _parse_uuids(nodeciphers),
    )


_IDENTIFIED = ("annex", "annex+ssh", "gateway+ssh")  # nodes with a UUID of their own


class ClusterRemote(Remote):
    ordered = True  # retrieve writes the file sequentially, so git-annex proxies can stream it

    def __init__(self, annex: AnnexMaster) -> None:
        super().__init__(annex)
        self.configs = dict(CONFIGS)
        self._cluster: Cluster | None = None

    # -- configuration ------------------------------------------------------

    def _load(self, recorded: bool = True) -> Cluster:
        """Build the cluster from the remote's configuration, with one-line errors.

        ``recorded``: pin repository nodes to the UUIDs recorded at initremote (False
        while initremote/enableremote records them afresh)."""
        try:
            specs = self.node_specs()
            repos = [s.name for s in specs if s.scheme in ("annex", "annex+ssh")]
            if repos and not recorded:
                # At initremote/enableremote only: later, git annex testremote runs its
                # encrypted variants with the stored encryption=none, and the nodes
                # refuse unencrypted chunks themselves, key by key, saying why.
                self.check_chunking(repos)
            specs = with_recorded(
                specs,
                self.annex.getconfig("nodeuuids") if recorded else "",
                self.annex.getconfig("nodeciphers"),
            )
            repos += [s.name for s in specs if s.scheme == "gateway+ssh"]
            uuid = self.annex.getuuid() if repos else None
            nodes = [open_node(s, uuid) for s in specs]
            copies, mincopies = self.policy()
            return Cluster(nodes, copies=copies, mincopies=mincopies, log=self.annex.debug)
        except ClusterError as e:
            raise RemoteError(str(e)) from e

    def _record_ciphers(self) -> None:
        """Generate a cipher for each encrypting node that has none (see
        ``generate_ciphers``), in the remote's configuration."""
        ciphers = _parse_uuids(self.annex.getconfig("nodeciphers"))
        try:
            specs = self.node_specs()
        except ClusterError as e:
            raise RemoteError(str(e)) from e
        if generate_ciphers(specs, ciphers):
            self.annex.setconfig("nodeciphers", " ".join(f"{n}={c}" for n, c in ciphers.items()))

    def node_specs(self) -> list[NodeSpec]:
        """The nodes, from the remote's configuration."""
        return parse_node_list(self.annex.getconfig("nodes"))

    def policy(self) -> tuple[int | None, int | None]:
        """(copies, mincopies); None: the defaults."""
        return (
            _positive_int("copies", self.annex.getconfig("copies")),
            _positive_int("mincopies", self.annex.getconfig("mincopies")),
        )

    def check_chunking(self, repos: list[str]) -> None:
        """git-annex repositories check each object against its key, and a chunk of
        unencrypted content never matches (its key names the whole file): refuse the
        combination up front rather than fail every store."""
        chunk = self.annex.getconfig("chunk").strip()
        # (git annex testremote's variants may not pass encryption=: only "none" refuses;
        # the nodes refuse the chunks themselves anyway, with the same explanation.)
        encryption = self.annex.getconfig("encryption").strip()
        if chunk and chunk != "0" and encryption == "none":
            raise ClusterError(
                f"chunk={chunk} cannot be used with git-annex repository nodes "
                f"({', '.join(repos)}) unless encryption is on: a repository refuses "
                "chunks because they do not match their key; remove chunk= or use "
                "sftp:// or file:// nodes for chunked content"
            )

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            self._cluster = self._load()
        return self._cluster

    def initremote(self) -> None:
        """Check every node; record the UUIDs of repository nodes and the ciphers of
        encrypting nodes (enableremote too)."""
        self._record_ciphers()
        cluster = self._load(recorded=False)
        problems = []
        uuids = []
        for node in cluster.nodes:
            try:
                node.check()
            except ClusterError as e:
                problems.append(str(e))
            if node.uuid is not None:
                uuids.append(f"{node.name}={node.uuid}")
        cluster.close()
        if problems:
            raise RemoteError("; ".join(problems))
        if uuids or self.annex.getconfig("nodeuuids"):
            self.annex.setconfig("nodeuuids", " ".join(uuids))

    def prepare(self) -> None:
        cluster = self.cluster
        self.info = {
            "copies": str(cluster.copies),
            "mincopies": str(cluster.mincopies),
            **{
                f"node {n.name}": f"{n.spec.url} (state {n.spec.state.value}, cost {n.cost}, "
                f"weight {n.spec.weight:g}" + (f", zone {n.spec.zone}" if n.spec.zone else "") + ")"
                for n in cluster.nodes
            },
        }

    @staticmethod
    def _key(key: str) -> Key:
        try:
            return Key.parse(key)
        except InvalidKey as e:
            raise RemoteError(str(e)) from e

    # -- transfers ----------------------------------------------------------

    def transfer_store(self, key: str, local_file: str) -> None:
        k = self._key(key)
        with self.annex.progress_meter() as meter:
            try:
                outcome = self.cluster.store(k, local_file, meter)
            except StoreFailed as e:
                raise RemoteError(str(e)) from e
            except (ClusterError, OSError) as e:
                raise RemoteError(f"storing {k}: {e}") from e
        if outcome.failed:
            self.annex.say(
                f"{k} stored on {outcome.copies} of {self.cluster.copies} node(s) "
                f"({', '.join(outcome.stored + outcome.already)}); {outcome.describe_failures()}"
            )

    def transfer_retrieve(self, key: str, local_file: str) -> None:
        k = self._key(key)
        with self.annex.progress_meter() as meter:
            try:
                self.cluster.retrieve(k, local_file, meter)
            except RetrieveFailed as e:
                raise RemoteError(str(e)) from e
            except OSError as e:
                raise RemoteError(f"writing {local_file}: {e.strerror}") from e

    def checkpresent(self, key: str) -> bool:
        k = self._key(key)
        try:
            return self.cluster.present(k)
        except PresenceUnknown as e:
            raise RemoteError(str(e)) from e

    def remove(self, key: str) -> None:
        k = self._key(key)
        try:
            self.cluster.remove(k)
        except RemoveFailed as e:
            raise RemoteError(str(e)) from e

    # -- cheap questions ----------------------------------------------------

    def getcost(self) -> int:
        return min(n.cost for n in self.cluster.nodes)

    def getavailability(self) -> Literal["global", "local", "unavailable"]:
        return "local" if all(n.is_local for n in self.cluster.nodes) else "global"

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
