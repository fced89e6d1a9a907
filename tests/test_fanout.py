"""The tee: identical bytes to every consumer, no stalls, failures reported, bounded memory."""

from __future__ import annotations

import io
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor

import pytest

from shared.cluster.fanout import BLOCK, DEPTH, QueueReader, SourceFailed, fan_out

Consumer = Callable[[QueueReader], None]


def pattern(size: int) -> bytes:
    return random.Random(size).randbytes(size)


class Collector:
    """A consumer that reads everything, in reads of ``step`` bytes (-1: whatever comes)."""

    def __init__(self, step: int = -1) -> None:
        self.step = step
        self.buf = bytearray()
        self.error: BaseException | None = None

    def __call__(self, reader: QueueReader) -> None:
        try:
            while chunk := reader.read(self.step):
                self.buf += chunk
        except BaseException as e:
            self.error = e
            raise


class CountingSource(io.BytesIO):
    """A source that counts reads (blocks handed out) and may fail after some of them."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        super().__init__(data)
        self.reads = 0
        self.fail_after = fail_after
        self.lock = threading.Lock()

    def read(self, n: int | None = -1, /) -> bytes:
        with self.lock:
            if self.fail_after is not None and self.reads >= self.fail_after:
                raise OSError("disk read error")
            self.reads += 1
        return super().read(n)


SIZES = [0, 1, BLOCK - 1, BLOCK, 3 * BLOCK + 7]


@pytest.fixture(scope="module")
def shared_pool() -> Iterator[ThreadPoolExecutor]:
    """A persistent pool like the cluster's, reused by every test (a worker per consumer)."""
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="test-store")
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture(params=["own-threads", "shared-pool"])
def executor(request: pytest.FixtureRequest, shared_pool: ThreadPoolExecutor) -> Executor | None:
    return None if request.param == "own-threads" else shared_pool


@pytest.mark.timeout(30)
@pytest.mark.parametrize("size", SIZES)
def test_all_consumers_get_identical_bytes(size: int, executor: Executor | None) -> None:
    data = pattern(size)
    collectors = {"whole": Collector(), "small": Collector(4096), "odd": Collector(1000003)}
    sent: list[int] = []
    results = fan_out(io.BytesIO(data), dict(collectors), sent.append, executor)
    assert results == {"whole": None, "small": None, "odd": None}
    for c in collectors.values():
        assert bytes(c.buf) == data
    assert sum(sent) == size
    assert all(0 < n <= BLOCK for n in sent)


@pytest.mark.timeout(30)
def test_no_consumers() -> None:
    assert fan_out(io.BytesIO(pattern(10)), {}) == {}


@pytest.mark.timeout(30)
def test_reader_returns_eof_repeatedly() -> None:
    seen: list[bytes] = []

    def consumer(reader: QueueReader) -> None:
        while reader.read():
            pass
        seen.extend([reader.read(), reader.read(10)])

    assert fan_out(io.BytesIO(b"abc"), {"c": consumer}) == {"c": None}
    assert seen == [b"", b""]


def _raises_now(reader: QueueReader) -> None:
    raise ValueError("node refused at once")


def _returns_at_once(reader: QueueReader) -> None:
    return None


def _raises_midway(reader: QueueReader) -> None:
    reader.read(BLOCK)
    reader.read(10)
    raise ConnectionResetError("connection lost")


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("bad", "error"),
    [(_raises_now, ValueError), (_returns_at_once, None), (_raises_midway, ConnectionResetError)],
)
def test_bad_consumer_does_not_stall_the_others(
    bad: Consumer, error: type[BaseException] | None, executor: Executor | None
) -> None:
    # Far more than DEPTH blocks: a bad consumer that stopped draining would block the tee.
    data = pattern((3 * DEPTH + 2) * BLOCK + 5)
    good1, good2 = Collector(), Collector(65536)
    results = fan_out(
        io.BytesIO(data), {"good1": good1, "bad": bad, "good2": good2}, executor=executor
    )
    assert results["good1"] is None
    assert results["good2"] is None
    if error is None:
        assert results["bad"] is None
    else:
        assert isinstance(results["bad"], error)
    assert bytes(good1.buf) == data
    assert bytes(good2.buf) == data


