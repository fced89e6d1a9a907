"""The mover on real file:// nodes: copies are verified before they commit, fall over
to another source, removals wait for confirmed copies, and a stop mid-transfer
returns promptly leaving nothing half-written."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest
from node_conformance import make_key, payload

from shared.annex.keys import Key
from shared.cluster.badcopies import BadCopies
from shared.nodes.base import Layer, Node
from shared.nodes.file import FileNode
from shared.nodes.url import parse_node
from shared.ops.mover import Mover, check_copy
from shared.ops.plan import Move
from shared.streams import Writable

pytestmark = pytest.mark.timeout(60)


def node(tmp_path: Path, name: str) -> FileNode:
    root = tmp_path / name
    root.mkdir()
    return FileNode(parse_node(f"{name}=file://{root}"))


def corrupt(n: FileNode, key: Key) -> None:
    (path,) = [p for p in Path(n.root).rglob(key.file_name) if p.is_file()]
    path.parent.chmod(0o755)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))


class Slow(Layer):
    """Retrieves in small pieces, slowly, so a transfer is in flight for a while."""

    def __init__(self, inner: Node, started: threading.Event) -> None:
        super().__init__(inner)
        self.started = started

    def present(self, key: Key) -> int | None:
        return self.inner.present(key)

    def store(self, key: Key, source: object, size: int) -> bool:
        return self.inner.store(key, source, size)  # type: ignore[arg-type]

    def remove(self, key: Key) -> None:
        self.inner.remove(key)

    def retrieve(self, key: Key, sink: Writable, offset: int = 0) -> None:
        buf = io.BytesIO()
        self.inner.retrieve(key, buf, offset)
        data = buf.getvalue()
        for i in range(0, len(data), 1000):
            sink.write(data[i : i + 1000])
            self.started.set()
            time.sleep(0.01)


def test_a_corrupt_source_never_becomes_a_copy_and_the_next_source_is_used(
    tmp_path: Path,
) -> None:
    a, b, c = (node(tmp_path, n) for n in "abc")
    data = payload(50_000)
    key = make_key(data)
    for n in (a, b):
        n.store(key, io.BytesIO(data), len(data))
    corrupt(a, key)
    mover = Mover({"a": a, "b": b, "c": c}, copies=2)
    a.spec = parse_node(f"a=file://{a.root}?cost=1")  # tried first
    assert mover.copy(key, ["a", "b"], "c") == "b"
    assert check_copy(key, c).status == "ok"
    assert check_copy(key, a).status == "corrupt"
    # with no good source at all, the target gets nothing
    d = node(tmp_path, "d")
    mover = Mover({"a": a, "d": d}, copies=1)
    with pytest.raises(Exception, match="could not copy"):
        mover.copy(key, ["a"], "d")
    assert d.present(key) is None and not [p for p in Path(d.root).rglob("*") if p.is_file()]


def test_a_corrupt_source_is_noted_as_a_bad_copy(tmp_path: Path) -> None:
    """rebalance/repair report the bad copies they read around, as reads do."""
    a, b, c = (node(tmp_path, n) for n in "abc")
    data = payload(20_000)
    key = make_key(data)
    for n in (a, b):
        n.store(key, io.BytesIO(data), len(data))
    corrupt(a, key)
    a.spec = parse_node(f"a=file://{a.root}?cost=1")  # tried first
    bad = BadCopies()
    mover = Mover({"a": a, "b": b, "c": c}, copies=2, bad=bad)
    assert mover.copy(key, ["a", "b"], "c") == "b"
    assert bad.of(key) == {"a"}


def test_removal_waits_for_confirmed_copies(tmp_path: Path) -> None:
    a, b, c = (node(tmp_path, n) for n in "abc")
    data = payload(1000)
    key = make_key(data)
    a.store(key, io.BytesIO(data), len(data))
    b.store(key, io.BytesIO(data), len(data))
    mover = Mover({"a": a, "b": b, "c": c}, copies=2)
    # the plan believed c holds it; c does not confirm: a keeps its copy
    result = mover.apply(Move(str(key), 1000, ("a", "b", "c"), (), ("a",)))
    assert result.removed == [] and "only 1 other node(s) confirmed" in result.kept["a"]
    assert a.present(key) == 1000
    result = mover.apply(Move(str(key), 1000, ("a", "b"), ("c",), ("a",)))
    assert result.added == ["c"] and result.removed == ["a"]
    assert a.present(key) is None and b.present(key) == c.present(key) == 1000


def test_stop_mid_transfer_returns_and_leaves_nothing_half_written(tmp_path: Path) -> None:
    a, b = node(tmp_path, "a"), node(tmp_path, "b")
    started = threading.Event()
    slow = Slow(a, started)
    keys = []
    for i in range(3):
        data = payload(200_000, seed=i)
        keys.append(make_key(data))
        a.store(keys[-1], io.BytesIO(data), len(data))
    mover = Mover({"a": slow, "b": b}, copies=1)
    moves = [Move(str(k), k.size, ("a",), ("b",), ("a",)) for k in keys]
    outcome: list[object] = []
    runner = threading.Thread(target=lambda: outcome.append(mover.run(moves, jobs=3)))
    runner.start()
    assert started.wait(10)
    mover.stop()
    runner.join(20)
    assert not runner.is_alive()
    (_results, finished) = outcome[0]  # type: ignore[misc]
    assert finished is False
    for k in keys:
        assert a.present(k) == 200_000  # nothing removed
        assert b.present(k) is None  # nothing half-written became visible
    assert not [p for p in Path(b.root).rglob("*") if p.is_file()]
