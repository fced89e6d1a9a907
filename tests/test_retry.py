"""The retry wrapper: transient failures retried, a dead node marked down once."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import pytest
from faulty import FaultyNode, InjectedFault

from shared.annex.keys import Key
from shared.errors import PermissionDenied, Unavailable
from shared.nodes.file import FileNode
from shared.nodes.retry import RetryingNode
from shared.nodes.url import parse_node
from shared.streams import Readable

DATA = bytes(range(256)) * 400
KEY = Key.parse(f"SHA256E-s{len(DATA)}--{hashlib.sha256(DATA).hexdigest()}.bin")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def parts(tmp_path: Path) -> tuple[FaultyNode, RetryingNode, Clock]:
    (tmp_path / "n").mkdir()
    faulty = FaultyNode(FileNode(parse_node(f"n={(tmp_path / 'n').as_uri()}")))
    clock = Clock()
    node = RetryingNode(faulty, attempts=3, down_for=30, clock=clock, sleep=clock.sleep)
    node.store(KEY, io.BytesIO(DATA), len(DATA))
    return faulty, node, clock


def test_transient_failure_is_retried(parts: tuple[FaultyNode, RetryingNode, Clock]) -> None:
    faulty, node, clock = parts
    faulty.fail("present", Unavailable, times=2)
    assert node.present(KEY) == len(DATA)
    assert len(faulty.ops("present")) == 3
    assert len(clock.slept) == 2


def test_permanent_failure_is_not_retried(parts: tuple[FaultyNode, RetryingNode, Clock]) -> None:
    faulty, node, clock = parts
    faulty.fail("remove", PermissionDenied, times=1)
    with pytest.raises(PermissionDenied):
        node.remove(KEY)
    assert len(faulty.ops("remove")) == 1 and clock.slept == []
    node.remove(KEY)  # not marked down: the next call goes through
    assert node.present(KEY) is None


def test_node_marked_down_after_retries_then_back(
    parts: tuple[FaultyNode, RetryingNode, Clock],
) -> None:
    faulty, node, clock = parts
    faulty.fail("present", Unavailable)
    with pytest.raises(Unavailable):
        node.present(KEY)
    assert len(faulty.ops("present")) == 3
    waited = len(clock.slept)
    # While down, calls fail at once: no call reaches the node, no more waiting.
    for op in (lambda: node.present(KEY), lambda: node.remove(KEY), node.check):
        with pytest.raises(Unavailable, match="not retried for now"):
            op()
    assert len(faulty.ops("present")) == 3 and len(clock.slept) == waited
    faulty.heal()
    clock.now += 31
    assert node.present(KEY) == len(DATA)


def test_retried_download_continues_where_it_stopped(
    parts: tuple[FaultyNode, RetryingNode, Clock],
) -> None:
    faulty, node, _ = parts
    faulty.fail("retrieve", Unavailable, times=1, after_bytes=30_000)
    sink = io.BytesIO()
    node.retrieve(KEY, sink, 0)
    assert sink.getvalue() == DATA
    offsets = [c.offset for c in faulty.ops("retrieve")]
    assert offsets[0] == 0 and offsets[1] is not None and offsets[1] >= 30_000


def test_store_that_read_nothing_is_retried(
    parts: tuple[FaultyNode, RetryingNode, Clock],
) -> None:
    faulty, node, clock = parts
    node.remove(KEY)
    before = len(faulty.ops("store"))
    faulty.fail("store", Unavailable, times=2)
    assert node.store(KEY, io.BytesIO(DATA), len(DATA))
    assert len(faulty.ops("store")) == before + 3 and len(clock.slept) == 2
    assert node.present(KEY) == len(DATA)


class Stream:
    """A source read once, as the cluster's tee and a gateway's upload are."""

    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def read(self, n: int = -1, /) -> bytes:
        return self._f.read(n)


def test_store_that_read_a_byte_of_a_stream_is_not_retried_but_marks_down(
    parts: tuple[FaultyNode, RetryingNode, Clock],
) -> None:
    faulty, node, clock = parts
    node.remove(KEY)
    before = len(faulty.ops("store"))
    faulty.fail("store", Unavailable, times=1, after_bytes=1)
    with pytest.raises(Unavailable):
        node.store(KEY, Stream(DATA), len(DATA))
    assert len(faulty.ops("store")) == before + 1 and clock.slept == []
    with pytest.raises(Unavailable, match="not retried for now"):
        node.present(KEY)


def test_store_that_read_part_of_a_file_is_retried_from_its_start(
    parts: tuple[FaultyNode, RetryingNode, Clock], tmp_path: Path
) -> None:
    """A server that fails a store after taking part of the body (git annex p2phttp
    answers 500 when an interrupted upload's offset moved under it): the file is
    read again from where it stood, and the node gets all of it."""
    faulty, node, clock = parts
    node.remove(KEY)
    before = len(faulty.ops("store"))
    faulty.fail("store", Unavailable, times=2, after_bytes=30_000)
    path = tmp_path / "file"
    path.write_bytes(b"head" + DATA)
    with open(path, "rb") as f:
        f.read(4)
        assert node.store(KEY, f, len(DATA))
    assert len(faulty.ops("store")) == before + 3 and len(clock.slept) == 2
    sink = io.BytesIO()
    node.retrieve(KEY, sink)
    assert sink.getvalue() == DATA


def test_resumed_store_that_read_part_of_a_file_is_not_retried(tmp_path: Path) -> None:
    """``store_from`` has handed the node's kept bytes to the caller's hash: reading
    the source again would hash them twice."""

    class Resuming(FaultyNode):
        resumes = 0

        def store_from(
            self,
            key: Key,
            source: Readable,
            size: int,
            offset: int,
            prefix: Callable[[bytes], None],
        ) -> bool:
            self.resumes += 1
            source.read(100)
            raise Unavailable("the server went away", self.name)

    (tmp_path / "n").mkdir()
    inner = Resuming(FileNode(parse_node(f"n={(tmp_path / 'n').as_uri()}")))
    clock = Clock()
    node = RetryingNode(inner, attempts=3, clock=clock, sleep=clock.sleep)
    with pytest.raises(Unavailable):
        node.store_from(KEY, io.BytesIO(DATA), len(DATA), 0, lambda _kept: None)
    assert inner.resumes == 1 and clock.slept == []


def test_store_that_read_nothing_is_retried_for_its_patience(tmp_path: Path) -> None:
    (tmp_path / "n").mkdir()
    faulty = FaultyNode(FileNode(parse_node(f"n={(tmp_path / 'n').as_uri()}")))
    clock = Clock()
    node = RetryingNode(faulty, attempts=3, store_patience=4, clock=clock, sleep=clock.sleep)
    faulty.fail("store", Unavailable, times=5)
    assert node.store(KEY, io.BytesIO(DATA), len(DATA))
    assert len(faulty.ops("store")) == 6 and sum(clock.slept) <= 6
    faulty.fail("present", Unavailable)  # patience is for stores only
    with pytest.raises(Unavailable):
        node.present(KEY)
    assert len(faulty.ops("present")) == 3


def test_unexpected_exceptions_pass_through(parts: tuple[FaultyNode, RetryingNode, Clock]) -> None:
    faulty, node, _ = parts
    faulty.fail("present", InjectedFault, times=1)
    with pytest.raises(InjectedFault):
        node.present(KEY)
    assert node.present(KEY) == len(DATA)
