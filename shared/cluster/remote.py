"""An external special remote over a ``shared.cluster.core.Cluster``: ``externaltype=cluster``,
and (with one gateway node) the base of ``externaltype=proxy``.

This class only translates between git-annex's requests and ``shared.cluster.core``;
placement, transfers and the data-safety rules live below it. Subclasses say
where the node list comes from (``node_specs``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

from annexremote import RemoteError

from shared.annex.keys import Key
from shared.annex.locationlog import records
from shared.annex.protocol import AnnexMaster, Remote
from shared.annex.remotelog import (
    DEAD,
    SEMITRUSTED,
    TRUSTED,
    UNTRUSTED,
    annex_remote_config,
    describe_uuid,
    remote_names,
    trust_levels,
)
from shared.cluster.badcopies import BadCopies, bad_copies_path
from shared.cluster.core import (
    Cluster,
    PresenceUnknown,
    RemoveFailed,
    RetrieveFailed,
    StoreFailed,
)
from shared.errors import ClusterError, InvalidKey, PermissionDenied
from shared.nodes import Node, generate_ciphers, open_node, with_ciphers
from shared.nodes.owner import Ownership, refusal
from shared.nodes.url import NodeSpec, parse_node_list

CONFIGS = {
    "nodes": "the cluster's nodes, whitespace-separated NAME=URL entries "
    "(file:///abs/path, sftp://[user@]host[:port]/path, "
    "annex+ssh://[user@]host[:port]/path, annex:///abs/path, "
    "annex+https://host[:port]/git-annex/UUID or "
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
    "force": "force=yes at initremote/enableremote: take over nodes that another remote "
    "owns (that remote can then no longer write or remove there), and accept a node that "
    "shares its objects with a trusted git-annex S3 remote; not stored",
}

_LEVELS = {TRUSTED: "trusted", SEMITRUSTED: "semitrusted", UNTRUSTED: "untrusted", DEAD: "dead"}


def shared_refusal(node: str, url: str, native: str, level: str) -> str:
    """The one line that refuses a node whose objects a git-annex S3 remote (UUID
    ``native``, trust ``level``) reports too, saying what to do."""
    names = remote_names(native)
    if names:
        return (
            f"node {node} ({url}) holds the objects of git-annex's S3 remote {names[0]} "
            f"(UUID {native}, {_LEVELS.get(level, level)}): both remotes report every object "
            "there, so git-annex counts one copy as two and lets drop go below numcopies; "
            f"run git annex untrust {names[0]} (git-annex then counts those objects once, "
            "through this remote), or share the storage anyway with force=yes "
            "(--force in nodes add|set|import)"
        )
    return (
        f"node {node} ({url}) holds the objects of a git-annex S3 remote that is not one of "
        f"this repository's: {describe_uuid(native)}, in its annex-uuid object; another "
        "repository stores and drops there. Give this node a bucket prefix of its own, or "
        "share the storage anyway with force=yes (--force in nodes add|set|import)"
    )


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
# git-annex repositories (they verify what they store: unencrypted chunks are refused)
_REPOSITORIES = ("annex", "annex+ssh", "annex+http", "annex+https")
_MARKED = ("file", "sftp", "s3")  # nodes whose storage records its owner


class ClusterRemote(Remote):
    # ORDERED: retrieve writes its file sequentially, so git-annex hashes it as it
    # grows instead of reading it again afterwards. Bytes of a bad copy may be seen
    # that way: the attempt then fails (see shared.cluster.verify.VerifiedFile), and a REMOVE
    # answering them removes only the bad copies (Cluster.remove_bad_copies).
    ordered = True
    #: bad copies found by reads are noted (read last, replaced by the next store);
    #: not where the one node is a gateway, which notes them among its own nodes
    notes_bad_copies = True

    def __init__(self, annex: AnnexMaster) -> None:
        super().__init__(annex)
        self.configs = dict(CONFIGS)
        self._cluster: Cluster | None = None
        self._gitdir: Path | None = None
        self._myuuid: str | None = None
        self._name = ""

    # -- configuration ------------------------------------------------------

    def _load(self, recorded: bool = True) -> Cluster:
        """Build the cluster from the remote's configuration, with one-line errors.

        ``recorded``: pin repository nodes to the UUIDs recorded at initremote (False
        while initremote/enableremote records them afresh)."""
        try:
            specs = self.node_specs()
            repos = [s.name for s in specs if s.scheme in _REPOSITORIES]
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
            marked = any(s.scheme in _MARKED for s in specs)
            uuid = self._uuid() if repos or marked else None
            ownership = self._ownership(uuid) if uuid and marked else None
            nodes = [open_node(s, uuid, ownership=ownership) for s in specs]
            copies, mincopies = self.policy()
            return Cluster(
                nodes,
                copies=copies,
                mincopies=mincopies,
                log=self.annex.debug,
                bad=BadCopies(self._bad_copies_path()),
                on_bad=self._say_bad,
                note_bad=self.notes_bad_copies,
            )
        except ClusterError as e:
            raise RemoteError(str(e)) from e

    def _uuid(self) -> str:
        """The remote's UUID, asked once per process (the nodes' ownership, the bad
        copies' journal and the location log all need it)."""
        if self._myuuid is None:
            self._myuuid = str(self.annex.getuuid())
        return self._myuuid

    def _git_dir(self) -> Path:
        if self._gitdir is None:
            self._gitdir = Path(self.annex.getgitdir()).absolute()
        return self._gitdir

    def _bad_copies_path(self) -> Path | None:
        """``.git/annex/cluster/<remote uuid>/bad-copies``: the bad copies this clone's
        reads found, read by ``status`` and ``fsck`` (see ``shared.cluster.badcopies``)."""
        try:
            return bad_copies_path(self._git_dir(), self._uuid())
        except Exception:  # a git-annex that cannot tell: keep them in memory
            return None

    def _say_bad(self, key: Key, node: str, why: str) -> None:
        # The reason without the key and node it repeats: the line stays readable.
        short = why.replace(f"node {node}: ", "").replace(f"{key}: ", "").replace(f"{key} ", "")
        self.annex.say(self.bad_copy_message(key, node, short))

    def bad_copy_message(self, key: Key, node: str, why: str) -> str:
        """The one line git-annex shows when a node's copy proves wrong."""
        return (
            f"node {node} holds a bad copy of {key} ({why}); reading the other nodes. "
            f"To replace it: git-annex-remote-cluster fsck {self._remote_name()} --repair"
        )

    def _remote_name(self) -> str:
        """The remote's name, asked once in ``prepare`` (messages come from worker
        threads too, which must not start a request of their own)."""
        return self._name or "REMOTE"

    def _recorded(self, key: Key) -> bool:
        """Whether git-annex records this remote as holding ``key`` (its location log)."""
        try:
            return records(key, self._uuid(), self._git_dir())
        except Exception as e:  # cannot tell: the stricter answer (a store tops it up)
            self.annex.debug(f"{key}: cannot read the location log: {e}")
            return False

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

    def _ownership(self, uuid: str) -> Ownership:
        """This remote as the owner of its nodes (``shared.nodes.owner``): others are
        named as this repository knows them."""

        def remedy() -> str:
            name = next(iter(remote_names(uuid)), "NAME")
            return (
                f"remove the node from the node list of {name}, or take the node over with "
                f"git annex enableremote {name} force=yes"
            )

        return Ownership(uuid, describe=describe_uuid, remedy=remedy)

    def initremote(self) -> None:
        """Check every node; claim the nodes that record their owner (refusing those
        another remote owns, and those whose objects a trusted git-annex S3 remote
        reports too, unless ``force=yes``); record the UUIDs of repository nodes and the
        ciphers of encrypting nodes (enableremote too)."""
        force = self.annex.getconfig("force").strip().lower()
        if force not in ("", "no", "false", "yes", "true"):
            raise RemoteError(f"force={force}: give force=yes or leave it out")
        self._record_ciphers()
        cluster = self._load(recorded=False)
        me = self._uuid() if any(n.records_owner for n in cluster.nodes) else ""
        take_over = force in ("yes", "true")
        problems = []
        uuids = []
        unclaimed: list[tuple[Node, str | None]] = []
        specs = {s.name: s for s in self.node_specs()}
        trust: dict[str, str] = {}
        for node in cluster.nodes:
            try:
                node.check()
                owner = self._owner(node, me, take_over) if node.records_owner else me
                self._shared(node, specs.get(node.name), me, take_over, trust)
                if owner != me:
                    unclaimed.append((node, owner))
            except ClusterError as e:
                problems.append(str(e))
            if node.uuid is not None:
                uuids.append(f"{node.name}={node.uuid}")
        if not problems:  # a refused remote claims nothing: it does not exist
            for node, owner in unclaimed:
                try:
                    self._claim(node, me, owner, take_over)
                except ClusterError as e:
                    problems.append(str(e))
        cluster.close()
        if force:  # an instruction for this run, never part of the stored configuration
            self.annex.setconfig("force", "")
        if problems:
            raise RemoteError("; ".join(problems))
        if uuids or self.annex.getconfig("nodeuuids"):
            self.annex.setconfig("nodeuuids", " ".join(uuids))

    def _owner(self, node: Node, me: str, take_over: bool) -> str | None:
        """The node's recorded owner; a refusal naming it when that is another remote
        (unless ``take_over``)."""
        owner = node.owner()
        if owner is not None and owner != me and not take_over:
            other = next(iter(remote_names(owner)), "OTHER")
            remedy = (
                "give this remote storage of its own, create it as the same remote as that "
                f"one (git annex initremote NAME --sameas={other} ...), or take the node "
                "over with force=yes (that remote can then no longer write or remove there)"
            )
            raise ClusterError(
                refusal(node.name, node.spec.url, owner, Ownership(me, describe_uuid, remedy))
            )
        return owner

    def _shared(
        self, node: Node, spec: NodeSpec | None, me: str, force: bool, trust: dict[str, str]
    ) -> None:
        """Refuse a node whose objects a git-annex S3 remote reports too (adopted with
        ``annexremote=``, or its ``annex-uuid`` object at the node's prefix) while that
        remote counts as a copy: git-annex would count each object there twice. An
        untrusted or dead remote counts for nothing, so the objects count once, through
        this remote. ``force``: accept it, saying so. ``trust``: the trust levels, read
        on first need."""
        natives = []
        if spec is not None and (adopted := spec.params.get("annexremote")):
            natives.append(annex_remote_config(adopted)[0])
        if (found := node.native_owner()) is not None:
            natives.append(found)
        for native in dict.fromkeys(natives):
            if native == me:  # the same remote: made with initremote --sameas
                continue
            if not trust:  # read once per run ("" keeps an empty log from being re-read)
                trust.update(trust_levels() or {"": SEMITRUSTED})
            level = trust.get(native, SEMITRUSTED)
            if level in (UNTRUSTED, DEAD):
                continue
            if not force:
                raise ClusterError(shared_refusal(node.name, node.spec.url, native, level))
            self.annex.say(
                f"node {node.name}: shares its objects with {describe_uuid(native)}, which "
                "git-annex counts as a second copy of each (force=yes)"
            )

    def _claim(self, node: Node, me: str, owner: str | None, take_over: bool) -> None:
        """Record this remote (``me``) as the owner of a node that had ``owner``. A clone
        that may only read the storage cannot record it: the first write claims it."""
        try:
            now = node.claim(me, take_over=take_over)
        except PermissionDenied as e:
            if owner is not None:
                raise
            self.annex.say(
                f"node {node.name}: cannot record this remote as its owner yet ({e}); "
                "the first write claims it"
            )
            return
        if now != me:  # another remote's first claim came just before ours
            raise ClusterError(f"node {node.name} was just claimed by {describe_uuid(now)}")

    def prepare(self) -> None:
        try:
            self._name = str(self.annex.getgitremotename())
        except Exception:  # a git-annex too old to say
            self._name = ""
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
        with self.annex.progress_meter(size=k.content_size) as meter:
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
        with self.annex.progress_meter(size=k.content_size) as meter:
            try:
                self.cluster.retrieve(k, local_file, meter)
            except RetrieveFailed as e:
                raise RemoteError(str(e)) from e
            except OSError as e:
                raise RemoteError(f"writing {local_file}: {e.strerror}") from e

    def checkpresent(self, key: str) -> bool:
        k = self._key(key)
        try:
            return self.cluster.present(k, self._recorded)
        except PresenceUnknown as e:
            raise RemoteError(str(e)) from e

    def remove(self, key: str) -> None:
        k = self._key(key)
        found = self.cluster.remove_bad_copies(k)
        if found is not None:
            noted, removed = found
            raise RemoteError(
                f"removed only the bad copies of {k} that reads found on node(s) "
                f"{', '.join(noted)} (removed from {', '.join(removed) or 'none'}), as "
                "git-annex may be judging their bytes: drop it again to remove it everywhere"
            )
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
