"""Carrying out a plan, and checking what the nodes hold.

A move copies the key from a holder to each new node, streamed through a bounded
pipe and checked against the key's hash on the way (``VerifiedReader``: a wrong
byte aborts the store before it commits), confirms the new copy is there, and
only then removes the key from the nodes that should no longer hold it, after
confirming again that ``copies`` other nodes hold it. Stopping at any point
(Ctrl-C, a crash, a lost connection) leaves every key with at least as many
copies as it had: a store in progress is never visible, and a removal happens
only after the copies it relies on are confirmed. Running the command again
continues, because the plan is computed afresh from what the nodes hold.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from shared.annex.keys import Key
from shared.cluster.badcopies import BadCopies
from shared.cluster.core import error_line
from shared.cluster.fanout import DEPTH, QueueReader
from shared.cluster.verify import VerifiedReader, VerifyingSink
from shared.errors import BadReplica, ClusterError, IntegrityError, NotFound
from shared.nodes.base import UNKNOWN_SIZE, Node
from shared.ops.plan import Move
from shared.ops.progress import Progress
from shared.streams import BLOCK, CountingSink


class Stopped(Exception):
    """The operator interrupted; raised inside transfers to abandon them."""


@dataclass
class MoveResult:
    key: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # node -> why its step failed
    kept: dict[str, str] = field(default_factory=dict)  # node -> why the key stays there


class _Pipe:
    """What a source node writes, read by a target node's store; bounded, and
    cancellable so that a source never blocks once the store is over."""

    def __init__(self, stop: threading.Event) -> None:
        self.q: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=DEPTH)
        self.done = threading.Event()
        self.stop = stop

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), BLOCK):
            self._put(bytes(view[start : start + BLOCK]))

    def _put(self, item: bytes | BaseException, final: bool = False) -> None:
        while True:
            # Data stops when the operator stops; the final item (EOF or the error) is
            # always delivered while the reader is there, or it would wait for ever.
            if self.done.is_set() or (self.stop.is_set() and not final):
                raise Stopped
            try:
                self.q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self, error: BaseException | None) -> None:
        with contextlib.suppress(Stopped):
            self._put(error if error is not None else b"", final=True)

    def abandon(self) -> None:
        self.done.set()
        while True:
            try:
                self.q.get_nowait()
            except queue.Empty:
                return


class _Discard:
    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def write(self, data: bytes) -> None:
        if self.stop.is_set():
            raise Stopped


class Mover:
    def __init__(
        self,
        nodes: Mapping[str, Node],
        copies: int,
        progress: Progress | None = None,
        log: Callable[[str], None] | None = None,
        bad: BadCopies | None = None,
    ) -> None:
        """``bad``: where a source's copy that proves wrong is noted (``status`` and
        ``fsck`` report it), as the remote's reads note theirs."""
        self.nodes, self.copies = nodes, copies
        self.bad = bad
        self.progress = progress
        self.log = log or (lambda _m: None)
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()

    # -- one copy ---------------------------------------------------------------

    def _sources(self, names: Iterable[str]) -> list[Node]:
        nodes = [self.nodes[n] for n in names if n in self.nodes]
        return sorted(nodes, key=lambda n: n.cost)

    def copy(
        self, key: Key, sources: Sequence[str], target: str, *, counted: int | None = None
    ) -> str:
        """Copy ``key`` to ``target`` from the first source that delivers it intact;
        return that source's name. The content is checked against the key before
        the target commits it, and the target is asked afterwards. ``counted``: what
        the progress total counts for this copy (the plan's size); when the source
        tells another size (a name that does not say it), the total follows."""
        errors: dict[str, str] = {}
        noted = self.bad.of(key) if self.bad is not None else set()
        if target in noted:
            # Its copy is bad and may look present (same size): take it away first, so
            # that the copy below writes the good one instead of finding "the key".
            self.nodes[target].remove(key)
        for source in self._sources([s for s in sources if s not in noted]):
            if self.stopping.is_set():
                raise Stopped
            attempt = _Attempt(self.progress)
            try:
                size = key.content_size
                if size is None:
                    size = source.present(key)
                    if size is None:
                        raise NotFound(f"{key} is not there", source.name)
                    if size == UNKNOWN_SIZE:
                        size = self._measure(key, source)
                if self.progress is not None and counted is not None and size != counted:
                    self.progress.add_total(size - counted)
                    counted = size
                self._transfer(key, size, source, self.nodes[target], attempt.add)
                if self.nodes[target].present(key) is None:
                    raise IntegrityError(f"{key} is not there after the copy", target)
                if self.bad is not None and target in noted:
                    self.bad.forget(key, [target])
                return source.name
            except Stopped:
                attempt.take_back()
                raise
            except Exception as e:
                attempt.take_back()  # the next source's bytes count instead
                errors[source.name] = error_line(e)
                self.log(f"copy {key} from {source.name} to {target} failed: {errors[source.name]}")
                if self.bad is not None and _bad_copy_of(e, source.name):
                    self.bad.note(key, source.name, errors[source.name])
        detail = "; ".join(f"from {n}: {r}" for n, r in errors.items()) or "no node holds it"
        raise ClusterError(f"could not copy {key} to {target} ({detail})")

    def _measure(self, key: Key, source: Node) -> int:
        """The size of a key whose node cannot tell it without reading it (an encrypted
        node, for a key without ``-s``): a first read that counts. Rare, and costs a
        read; a store must know the size before it starts."""
        sink = CountingSink(_Discard(self.stopping))
        source.retrieve(key, sink)
        return sink.count

    def _transfer(
        self,
        key: Key,
        size: int,
        source: Node,
        target: Node,
        counted: Callable[[int], None] | None = None,
    ) -> None:
        pipe = _Pipe(self.stopping)

        def produce() -> None:
            error: BaseException | None = None
            try:
                source.retrieve(key, pipe)
            except BaseException as e:
                error = e
            pipe.close(error)

        reader = _SourceChecked(
            VerifiedReader(QueueReader(pipe.q), key, size, on_bytes=counted), source.name
        )
        thread = threading.Thread(target=produce, name=f"copy-{source.name}", daemon=True)
        thread.start()
        try:
            target.store(key, reader, size)
        finally:
            pipe.abandon()
            thread.join()
        if self.stopping.is_set() and not reader.checked.checked:
            raise Stopped

    # -- one move ---------------------------------------------------------------

    def apply(self, move: Move) -> MoveResult:
        key = Key.parse(move.key)
        result = MoveResult(move.key)
        holders = [n for n in move.holders if n in self.nodes]
        for target in move.add:
            if self.stopping.is_set():
                raise Stopped
            try:
                self.copy(key, holders + result.added, target, counted=move.size or 0)
                result.added.append(target)
            except Stopped:
                raise
            except Exception as e:
                result.failed[target] = error_line(e)
        if move.remove:
            self._remove(key, move, result)
        if self.progress is not None:
            self.progress.key_done()
        return result

    def _remove(self, key: Key, move: Move, result: MoveResult) -> None:
        keepers = [n for n in (*move.holders, *result.added) if n not in move.remove]
        confirmed = self.confirmed(key, keepers)
        if len(confirmed) < self.copies:
            why = (
                f"only {len(confirmed)} other node(s) confirmed holding it "
                f"({', '.join(confirmed) or 'none'}), {self.copies} needed"
            )
            result.kept.update({n: why for n in move.remove})
            return
        for name in move.remove:
            if self.stopping.is_set():
                raise Stopped
            try:
                self.nodes[name].remove(key)
                result.removed.append(name)
            except Exception as e:
                result.failed[name] = error_line(e)

    def confirmed(self, key: Key, names: Iterable[str]) -> list[str]:
        """The nodes among ``names`` that confirm holding ``key`` now (a copy a read
        noted as bad confirms nothing)."""
        noted = self.bad.of(key) if self.bad is not None else set()
        out = []
        for name in names:
            if name in noted:
                continue
            try:
                if self.nodes[name].present(key) is not None:
                    out.append(name)
            except Exception as e:
                self.log(f"{key}: node {name} could not confirm: {error_line(e)}")
        return out

    # -- many moves -------------------------------------------------------------

    def run(self, moves: Sequence[Move], jobs: int = 1) -> tuple[list[MoveResult], bool]:
        """Apply ``moves``, ``jobs`` at a time; (results, finished). On Ctrl-C, transfers
        in progress are abandoned (nothing half-written becomes visible) and the
        results so far are returned with finished=False."""
        results: list[MoveResult] = []
        todo = iter(moves)
        with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="move") as pool:
            running: set[Future[MoveResult]] = set()
            try:
                while True:
                    while len(running) < max(1, jobs) and not self.stopping.is_set():
                        move = next(todo, None)
                        if move is None:
                            break
                        running.add(pool.submit(self.apply, move))
                    if not running:
                        break
                    done, running = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                    for future in done:
                        with contextlib.suppress(Stopped):
                            results.append(future.result())
            except KeyboardInterrupt:
                self.stop()
                for future in running:
                    with contextlib.suppress(Stopped, Exception):
                        results.append(future.result())
        return results, not self.stopping.is_set()


