"""Which node holds which key: the starting point of rebalance, repair and fsck.

Every node is listed at once, in its own thread (``Node.list_keys``, streamed).
A node that cannot list (a git-annex repository behind a forced command, a
gateway's target) is asked about each key the repository knows instead. A node
that cannot be reached is recorded as *unlisted*, never as empty: callers decide
what that means (rebalance refuses to run, repair works around it).

Memory is one small entry per distinct key: the key's text and a bit mask of its
holders, which is what a million-key cluster needs and no more (about 200 MiB for a
million SHA256E keys); plus, for the keys whose names do not say their size
(encrypted, HMAC-named keys), the size the repository's keys give them
(``fill_sizes``). Nothing else here costs per key: the holders' names are one tuple
per distinct mask, and a key's size is read off its text, not parsed again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from shared.annex.keys import Key
from shared.errors import ClusterError, Unsupported
from shared.nodes.base import KnownKeys, Node

Listed = Callable[[str, int], None]  # (node name, keys listed so far), for progress
ASK_JOBS = 8  # presence requests in flight for a node that cannot list


@dataclass
class Inventory:
    names: list[str]
    holders: dict[str, int] = field(default_factory=dict)  # key text -> bit per node
    unlisted: dict[str, str] = field(default_factory=dict)  # node name -> why
    asked: list[str] = field(default_factory=list)  # nodes asked key by key
    sizes: dict[str, int] = field(default_factory=dict)  # sizes names do not tell

    _named: dict[int, tuple[str, ...]] = field(default_factory=dict, init=False, repr=False)
    _masks: dict[int, int] = field(default_factory=dict, init=False, repr=False)

    def bit(self, name: str) -> int:
        return 1 << self.names.index(name)

    def holders_of(self, key: str) -> tuple[str, ...]:
        return self.names_of(self.holders.get(key, 0))

    def names_of(self, mask: int) -> tuple[str, ...]:
        """The nodes a holders mask stands for, in ``names`` order: worked out once per
        distinct mask (a cluster has few: keys share their holders' combinations), not
        once per key and node."""
        names = self._named.get(mask)
        if names is None:
            names = self._named[mask] = tuple(n for i, n in enumerate(self.names) if mask >> i & 1)
        return names

    def copies_of(self, key: str) -> int:
        """How many listed nodes hold ``key``."""
        return self.holders.get(key, 0).bit_count()

    def key_texts(self) -> Iterator[str]:
        return iter(self.holders)

    def count_on(self, name: str) -> int:
        bit = self.bit(name)
        return sum(1 for mask in self.holders.values() if mask & bit)

    def size_of(self, key: str) -> int | None:
        """The size of the content stored under ``key``: a chunk's own share for a chunk
        key; for a name that hides it (HMAC), what ``fill_sizes`` found; else None."""
        size = content_size(key)
        return size if size is not None else self.sizes.get(key)

    def fill_sizes(self, sized: Iterable[tuple[Key, int]]) -> None:
        """Learn the sizes of the listed keys whose names do not tell them, from
        ``sized``: (stored name, size) pairs, such as the repository's keys under the
        HMAC names an encrypted remote stores them as. Only listed keys are kept."""
        unknown = {k for k in self.holders if self.size_of(k) is None}
        if not unknown:
            return
        for key, size in sized:
            text = str(key)
            if text in unknown:
                self.sizes[text] = size
                unknown.discard(text)
                if not unknown:
                    return


def content_size(text: str) -> int | None:
    """``Key.parse(text).content_size``, read off the text of a key that was parsed when
    it was listed (every text here was): plans and fsck ask it of every key, and a full
    parse, which validates it all again, costs more than the rest of a plan's step.
    None for a text that is not a key, as for a key without ``-s``."""
    end = text.find("--")
    if end <= 0:
        return None
    fields: dict[str, int] = {}
    for field_ in text[:end].split("-")[1:]:
        if len(field_) < 2 or not field_[1:].isdigit() or not field_[1:].isascii():
            return None
        fields[field_[0]] = int(field_[1:])
    size, chunk, num = fields.get("s"), fields.get("S"), fields.get("C")
    if size is None or chunk is None or num is None:
        return size
    return max(0, min(chunk, size - (num - 1) * chunk))


def take_inventory(
    nodes: Sequence[Node], known: KnownKeys | None, listed: Listed | None = None
) -> Inventory:
    """List every node in parallel; see the module's docstring. Without ``known`` (no
    repository), a node that cannot list is unlisted."""
    inv = Inventory([n.name for n in nodes])
    lock = threading.Lock()

    def add(bit: int, keys: Iterator[Key], name: str) -> None:
        count = 0
        batch: list[str] = []
        for key in keys:
            batch.append(str(key))
            if len(batch) >= 1000:
                count += _merge(inv, lock, batch, bit)
                if listed is not None:
                    listed(name, count)
        count += _merge(inv, lock, batch, bit)
        if listed is not None:
            listed(name, count)

    def one(i: int, node: Node) -> None:
        bit = 1 << i
        try:
            try:
                add(bit, node.list_keys(known), node.name)
            except Unsupported:
                if known is None:
                    raise
                _forget(inv, lock, bit)
                with lock:
                    inv.asked.append(node.name)
                add(bit, _ask(node, known), node.name)
        except ClusterError as e:
            _forget(inv, lock, bit)
            with lock:
                inv.unlisted[node.name] = str(e).removeprefix(f"node {node.name}: ")

    with ThreadPoolExecutor(max_workers=max(1, len(nodes)), thread_name_prefix="list") as pool:
        for future in [pool.submit(one, i, n) for i, n in enumerate(nodes)]:
            future.result()
    return inv


def _merge(inv: Inventory, lock: threading.Lock, batch: list[str], bit: int) -> int:
    n = len(batch)
    with lock:
        holders, masks = inv.holders, inv._masks
        for text in batch:
            mask = holders.get(text, 0) | bit
            # One int object per distinct mask, not one per key (masks past 256 are
            # not shared by Python): 28 bytes a key, 21 MiB at a million keys.
            holders[text] = masks.setdefault(mask, mask)
    batch.clear()
    return n


def _forget(inv: Inventory, lock: threading.Lock, bit: int) -> None:
    """Drop what a node listed before it failed: a partial list is no list."""
    with lock:
        for text in [t for t, m in inv.holders.items() if m & bit]:
            mask = inv.holders[text] & ~bit
            if mask:
                inv.holders[text] = mask
            else:
                del inv.holders[text]


def _ask(node: Node, known: KnownKeys) -> Iterator[Key]:
    """The known keys the node confirms, ``ASK_JOBS`` requests at a time. Any failure
    to answer fails the whole listing (an unanswered key is not an absent one)."""
    with ThreadPoolExecutor(max_workers=ASK_JOBS, thread_name_prefix=f"ask-{node.name}") as pool:
        window: list[tuple[Key, Future[int | None]]] = []
        for key in known():
            window.append((key, pool.submit(node.present, key)))
            if len(window) >= ASK_JOBS * 4:
                yield from _settle(window[: ASK_JOBS * 2])
                del window[: ASK_JOBS * 2]
        yield from _settle(window)


def _settle(window: list[tuple[Key, Future[int | None]]]) -> Iterator[Key]:
    for key, future in window:
        if future.result() is not None:
            yield key
