"""A cluster of nodes seen as one store.

Fan-out store, failover retrieve, safe presence, remove from all nodes.

The data-safety rules of the design live here: a key is present only when a
node confirms it; an unanswered node makes presence unknown, never absent;
remove goes to every node and fails naming the nodes that may still hold the key.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice
from typing import BinaryIO

from shared.annex.keys import Key
from shared.cluster.badcopies import BadCopies
from shared.cluster.fanout import DEPTH, QueueReader, fan_out
from shared.cluster.placement import rendezvous_order, spread_over_zones
from shared.cluster.verify import (
    CheckedStream,
    Progress,
    VerifiedFile,
    VerifiedReader,
    VerifyingSink,
)
from shared.errors import (
    BadReplica,
    ClusterError,
    ConfigError,
    IntegrityError,
    NodeError,
    NotFound,
    wrong_content,
)
from shared.nodes.base import UNKNOWN_SIZE, Layer, Node, Usage
from shared.nodes.url import DEFAULT_RESERVE
from shared.streams import CountingSink, Readable, Writable

USAGE_TTL = 5.0  # seconds a node's free space is trusted before it is asked again


def error_line(exc: BaseException) -> str:
    """One line for a user: our errors already name the node, others get their type."""
    if isinstance(exc, NodeError):
        text = super(NodeError, exc).__str__()
    elif isinstance(exc, ClusterError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


@dataclass
class StoreOutcome:
    """What a store did, node by node; the remote judges it against mincopies."""

    stored: list[str] = field(default_factory=list)  # newly written
    already: list[str] = field(default_factory=list)  # held the key before
    failed: dict[str, str] = field(default_factory=dict)  # node -> reason

    @property
    def copies(self) -> int:
        return len(self.stored) + len(self.already)

    def describe_failures(self) -> str:
        return "; ".join(f"node {n}: {r}" for n, r in self.failed.items())


class StoreFailed(ClusterError):
    def __init__(self, outcome: StoreOutcome, needed: int) -> None:
        self.outcome = outcome
        where = ", ".join(outcome.stored + outcome.already) or "no node"
        msg = f"stored on {outcome.copies} node(s) ({where}), {needed} required"
        if outcome.failed:
            msg += f"; {outcome.describe_failures()}"
        super().__init__(msg)


class RetrieveFailed(ClusterError):
    pass


class GetAgain(RetrieveFailed):
    """The right content is in place, but git-annex saw other bytes in its file during
    this attempt: it must not take this one as a success (see ``VerifiedFile``)."""

    def __init__(self, message: str, node: str) -> None:
        super().__init__(message)
        self.node = node  # whose copy is in place


@dataclass
class Census:
    """What the nodes answered about one key."""

    holders: list[str] = field(default_factory=list)  # confirmed, with the right size
    bad: dict[str, str] = field(default_factory=dict)  # node -> why its copy is wrong
    unknown: dict[str, str] = field(default_factory=dict)  # node -> why it did not answer


class PresenceUnknown(ClusterError):
    def __init__(self, message: str, unreachable: list[str] | None = None) -> None:
        super().__init__(message)
        self.unreachable = unreachable or []  # the nodes that could not be asked


class RemoveFailed(ClusterError):
    def __init__(self, key: Key, failed: dict[str, str]) -> None:
        self.failed = failed
        names = ", ".join(sorted(failed))
        reasons = "; ".join(f"node {n}: {r}" for n, r in sorted(failed.items()))
        super().__init__(f"could not remove {key}; it may still be on node(s) {names} ({reasons})")


class Cluster:
    """Nodes plus the replication policy (copies, mincopies)."""

    def __init__(
        self,
        nodes: Sequence[Node],
        copies: int | None = None,
        mincopies: int | None = None,
        log: Callable[[str], None] | None = None,
        bad: BadCopies | None = None,
        on_bad: Callable[[Key, str, str], None] | None = None,
        note_bad: bool = True,
        fanout_depth: int = DEPTH,
    ):
        """``log`` receives one line per notable step (which node, which offset, what
        failed); the remote sends them to git-annex's --debug output. ``bad`` keeps
        the bad copies reads find (in memory when None); ``on_bad`` is told of each
        (key, node, why) as it is found. ``note_bad=False``: nothing is noted (the one
        node is a gateway, which notes bad copies among its own nodes: a copy of
        ours noted bad would be removed before the next store, and removing it from
        a gateway removes every copy behind it). ``fanout_depth``: blocks queued for
        each node a store writes to (``shared.cluster.fanout``)."""
        self._log = log or (lambda _msg: None)
        self._fanout_depth = fanout_depth
        self.bad = bad if bad is not None else BadCopies()
        self.on_bad = on_bad
        self._unnoted = {
            n.name for n in nodes if not note_bad or getattr(_innermost(n), "is_gateway", False)
        }
        if not nodes:
            raise ConfigError("a cluster needs at least one node")
        self.nodes = list(nodes)
        self.copies = copies if copies is not None else len(self.nodes)
        self.mincopies = mincopies if mincopies is not None else self.copies
        if not 1 <= self.copies <= len(self.nodes):
            raise ConfigError(
                f"copies={self.copies} is impossible with {len(self.nodes)} node(s): "
                f"use 1 to {len(self.nodes)}"
            )
        for n in self.nodes:
            if n.spec.maxsize is not None and not n.counts_bytes:
                raise ConfigError(
                    f"node {n.name}: maxsize= needs a node that can count what it holds "
                    "(file:// or s3://); use weight= to give it fewer keys instead"
                )
        if not 1 <= self.mincopies <= self.copies:
            raise ConfigError(
                f"mincopies={self.mincopies} must be between 1 and copies={self.copies}"
            )
        self._room_lock = threading.Lock()
        self._used: dict[str, int] = {}  # bytes held, counted once, then kept up to date
        self._free: dict[str, tuple[float, Usage | None]] = {}  # (when asked, answer)
        # Requests are served one at a time, so a worker per node is enough; stores
        # get a pool of their own so that all of a wave's consumers run at once.
        self._pool = ThreadPoolExecutor(max_workers=len(self.nodes), thread_name_prefix="node")
        self._store_pool = ThreadPoolExecutor(
            max_workers=len(self.nodes), thread_name_prefix="store"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._store_pool.shutdown(wait=False, cancel_futures=True)
        for n in self.nodes:
            n.close()

    def order(self, key: Key) -> list[Node]:
        """The key's rendezvous order over all nodes."""
        return rendezvous_order(str(key), self.nodes, [n.spec.weight for n in self.nodes])

    def store_order(self, key: Key) -> list[Node]:
        """The nodes that take new data, in the order a store tries them: rendezvous
        order, spread over zones."""
        return spread_over_zones(
            [n for n in self.order(key) if n.spec.state.takes_new_data and n.spec.weight > 0]
        )

    def _with_room(self, nodes: list[Node], size: int, full: dict[str, str]) -> Iterator[Node]:
        """``nodes`` minus those that cannot take ``size`` more bytes (their reason goes
        to ``full``); asked lazily, so a store only asks the nodes it may use."""
        for node in nodes:
            why = self._no_room(node, size)
            if why is None:
                yield node
            else:
                full[node.name] = why
                self._log(f"node {node.name} skipped: {why}")

    def _no_room(self, node: Node, size: int) -> str | None:
        maxsize = node.spec.maxsize
        if maxsize is not None:
            used = self._used_bytes(node)
            if used is not None and used + size > maxsize:
                return f"full ({used} bytes held, maxsize {maxsize})"
        usage = self._usage(node)
        reserve = node.spec.reserve if node.spec.reserve is not None else DEFAULT_RESERVE
        if usage is not None and usage.free - size < reserve:
            return f"{usage.free} bytes free, {size} needed and {reserve} kept in reserve"
        return None

    def _used_bytes(self, node: Node) -> int | None:
        with self._room_lock:
            if node.name in self._used:
                return self._used[node.name]
        try:
            used = node.used()
        except Exception as e:  # unreachable, say: the store itself will say so
            self._log(f"node {node.name}: cannot count what it holds: {error_line(e)}")
            return None
        with self._room_lock:
            return self._used.setdefault(node.name, used)

    def _usage(self, node: Node) -> Usage | None:
        now = time.monotonic()
        with self._room_lock:
            cached = self._free.get(node.name)
        if cached is not None and now - cached[0] < USAGE_TTL:
            return cached[1]
        try:
            usage = node.usage()
        except Exception as e:  # free space is advice; the store decides
            self._log(f"node {node.name}: cannot tell its free space: {error_line(e)}")
            usage = None
        with self._room_lock:
            self._free[node.name] = (now, usage)
        return usage

    def _count_stored(self, key: Key, names: list[str], size: int) -> None:
        """Keep free space and bytes held up to date after a store to ``names``, whose
        copies are good now (a bad one noted before was replaced)."""
        with self._room_lock:
            for name in names:
                if name in self._used:
                    self._used[name] += size
                asked = self._free.get(name)
                if asked is not None and asked[1] is not None:
                    free = asked[1]
                    self._free[name] = (asked[0], Usage(free.free - size, free.total))
        self.bad.forget(key, names)

    # -- store --------------------------------------------------------------

    def store(self, key: Key, path: str, progress: Progress | None = None) -> StoreOutcome:
        """Put the file on ``copies`` nodes in rendezvous order, spilling over past failed ones.

        The file is read once per wave and streamed to the wave's nodes in parallel.
        Nodes that hold the key already say so without taking the data (there is no
        separate presence check: git-annex has just asked CHECKPRESENT).
        Raises StoreFailed (carrying the outcome) when fewer than mincopies hold it.
        """
        size = os.path.getsize(path)
        outcome = StoreOutcome()
        order = self.store_order(key)
        full: dict[str, str] = {}
        candidates = self._with_room(order, size, full)
        skipped = [n.name for n in self.nodes if n not in order]
        sent = 0  # bytes reported by the previous wave
        while outcome.copies < self.copies:
            wave = list(islice(candidates, self.copies - outcome.copies))
            if not wave:
                break
            if progress is not None and sent:
                progress(-sent)  # this wave starts over from byte 0
            sent = self._store_wave(key, path, size, wave, outcome, progress)
        self._count_stored(key, outcome.stored, size)
        if outcome.copies < self.mincopies:
            for name in skipped:
                outcome.failed.setdefault(name, "takes no new data (readonly, drain or weight 0)")
            for name, why in full.items():
                outcome.failed.setdefault(name, why)
            raise StoreFailed(outcome, self.mincopies)
        return outcome

    def store_stream(
        self, key: Key, source: Readable, size: int, progress: Progress | None = None
    ) -> StoreOutcome:
        """Like ``store``, from a stream that can be read only once (an upload passing
        through a gateway): one wave over the first ``copies`` nodes that take new
        data. A node that fails cannot be replaced by the next one (the bytes are
        gone), so the store succeeds when ``mincopies`` nodes hold the key. An error
        raised by ``source`` (a hash mismatch found at its end) aborts every node's
        store before anything is committed, and is raised again here.
        """
        order = self.store_order(key)
        full: dict[str, str] = {}
        wave = list(islice(self._with_room(order, size, full), self.copies))
        outcome = StoreOutcome()
        wrote: dict[str, bool] = {}
        results = self._fan_out(source, wave, wrote, progress or (lambda _n: None), key, size)
        self._judge(key, wave, wrote, results, outcome, 0)
        return self._settle(key, outcome, size, order, full)

    def _settle(
        self,
        key: Key,
        outcome: StoreOutcome,
        size: int,
        order: list[Node],
        full: dict[str, str],
    ) -> StoreOutcome:
        """Count what was stored; StoreFailed, naming every node passed over, when fewer
        than mincopies hold the key."""
        self._count_stored(key, outcome.stored, size)
        if outcome.copies < self.mincopies:
            for n in self.nodes:
                if n not in order:
                    outcome.failed.setdefault(
                        n.name, "takes no new data (readonly, drain or weight 0)"
                    )
            for name, why in full.items():
                outcome.failed.setdefault(name, why)
            raise StoreFailed(outcome, self.mincopies)
        return outcome

    # -- resumable uploads (a gateway's) --------------------------------------

    def resumable_wave(self, key: Key, size: int) -> list[Node] | None:
        """The nodes ``store_stream`` would send ``key`` to, when every one of them can
        resume an interrupted store; None otherwise."""
        wave = list(islice(self._with_room(self.store_order(key), size, {}), self.copies))
        return wave if wave and all(n.resumable for n in wave) else None

    def store_resuming(
        self, key: Key, source: Readable, size: int, offset: int, wave: list[Node]
    ) -> StoreOutcome:
        """``store_stream`` to ``wave``, each node continuing its kept bytes from
        ``offset`` (``source`` starts there), and keeping what it wrote if the source
        fails. Each node's copy, its kept bytes and the stream together, is checked
        against the key before it commits: kept bytes may come from anyone's upload."""
        outcome = StoreOutcome()
        wrote: dict[str, bool] = {}
        noted = self.bad.of(key)

        def consumer(node: Node) -> Callable[[QueueReader], None]:
            def store(reader: QueueReader) -> None:
                _drop_if_noted(node, key, noted)
                checked = VerifiedReader(reader, key, size - offset)
                update = checked.verifier.update
                wrote[node.name] = node.store_from(key, checked, size, offset, update)

            return store

        results = fan_out(
            source, {n.name: consumer(n) for n in wave}, None, self._store_pool, self._fanout_depth
        )
        self._judge(key, wave, wrote, results, outcome, 0)
        return self._settle(key, outcome, size, self.store_order(key), {})

    def _store_wave(
        self,
        key: Key,
        path: str,
        size: int,
        nodes: list[Node],
        outcome: StoreOutcome,
        progress: Progress | None,
    ) -> int:
        """Stream the file to ``nodes``; return the bytes reported to ``progress``."""

        wrote: dict[str, bool] = {}
        sent = 0

        def counted(n: int) -> None:
            nonlocal sent
            sent += n
            if progress is not None:
                progress(n)

        with open(path, "rb") as src:
            if len(nodes) == 1:
                results = self._store_one(src, nodes[0], wrote, counted, key, size)
            else:
                results = self._fan_out(src, nodes, wrote, counted, key, size)
        return self._judge(key, nodes, wrote, results, outcome, sent)

    def _store_one(
        self,
        src: BinaryIO,
        node: Node,
        wrote: dict[str, bool],
        counted: Callable[[int], None],
        key: Key,
        size: int,
    ) -> dict[str, BaseException | None]:
        """A wave of one node (copies=1, or the spill-over after a failure) reads the
        file itself: no thread, no queue, and a source that can seek, so a store that
        fails part-way for a passing reason (a dropped connection, a server's 500) is
        tried again from the start of the file (``RetryingNode``)."""
        try:
            _drop_if_noted(node, key, self.bad.of(key))
            wrote[node.name] = node.store(key, _Counted(src, counted), size)
        except Exception as e:
            return {node.name: e}
        return {node.name: None}

    def _fan_out(
        self,
        src: Readable,
        nodes: list[Node],
        wrote: dict[str, bool],
        counted: Callable[[int], None],
        key: Key,
        size: int,
    ) -> dict[str, BaseException | None]:
        noted = self.bad.of(key)

        def consumer(node: Node) -> Callable[[QueueReader], None]:
            def store(reader: QueueReader) -> None:
                _drop_if_noted(node, key, noted)
                wrote[node.name] = node.store(key, reader, size)

            return store

        return fan_out(
            src, {n.name: consumer(n) for n in nodes}, counted, self._store_pool, self._fanout_depth
        )

    def _judge(
        self,
        key: Key,
        nodes: list[Node],
        wrote: dict[str, bool],
        results: dict[str, BaseException | None],
        outcome: StoreOutcome,
        sent: int,
    ) -> int:
        for node in nodes:
            err = results.get(node.name)
            if err is None:
                (outcome.stored if wrote[node.name] else outcome.already).append(node.name)
            else:
                outcome.failed[node.name] = error_line(err)
                self._log(f"store {key}: node {node.name} failed: {outcome.failed[node.name]}")
        return sent

    # -- retrieve -----------------------------------------------------------

    def retrieve_order(self, key: Key) -> list[Node]:
        """Cheapest first; among equal costs, the key's rendezvous order (likeliest holders:
        the sort is stable)."""
        return sorted(self.order(key), key=lambda n: n.cost)

    def _read_order(self, key: Key, noted: set[str]) -> list[Node]:
        """``retrieve_order``, the nodes ``noted`` as holding a bad copy of the key last."""
        return sorted(self.retrieve_order(key), key=lambda n: n.name in noted)

    def _bad_copy(self, key: Key, node: str, why: str) -> None:
        """Note a node's wrong copy (for later reads, ``status`` and ``fsck``) and tell
        whoever runs us, in one line."""
        self._log(f"{key}: node {node} holds a bad copy: {why}")
        if node not in self._unnoted:
            self.bad.note(key, node, why)
        if self.on_bad is not None:
            self.on_bad(key, node, why)

    def retrieve(self, key: Key, path: str, progress: Progress | None = None) -> str:
        """Fill ``path`` with the key's content, resuming what is there; return the node
        used ("" when the content was already there, whole and right).

        Writes are strictly sequential (git-annex is told ORDERED). After a node
        fails mid-way, the next node continues from what has been written. Every
        byte is checked against the key (its size, and its hash where the key has
        one; what a resumed download already holds is hashed first): a node whose
        copy proves wrong is noted as holding a bad copy, what it wrote is dropped,
        and the next node starts from byte 0, beside git-annex's file; when it
        delivers the right content, that is put in place and GetAgain is raised, as
        git-annex saw the wrong bytes (see ``VerifiedFile``). Only when every node
        answered and every copy found is bad does git-annex get the last one, to
        judge for itself as it would any remote's content (``fsck --from`` then
        removes copies that are all bad); when a node could not be read, the get
        fails instead, since that node may hold the one good copy.
        """
        errors: dict[str, str] = {}
        absent: list[str] = []
        bad: dict[str, str] = {}
        noted = self.bad.of(key)
        done: str | None = None
        sink = VerifiedFile(path, key, progress)
        with sink:
            if sink.complete():
                sink.publish()
                return ""
            order = self._read_order(key, noted)
            i = 0
            while i < len(order):
                node = order[i]
                offset = sink.position()
                try:
                    if offset:
                        size = node.present(key)
                        if size is None:
                            absent.append(node.name)
                            i += 1
                            continue
                        if size == UNKNOWN_SIZE or offset > size:
                            # (Unknown: continuing might glue the ends of two different
                            # objects together, so start over.)
                            offset = sink.restart()
                    self._log(f"get {key}: from node {node.name}, starting at byte {offset}")
                    sink.starting(node.name)
                    node.retrieve(key, sink, offset)
                    sink.check()
                    done = node.name
                    break
                except NotFound:
                    absent.append(node.name)
                except Exception as e:
                    why = error_line(e)
                    if not wrong_content(e):
                        errors[node.name] = why
                        self._log(f"get {key}: node {node.name} failed: {why}")
                    elif offset and not sink.whole_from(node.name):
                        # Bytes kept from an earlier attempt (or node) may be the wrong
                        # ones: this node gets one more chance, from byte 0.
                        self._log(f"get {key}: node {node.name}: {why}; reading it whole")
                        sink.discard(complete=False)
                        continue
                    else:
                        bad[node.name] = why
                        self._bad_copy(key, node.name, why)
                        # No wrong byte may outlive this attempt.
                        sink.discard(complete=isinstance(e, BadReplica) and sink.finished)
                i += 1
            if done is not None:
                if done in noted:
                    self.bad.forget(key, [done])  # replaced since it was noted
                if sink.publish():
                    raise GetAgain(
                        f"the copy of {key} read first was wrong, node {done}'s is right "
                        "and is now in place: run the command again to use it "
                        "(git annex get retries by itself)",
                        done,
                    )
                return done
            if bad and not errors and sink.kept_whole():
                # Every copy there is, is bad: git-annex gets the last one and judges it.
                sink.publish()
                return next(reversed(bad))
        raise _retrieve_failed(key, errors, absent, bad)

    def retrieve_stream(self, key: Key, sink: Writable, offset: int = 0) -> str:
        """Write the key's content from ``offset`` to ``sink``, falling over to the next
        node from where the last one stopped; return the node that finished it.

        The content is checked against the key as it passes (its size, and its hash
        when the stream starts at byte 0 and the key has one). A node whose copy
        proves wrong cannot be continued by another: what it sent is gone. That
        raises IntegrityError, and the caller must make the receiver discard what
        it got; the copy is noted as bad, so that the next read of the key (the
        client asks again) tries that node last."""
        size = key.content_size
        if size is not None and offset > size:
            # The receiver holds more than the key has: its bytes are wrong, whatever
            # the nodes hold. Reading them would find every copy "too short" and note
            # good copies bad (which a later REMOVE deletes first).
            raise RetrieveFailed(f"{key}: asked for bytes from {offset}, past its end ({size})")
        errors: dict[str, str] = {}
        absent: list[str] = []
        counting = CountingSink(sink)
        checked = CheckedStream(counting, key, offset)
        noted = self.bad.of(key)
        sources: list[Node] = []  # the nodes whose bytes the stream holds
        for node in self._read_order(key, noted):
            try:
                start = checked.start()
                if start == 0:
                    sources.clear()
                sources.append(node)
                node.retrieve(key, checked, start)
                checked.check(node.name)
                if node.name in noted:
                    self.bad.forget(key, [node.name])
                return node.name
            except NotFound:
                absent.append(node.name)
                sources.remove(node)
            except Exception as e:
                errors[node.name] = error_line(e)
                self._log(f"get {key}: node {node.name} failed: {errors[node.name]}")
                if wrong_content(e):
                    self._blame(key, sources, node, errors[node.name])
                if counting.count and wrong_content(e):
                    raise IntegrityError(
                        f"{key}: node {node.name} sent wrong content ({errors[node.name]}) "
                        f"after {counting.count} bytes had gone out"
                    ) from e
        raise _retrieve_failed(key, errors, absent, {})

    def _blame(self, key: Key, sources: list[Node], last: Node, why: str) -> None:
        """Note the bad copy behind a stream that proved wrong. Bytes from one node:
        that node's copy. From several (a node failed part-way, the next continued):
        the wrong bytes may be anyone's, so each is read whole and checked, and only
        those that fail are noted (a good copy noted bad would be read last, and a
        gateway removes noted copies on the next REMOVE)."""
        if len(sources) <= 1:
            self._bad_copy(key, last.name, why)
            return
        for node in sources:
            sink = VerifyingSink(key)
            try:
                node.retrieve(key, sink)
                sink.verify()
            except (BadReplica, IntegrityError) as e:
                self._bad_copy(key, node.name, error_line(e))
            except Exception as e:  # cannot tell: note nothing
                self._log(f"{key}: could not re-read node {node.name} whole: {error_line(e)}")

    # -- presence -----------------------------------------------------------

    def census(self, key: Key, enough: int = 1) -> Census:
        """Ask the nodes whether they hold ``key`` until ``enough`` confirm it or every
        node has answered. The key's first nodes in placement order usually hold it,
        so the first ``enough`` are asked at once (the very first alone when one is
        enough: no thread) and the others only if those do not all confirm."""
        census = Census()
        order = self.order(key)
        first, rest = order[:enough], order[enough:]
        if len(first) == 1:
            self._ask(first[0], key, census)
        else:
            self._ask_all(first, key, census)
        if len(census.holders) < enough and rest:
            self._ask_all(rest, key, census, enough)
        return census

    def _ask(self, node: Node, key: Key, census: Census) -> None:
        try:
            if node.present(key) is not None:
                census.holders.append(node.name)
        except BadReplica as e:
            census.bad[node.name] = error_line(e)
            self._bad_copy(key, node.name, census.bad[node.name])
        except Exception as e:
            census.unknown[node.name] = error_line(e)

    def _ask_all(self, nodes: list[Node], key: Key, census: Census, enough: int = 0) -> None:
        futures: dict[Future[None], Node] = {
            self._pool.submit(self._ask, n, key, census): n for n in nodes
        }
        pending = set(futures)
        while pending:
            _done, pending = wait(pending, return_when=FIRST_COMPLETED)
            if enough and len(census.holders) >= enough:
                return  # the others' answers land in ``census`` as they come; unread

    def present(self, key: Key, recorded: Callable[[Key], bool] | None = None) -> bool:
        """What CHECKPRESENT (and LOCKCONTENT) answer: the cluster holds the key.

        True when ``mincopies`` nodes confirm it. A key that no node confirms is
        absent when every node answered, else PresenceUnknown. A key that fewer than
        ``mincopies`` nodes hold is under-replicated, and ``recorded`` (whether
        git-annex records the cluster as holding it) decides: if it does, the key was
        stored whole and has lost copies since, so it is present (``repair`` tops it
        up; ``fsck --from`` must not forget the copies that are left); if it does
        not, a store never reached ``mincopies``, so the key is absent: git-annex
        stores it again, which tops it up, and a drop never counts it. Without
        ``recorded`` (a gateway has no location log) neither answer is safe:
        PresenceUnknown, saying what to do.
        """
        census = self.census(key, self.mincopies)
        have = len(census.holders)
        if have >= self.mincopies:
            return True
        if have == 0:
            if census.unknown:
                detail = "; ".join(f"node {n}: {r}" for n, r in census.unknown.items())
                raise PresenceUnknown(
                    f"not on the reachable nodes, and could not check {detail}",
                    list(census.unknown),
                )
            return False
        held = ", ".join(census.holders)
        if recorded is None:
            raise PresenceUnknown(
                f"on {have} node(s) ({held}), fewer than mincopies={self.mincopies}: "
                "a store that fell short, or copies lost since; repair the cluster, or "
                "store it again with copy --fast"
            )
        if recorded(key):
            self._log(f"{key}: only on {held}, {self.mincopies} wanted; recorded as stored")
            return True
        self._log(f"{key}: only on {held}, {self.mincopies} wanted: absent until topped up")
        return False

    # -- remove -------------------------------------------------------------

    def remove_bad_copies(self, key: Key) -> tuple[list[str], list[str]] | None:
        """Before a REMOVE: when a read noted bad copies of the key, remove those only
        and return (the nodes noted, those removed); None: none noted, remove as usual.

        The caller must then fail the REMOVE. The bytes of a bad copy may have reached
        git-annex before they proved wrong (a gateway's stream, a file git-annex hashed
        or a proxying git-annex streamed as it grew): ``git annex fsck --from`` judges
        them and answers with REMOVE, which would go to every node, the good copies
        included. The client keeps recording the key; its next read gets a good copy,
        and a REMOVE asked again, with no bad copy noted any more, goes everywhere."""
        noted = self.bad.of(key)
        nodes = [n for n in self.nodes if n.name in noted]
        if not nodes:
            return None
        removed = []
        for node in nodes:
            try:
                node.remove(key)
                removed.append(node.name)
            except Exception as e:
                self._log(f"removing the bad copy of {key} from node {node.name}: {e}")
        self.bad.forget(key, removed)
        return [n.name for n in nodes], removed

    def remove(self, key: Key) -> None:
        """Remove from every node, not only those expected to hold the key."""
        futures = {n: self._pool.submit(n.remove, key) for n in self.nodes}
        failed: dict[str, str] = {}
        for node, fut in futures.items():
            try:
                fut.result()
            except Exception as e:
                failed[node.name] = error_line(e)
        self.bad.forget(key, [n.name for n in self.nodes if n.name not in failed])
        if failed:
            raise RemoveFailed(key, failed)