class _Attempt:
    """The bytes one copy attempt counted into the progress, so that a failed attempt
    takes them back (a copy counts once, however many sources it took)."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.count = 0
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        if self.progress is None:
            return
        with self.lock:
            self.count += n
        self.progress.add_bytes(n)

    def take_back(self) -> None:
        with self.lock:
            n, self.count = self.count, 0
        if n and self.progress is not None:
            self.progress.add_bytes(-n)


class _SourceChecked:
    """The verified stream from a source: a mismatch is that source's bad copy (the
    target only ever sees the error), so it is raised as BadReplica naming it."""

    def __init__(self, checked: VerifiedReader, source: str) -> None:
        self.checked, self.source = checked, source

    def read(self, n: int = -1, /) -> bytes:
        try:
            return self.checked.read(n)
        except BadReplica:
            raise
        except IntegrityError as e:
            raise BadReplica(str(e), self.source) from None


def _bad_copy_of(exc: BaseException, source: str) -> bool:
    """Whether ``exc`` (from a copy, however the target wrapped it) says the source's
    copy is wrong."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, BadReplica) and seen.node == source:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# -- fsck --------------------------------------------------------------------------


@dataclass
class CheckResult:
    key: str
    node: str
    status: str  # "ok", "corrupt", "missing", "unreadable"
    detail: str = ""
    hash_checked: bool = True


def check_copy(
    key: Key, node: Node, progress: Progress | None = None, *, counted: int | None = None
) -> CheckResult:
    """Read the node's copy whole and check it against the key (hash and size).
    ``counted``: what the progress total counts for this copy; once it is read whole,
    the total follows what it really was (a name that does not say its size)."""
    read = _Attempt(progress)
    sink = VerifyingSink(key, read.add if progress is not None else None)
    text = str(key)
    try:
        node.retrieve(key, sink)
        if progress is not None and counted is not None and read.count != counted:
            progress.add_total(read.count - counted)
        sink.verify()
    except IntegrityError as e:
        return CheckResult(text, node.name, "corrupt", error_line(e).removeprefix(f"{text}: "))
    except NotFound:
        return CheckResult(text, node.name, "missing", "listed, but gone when read")
    except Exception as e:
        return CheckResult(text, node.name, "unreadable", error_line(e))
    return CheckResult(text, node.name, "ok", hash_checked=sink.verifier.checks_hash)