@pytest.mark.timeout(30)
def test_every_consumer_failing_still_returns(executor: Executor | None) -> None:
    data = pattern((2 * DEPTH + 1) * BLOCK)
    results = fan_out(io.BytesIO(data), {"a": _raises_now, "b": _raises_midway}, None, executor)
    assert isinstance(results["a"], ValueError)
    assert isinstance(results["b"], ConnectionResetError)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fail_after", [0, 1, DEPTH + 3])
def test_source_failure_propagates_and_consumers_see_source_failed(
    fail_after: int, executor: Executor | None
) -> None:
    source = CountingSource(pattern((2 * DEPTH + 5) * BLOCK), fail_after=fail_after)
    collectors = {"a": Collector(), "b": Collector(777)}
    consumers: dict[str, Consumer] = {**collectors, "gone": _returns_at_once}
    with pytest.raises(OSError, match="disk read error"):
        fan_out(source, consumers, executor=executor)
    for c in collectors.values():
        assert isinstance(c.error, SourceFailed)
        assert isinstance(c.error.__cause__, OSError)
        assert len(c.buf) == fail_after * BLOCK


@pytest.mark.timeout(30)
def test_consumer_swallowing_source_failure_gets_no_more_data() -> None:
    source = CountingSource(pattern(4 * BLOCK), fail_after=2)
    after: list[bytes] = []

    def stubborn(reader: QueueReader) -> None:
        try:
            while reader.read():
                pass
        except SourceFailed:
            after.append(reader.read())

    with pytest.raises(OSError):
        fan_out(source, {"s": stubborn})
    assert after == [b""]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("depth", [DEPTH, 2])
def test_producer_never_more_than_depth_blocks_ahead(executor: Executor | None, depth: int) -> None:
    """With a slow consumer, reads stay within ``depth`` queued blocks (+1 in the
    producer's hand): DEPTH by default, fewer when asked (the gateway's sessions)."""
    blocks = 3 * depth
    source = CountingSource(pattern(blocks * BLOCK))
    ahead: list[int] = []
    stalled_at: list[int] = []

    def slow(reader: QueueReader) -> None:
        consumed = 0
        # Let the producer run until it must block: it can hold depth queued plus one in hand.
        deadline = time.monotonic() + 10
        while source.reads < depth + 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.2)
        stalled_at.append(source.reads)  # nothing consumed: the producer must be stuck here
        while True:
            ahead.append(source.reads - consumed)
            chunk = reader.read(BLOCK)
            if not chunk:
                break
            consumed += 1
            time.sleep(0.002)

    fast = Collector()
    results = fan_out(source, {"slow": slow, "fast": fast}, executor=executor, depth=depth)
    assert results == {"slow": None, "fast": None}
    assert stalled_at == [depth + 1]
    assert max(ahead) <= depth + 1
    assert bytes(fast.buf) == pattern(blocks * BLOCK)
    # blocks reads with data, plus the final one that found EOF
    assert source.reads == blocks + 1


@pytest.mark.timeout(30)
def test_on_bytes_counts_blocks_as_they_are_handed_out() -> None:
    data = pattern(2 * BLOCK + 1)
    sent: list[int] = []
    fan_out(io.BytesIO(data), {"c": Collector()}, sent.append)
    assert sent == [BLOCK, BLOCK, 1]


def test_stops_reading_once_every_consumer_is_finished() -> None:
    """Consumers that need no data (their node had the key) end the read early."""
    finished = threading.Event()
    reads = 0

    class Source:
        def read(self, n: int = -1, /) -> bytes:
            nonlocal reads
            reads += 1
            if reads == 2:
                assert finished.wait(10)  # both consumers are done before block 2 exists
                time.sleep(0.2)  # and have reported their outcome
            return b"x" * BLOCK if reads <= 10 else b""

    done = 0
    lock = threading.Lock()

    def no_data_needed(reader: QueueReader) -> None:
        nonlocal done
        with lock:
            done += 1
            if done == 2:
                finished.set()

    results = fan_out(Source(), {"a": no_data_needed, "b": no_data_needed})  # type: ignore[arg-type]
    assert results == {"a": None, "b": None}
    assert reads <= 2