class _Counted:
    """A file being stored, reporting the bytes read as progress, and taking them
    back when the store seeks back to read it again."""

    def __init__(self, f: BinaryIO, counted: Callable[[int], None]) -> None:
        self._f, self._counted = f, counted

    def read(self, n: int = -1, /) -> bytes:
        data = self._f.read(n)
        if data:
            self._counted(len(data))
        return data

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int:
        before = self._f.tell()
        after = self._f.seek(offset, whence)
        if after != before:
            self._counted(after - before)
        return after


def _drop_if_noted(node: Node, key: Key, noted: set[str]) -> None:
    """Before a store: a copy noted bad may look present (a flipped bit keeps the
    size), so it is removed, and the store writes the good one instead of counting
    it as "already there"."""
    if node.name in noted:
        node.remove(key)


def _innermost(node: Node) -> Node:
    while isinstance(node, Layer):
        node = node.inner
    return node


def _retrieve_failed(
    key: Key, errors: dict[str, str], absent: list[str], bad: dict[str, str]
) -> RetrieveFailed:
    """Why no node gave the key: their errors, their bad copies, or that none holds it."""
    if errors or bad:
        detail = "; ".join(
            [f"node {n}: {r}" for n, r in errors.items()]
            + [f"node {n} holds a bad copy: {r}" for n, r in bad.items()]
        )
        hint = (
            " (run fsck --repair on the cluster to replace the bad copies)"
            if bad and not errors
            else ""
        )
        return RetrieveFailed(f"could not get {key} from any node ({detail}){hint}")
    return RetrieveFailed(f"{key} is on none of the nodes ({', '.join(absent)})")
