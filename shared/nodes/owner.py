"""One owner per node: which remote a node's storage belongs to, and a layer that keeps
every other remote's writes and removals away from it.

Plain storage (a ``file://`` or ``sftp://`` directory, an ``s3://`` bucket prefix)
holds a small marker naming its owner: the git-annex UUID of the cluster remote
(what GETUUID answers, shared by a ``sameas`` group) or the UUID of a gateway
target. Directories keep it in ``.cluster-owner`` at their root, which git-annex's
directory remote never looks at (it reads only the hash directories and ``tmp/``);
buckets keep it in the object ``<prefix>.cluster-owner``, a name no key can have
(every key, chunk key and HMAC name contains ``--``). git-annex repositories and
other gateways' targets have a UUID of their own, which the remote records and
checks (``nodeuuids``): they hold no marker.

``OwnedNode`` claims its node on the first write or removal of the process (one
request; storage written before markers existed is claimed then) and refuses
both, for the rest of the process, on a node another remote owns. Reads are
never refused.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from shared.annex.keys import Key
from shared.errors import NotOwner
from shared.nodes.base import Layer, Node
from shared.streams import Readable, Writable

MARKER = ".cluster-owner"
MARKER_MAX = 4096  # bytes read of a marker: anything longer is not ours
_UUID_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{7,63}")
_HEADER = (
    "# The git-annex remote (or gateway target) with the UUID below owns this storage:\n"
    "# no other remote writes or removes here. See git-annex-remote-cluster's\n"
    '# docs/operators.md, "One owner per node".\n'
)


def marker_text(uuid: str) -> bytes:
    """What a marker holds: a comment for whoever looks, then the owner's UUID."""
    if not _UUID_RE.fullmatch(uuid):
        raise ValueError(f"not a UUID: {uuid!r}")
    return (_HEADER + uuid + "\n").encode()


def parse_marker(data: bytes, node: str, where: str) -> str:
    """The UUID a marker names; ``NotOwner`` (owner unknown) when it names none: a
    record that cannot be read is never taken for "unowned"."""
    lines = [
        line.strip()
        for line in data.decode("utf-8", "replace").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if len(lines) == 1 and _UUID_RE.fullmatch(lines[0]):
        return lines[0]
    raise NotOwner(
        f"{where} does not name an owner (a UUID on a line of its own); fix or remove it",
        node,
    )


def plain(uuid: str) -> str:
    return f"UUID {uuid}"


@dataclass(frozen=True)
class Ownership:
    """Who is asking (``uuid``), how to name another owner for a user (``describe``:
    its remote's name or description where cheaply known), and what the user can do
    about a node another remote owns (``remedy``)."""

    uuid: str
    describe: Callable[[str], str] = plain
    #: text, or a function giving it when a message needs it (it may look names up)
    remedy: str | Callable[[], str] = (
        "remove it from the node list, or take it over (see docs/operators.md)"
    )

    def what_to_do(self) -> str:
        return self.remedy if isinstance(self.remedy, str) else self.remedy()


def refusal(name: str, url: str, owner: str, ownership: Ownership) -> str:
    """The one line that refuses a node another remote owns, naming the owner."""
    return (
        f"node {name} ({url}) belongs to {ownership.describe(owner)}, not to this one "
        f"(UUID {ownership.uuid}): {ownership.what_to_do()}"
    )


class OwnedNode(Layer):
    """Writes and removals only on storage ``ownership.uuid`` owns (claimed on the first
    of them in the process); reads always. See the module's docstring."""

    def __init__(self, inner: Node, ownership: Ownership) -> None:
        super().__init__(inner)
        self.ownership = ownership
        self._lock = threading.Lock()
        self._owner: str | None = None  # the recorded owner, once claimed or read
        self._seen: str | None = None  # the owner a presence check read (None: unclaimed)
        self._asked = False

    def _mine(self) -> None:
        """Claim the node once per process; raise ``NotOwner`` if another remote owns
        it. A node that cannot be asked raises its error and is asked again next time."""
        with self._lock:
            if self._owner is None:
                self._owner = self.inner.claim(self.ownership.uuid)
            owner = self._owner
        if owner != self.ownership.uuid:
            raise NotOwner(
                f"belongs to {self.ownership.describe(owner)}, not to this one "
                f"(UUID {self.ownership.uuid}): nothing is written to or removed from it here; "
                f"{self.ownership.what_to_do()}",
                self.name,
                owner,
            )

    def present(self, key: Key) -> int | None:
        """A node another remote owns confirms nothing for this one (NotOwner: its
        presence is "cannot tell"): its objects are that remote's, and counting them
        here would count one physical copy twice. Reads of its content still work."""
        with self._lock:
            if self._owner is None and not self._asked:
                self._seen = self.inner.owner()  # once per process; unclaimed: None
                self._asked = True
            owner = self._owner if self._owner is not None else self._seen
        if owner is not None and owner != self.ownership.uuid:
            raise NotOwner(
                f"belongs to {self.ownership.describe(owner)}, not to this one "
                f"(UUID {self.ownership.uuid}): what it holds does not count as this "
                f"remote's copy; {self.ownership.what_to_do()}",
                self.name,
                owner,
            )
        return self.inner.present(key)

    def store(self, key: Key, source: Readable, size: int) -> bool:
        self._mine()
        return self.inner.store(key, source, size)

    def overwrite(self, key: Key, source: Readable, size: int) -> None:
        self._mine()
        self.inner.overwrite(key, source, size)

    @property
    def resumable(self) -> bool:  # type: ignore[override]
        return self.inner.resumable

    def partial(self, key: Key) -> int:
        return self.inner.partial(key)

    def store_from(
        self, key: Key, source: Readable, size: int, offset: int, prefix: Callable[[bytes], None]
    ) -> bool:
        self._mine()
        return self.inner.store_from(key, source, size, offset, prefix)

    def retrieve(self, key: Key, sink: Writable, offset: int = 0) -> None:
        self.inner.retrieve(key, sink, offset)

    def remove(self, key: Key) -> None:
        self._mine()
        self.inner.remove(key)

    def __repr__(self) -> str:
        return f"<owned by {self.ownership.uuid} {self.inner!r}>"
