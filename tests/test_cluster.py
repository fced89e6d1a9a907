"""Cluster over real file nodes, with faults injected by FaultyNode."""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faulty import FaultyNode, InjectedFault
from node_conformance import make_key

from shared.annex.keys import Key
from shared.cluster.core import (
    Cluster,
    GetAgain,
    PresenceUnknown,
    RemoveFailed,
    RetrieveFailed,
    StoreFailed,
)
from shared.cluster.fanout import BLOCK
from shared.errors import ConfigError, IntegrityError, NotFound, PermissionDenied, Unavailable
from shared.nodes.file import FileNode
from shared.nodes.retry import RetryingNode
from shared.nodes.url import parse_node

MakeCluster = Callable[..., tuple[Cluster, dict[str, FaultyNode]]]


def content(size: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + size).randbytes(size)


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[MakeCluster]:
    """``make_cluster(n, copies=, mincopies=, attrs={name: "cost=5&state=drain"})``."""
    made: list[Cluster] = []
    serial = iter(range(1_000_000))

    def make(
        n: int = 3,
        copies: int | None = None,
        mincopies: int | None = None,
        attrs: dict[str, str] | None = None,
    ) -> tuple[Cluster, dict[str, FaultyNode]]:
        nodes: dict[str, FaultyNode] = {}
        base = tmp_path / f"cluster{next(serial)}"
        for i in range(n):
            name = f"n{i}"
            root = base / name
            root.mkdir(parents=True)
            query = (attrs or {}).get(name)
            url = f"file://{root}" + (f"?{query}" if query else "")
            nodes[name] = FaultyNode(FileNode(parse_node(f"{name}={url}")))
        cluster = Cluster(list(nodes.values()), copies=copies, mincopies=mincopies)
        made.append(cluster)
        return cluster, nodes

    yield make
    for c in made:
        c.close()


@pytest.fixture
def src(tmp_path: Path) -> Callable[[bytes], tuple[Key, str]]:
    """Write data to a local file as git-annex would hand it to STORE; return (key, path)."""

    def write(data: bytes) -> tuple[Key, str]:
        key = make_key(data)
        path = tmp_path / "src" / key.file_name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        return key, str(path)

    return write


def holders(nodes: dict[str, FaultyNode], key: Key) -> set[str]:
    return {name for name, n in nodes.items() if n.inner.present(key) is not None}


def put(node: FaultyNode, key: Key, data: bytes) -> None:
    """Place a copy directly on one node, behind the cluster's back."""
    node.inner.store(key, io.BytesIO(data), len(data))


def root_of(node: FaultyNode) -> Path:
    assert isinstance(node.inner, FileNode)
    return node.inner.root


def order_names(cluster: Cluster, key: Key) -> list[str]:
    return [n.name for n in cluster.order(key)]


# -- configuration --------------------------------------------------------------------


def test_bad_copies_and_mincopies(make_cluster: MakeCluster) -> None:
    with pytest.raises(ConfigError):
        make_cluster(3, copies=4)
    with pytest.raises(ConfigError):
        make_cluster(3, copies=0)
    with pytest.raises(ConfigError):
        make_cluster(3, copies=2, mincopies=3)
    with pytest.raises(ConfigError):
        Cluster([])
    cluster, _ = make_cluster(3)
    assert (cluster.copies, cluster.mincopies) == (3, 3)


# -- store ----------------------------------------------------------------------------


def test_store_goes_to_first_copies_nodes_in_order(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    cluster, nodes = make_cluster(5, copies=2)
    firsts: set[str] = set()
    for i in range(12):
        data = content(1000 + i, seed=i)
        key, path = src(data)
        outcome = cluster.store(key, path)
        expected = order_names(cluster, key)[:2]
        assert holders(nodes, key) == set(expected)
        assert sorted(outcome.stored) == sorted(expected)
        assert outcome.already == []
        assert outcome.failed == {}
        firsts.add(expected[0])
        for name in expected:
            out = io.BytesIO()
            nodes[name].inner.retrieve(key, out)
            assert out.getvalue() == data
    assert len(firsts) > 1, "placement should spread keys over the nodes"


@pytest.mark.parametrize("exc", [Unavailable, InjectedFault])
def test_failing_node_spills_over_to_next_candidate(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]], exc: type[Exception]
) -> None:
    cluster, nodes = make_cluster(5, copies=2)
    key, path = src(content(3 * BLOCK + 7))
    order = order_names(cluster, key)
    nodes[order[0]].fail("store", exc)
    outcome = cluster.store(key, path)
    assert holders(nodes, key) == {order[1], order[2]}
    assert outcome.stored == [order[1], order[2]]
    assert list(outcome.failed) == [order[0]]
    assert "injected" in outcome.failed[order[0]]
    assert nodes[order[3]].ops("store") == []


def test_node_failing_mid_upload_spills_over_and_leaves_nothing(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    cluster, nodes = make_cluster(4, copies=2)
    data = content(3 * BLOCK + 7)
    key, path = src(data)
    order = order_names(cluster, key)
    nodes[order[1]].fail("store", Unavailable, after_bytes=BLOCK + 3)
    outcome = cluster.store(key, path)
    assert holders(nodes, key) == {order[0], order[2]}
    assert set(outcome.failed) == {order[1]}
    assert list((root_of(nodes[order[1]]) / "tmp").iterdir()) == []


def test_one_node_store_failing_part_way_is_tried_again_from_the_file(
    tmp_path: Path, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    """A wave of one node (copies=1, or a spill-over) hands the node the file itself:
    a store that fails part-way for a passing reason (a dropped connection, a
    server's 500) is tried again from the file's start by the retry wrapper, and the
    progress git-annex sees goes back, then to the end."""
    root = tmp_path / "n0"
    root.mkdir()
    faulty = FaultyNode(FileNode(parse_node(f"n0=file://{root}")))
    cluster = Cluster([RetryingNode(faulty, sleep=lambda _s: None)], copies=1)
    data = content(3 * BLOCK + 7)
    key, path = src(data)
    faulty.fail("store", Unavailable, times=1, after_bytes=BLOCK + 3)
    progress: list[int] = []
    try:
        outcome = cluster.store(key, path, progress.append)
    finally:
        cluster.close()
    assert outcome.stored == ["n0"] and len(faulty.ops("store")) == 2
    sink = io.BytesIO()
    faulty.inner.retrieve(key, sink)
    assert sink.getvalue() == data
    running = 0
    for delta in progress:
        running += delta
        assert 0 <= running <= len(data)
    assert running == len(data) and min(progress) < 0


def test_spill_over_through_several_failures(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    cluster, nodes = make_cluster(5, copies=2)
    key, path = src(content(100))
    order = order_names(cluster, key)
    for name in order[:3]:
        nodes[name].fail("store", Unavailable)
    outcome = cluster.store(key, path)
    assert holders(nodes, key) == set(order[3:])
    assert set(outcome.failed) == set(order[:3])


def test_store_succeeds_at_mincopies_and_names_failed_node(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    cluster, nodes = make_cluster(3, copies=3, mincopies=2)
    key, path = src(content(5000))
    nodes["n1"].fail("store", PermissionDenied)
    outcome = cluster.store(key, path)
    assert outcome.copies == 2
    assert set(outcome.stored) == {"n0", "n2"}
    assert set(outcome.failed) == {"n1"}
    assert "n1" in outcome.describe_failures()
    assert "injected store fault" in outcome.describe_failures()
    assert holders(nodes, key) == {"n0", "n2"}


def test_store_failed_below_mincopies_names_nodes(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    cluster, nodes = make_cluster(3, copies=3, mincopies=2)
    key, path = src(content(5000))
    nodes["n0"].fail("store", Unavailable)
    nodes["n2"].fail("store", InjectedFault)
    with pytest.raises(StoreFailed) as info:
        cluster.store(key, path)
    msg = str(info.value)
    assert "n0" in msg
    assert "n2" in msg
    assert "n1" in msg  # the one node that did store
    assert "2 required" in msg
    assert "InjectedFault" in msg
    assert info.value.outcome.stored == ["n1"]
    assert set(info.value.outcome.failed) == {"n0", "n2"}


def test_store_failed_on_every_node(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    cluster, nodes = make_cluster(2, copies=1)
    key, path = src(content(10))
    for n in nodes.values():
        n.fail("store", Unavailable)
    with pytest.raises(StoreFailed) as info:
        cluster.store(key, path)
    assert "no node" in str(info.value)
    assert set(info.value.outcome.failed) == {"n0", "n1"}


@pytest.mark.parametrize("state", ["readonly", "drain"])
def test_readonly_and_drain_nodes_take_no_new_data(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]], state: str
) -> None:
    cluster, nodes = make_cluster(3, copies=3, mincopies=1, attrs={"n1": f"state={state}"})
    for i in range(6):
        key, path = src(content(100, seed=i))
        outcome = cluster.store(key, path)
        assert "n1" not in holders(nodes, key)
        assert set(outcome.stored) == {"n0", "n2"}
    assert nodes["n1"].ops("store") == []


@pytest.mark.parametrize("state", ["readonly", "drain"])
def test_readonly_and_drain_nodes_are_read_and_removed(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]], tmp_path: Path, state: str
) -> None:
    cluster, nodes = make_cluster(3, copies=1, attrs={"n1": f"state={state}"})
    data = content(2 * BLOCK + 1)
    key, _ = src(data)
    put(nodes["n1"], key, data)
    assert cluster.present(key) is True
    dest = tmp_path / "dest"
    assert cluster.retrieve(key, str(dest)) == "n1"
    assert dest.read_bytes() == data
    cluster.remove(key)
    assert holders(nodes, key) == set()
    assert cluster.present(key) is False


def test_only_readonly_nodes_store_fails_and_says_why(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    cluster, _ = make_cluster(2, copies=1, attrs={"n0": "state=readonly", "n1": "state=drain"})
    key, path = src(content(10))
    with pytest.raises(StoreFailed) as info:
        cluster.store(key, path)
    assert "n0" in str(info.value)
    assert "n1" in str(info.value)
    assert "takes no new data" in str(info.value)


def test_weight_zero_node_gets_no_new_data(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    cluster, nodes = make_cluster(3, copies=2, attrs={"n2": "weight=0"})
    for i in range(6):
        key, path = src(content(50, seed=i))
        cluster.store(key, path)
        assert holders(nodes, key) == {"n0", "n1"}


def test_already_present_counts_without_rewriting(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    cluster, nodes = make_cluster(4, copies=2)
    data = content(4000)
    key, path = src(data)
    order = order_names(cluster, key)
    put(nodes[order[0]], key, data)
    obj = root_of(nodes[order[0]]) / key.hashdirlower / key.file_name / key.file_name
    before = obj.stat()
    outcome = cluster.store(key, path)
    assert outcome.already == [order[0]]
    assert outcome.stored == [order[1]]
    assert outcome.copies == 2
    after = obj.stat()  # the holder was asked to store and declined: not rewritten
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert holders(nodes, key) == {order[0], order[1]}


def test_store_of_fully_present_key_writes_nothing(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    cluster, nodes = make_cluster(3, copies=2)
    key, path = src(content(100))
    cluster.store(key, path)
    progress: list[int] = []
    outcome = cluster.store(key, path, progress.append)
    assert sorted(outcome.already) == sorted(order_names(cluster, key)[:2])
    assert outcome.stored == [] and outcome.failed == {}
    assert holders(nodes, key) == set(order_names(cluster, key)[:2])


# -- retrieve -------------------------------------------------------------------------


def _on_all(nodes: dict[str, FaultyNode], key: Key, data: bytes) -> None:
    for n in nodes.values():
        put(n, key, data)


def test_retrieve_prefers_lowest_cost(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]], tmp_path: Path
) -> None:
    data = content(1000)
    key, _ = src(data)
    probe, _ = make_cluster(3)
    last = order_names(probe, key)[-1]
    attrs = {name: ("cost=50" if name == last else "cost=300") for name in ("n0", "n1", "n2")}
    cluster, nodes = make_cluster(3, attrs=attrs)
    _on_all(nodes, key, data)
    dest = tmp_path / "out"
    assert cluster.retrieve(key, str(dest)) == last
    assert dest.read_bytes() == data
    assert [n for n, node in nodes.items() if node.ops("retrieve")] == [last]


def test_retrieve_equal_cost_follows_placement_order(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]], tmp_path: Path
) -> None:
    cluster, nodes = make_cluster(3)
    data = content(10)
    key, _ = src(data)
    _on_all(nodes, key, data)
    assert cluster.retrieve(key, str(tmp_path / "out")) == order_names(cluster, key)[0]


def test_retrieve_falls_over_on_error_and_absence(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]], tmp_path: Path
) -> None:
    cluster, nodes = make_cluster(3, attrs={"n0": "cost=10", "n1": "cost=20", "n2": "cost=30"})
    data = content(2 * BLOCK + 5)
    key, _ = src(data)
    put(nodes["n2"], key, data)
    put(nodes["n0"], key, data)
    nodes["n0"].fail("retrieve", Unavailable)  # n1 does not hold it at all
    dest = tmp_path / "out"
    assert cluster.retrieve(key, str(dest)) == "n2"
    assert dest.read_bytes() == data


def test_retrieve_continues_after_midway_failure(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]], tmp_path: Path
) -> None:
    cluster, nodes = make_cluster(2, attrs={"n0": "cost=10", "n1": "cost=20"})
    data = content(3 * BLOCK + 7)
    key, _ = src(data)
    _on_all(nodes, key, data)
    cut = BLOCK + 12345
    nodes["n0"].fail("retrieve", Unavailable, after_bytes=cut)
    progress: list[int] = []
    dest = tmp_path / "out"
    assert cluster.retrieve(key, str(dest), progress.append) == "n1"
    assert dest.read_bytes() == data
    assert [c.offset for c in nodes["n1"].ops("retrieve")] == [cut]
    assert sum(progress) == len(data)


def wrong_on_the_first_node(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> tuple[Cluster, dict[str, FaultyNode], Key, bytes]:
    """n0, the cheaper, holds a wrong copy that proves wrong after some bytes went out."""
    cluster, nodes = make_cluster(2, attrs={"n0": "cost=10", "n1": "cost=20"})
    data = content(3 * BLOCK + 7)
    key, _ = src(data)
    put(nodes["n0"], key, bytes(len(data)))
    put(nodes["n1"], key, data)
    nodes["n0"].fail("retrieve", IntegrityError, after_bytes=BLOCK + 5)
    return cluster, nodes, key, data


def test_retrieve_starts_over_after_a_node_sent_wrong_content(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]], tmp_path: Path
) -> None:
    """What a node sent before its copy proved wrong (an encrypted copy that does not
    decrypt) is not continued by another node: the next one starts from byte 0."""
    cluster, nodes, key, data = wrong_on_the_first_node(make_cluster, src)
    dest = tmp_path / "out"
    assert retrieve_as_git_annex(cluster, key, dest) == "n1"
    assert dest.read_bytes() == data
    assert [c.offset for c in nodes["n1"].ops("retrieve")] == [0]


def retrieve_as_git_annex(
    cluster: Cluster, key: Key, dest: Path, progress: Callable[[int], None] | None = None
) -> str:
    """``retrieve``, asked again as git-annex asks after an attempt that made progress
    and failed with the right content in place (GetAgain); the node whose copy it is."""
    try:
        return cluster.retrieve(key, str(dest), progress)
    except GetAgain as e:
        assert cluster.retrieve(key, str(dest)) == ""
        return e.node


def test_a_failed_retrieve_leaves_no_wrong_byte_behind(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]], tmp_path: Path
) -> None:
    """git-annex keeps a failed download to resume it, from any remote, next time: what
    a node whose copy proved wrong wrote must not be in it, even when no node is left."""
    cluster, nodes, key, _ = wrong_on_the_first_node(make_cluster, src)
    nodes["n1"].fail("retrieve", Unavailable)
    dest = tmp_path / "out"
    with pytest.raises(RetrieveFailed):
        cluster.retrieve(key, str(dest))
    assert not dest.exists() or dest.read_bytes() == b""  # no wrong byte to resume from


def test_retrieve_stream_never_continues_wrong_content(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    """Bytes already streamed cannot be taken back: the stream fails (the gateway then
    says INVALID), and the next request tries the node that sent them last."""
    cluster, nodes, key, data = wrong_on_the_first_node(make_cluster, src)
    with pytest.raises(IntegrityError, match="n0 sent wrong content"):
        cluster.retrieve_stream(key, io.BytesIO())
    assert nodes["n1"].ops("retrieve") == []
    again = io.BytesIO()
    assert cluster.retrieve_stream(key, again) == "n1"
    assert again.getvalue() == data


def test_retrieve_resumes_partial_destination(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]], tmp_path: Path
) -> None:
    cluster, nodes = make_cluster(2)
    data = content(3 * BLOCK + 7)
    key, _ = src(data)
    _on_all(nodes, key, data)
    third = len(data) // 3
    dest = tmp_path / "out"
    dest.write_bytes(data[:third])
    progress: list[int] = []
    used = cluster.retrieve(key, str(dest), progress.append)
    assert dest.read_bytes() == data
    assert [c.offset for c in nodes[used].ops("retrieve")] == [third]
    assert progress[0] == third
    assert sum(progress) == len(data)


def test_retrieve_restarts_when_destination_longer_than_object(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]], tmp_path: Path
) -> None:
    cluster, nodes = make_cluster(2)
    data = content(BLOCK + 99)
    key, _ = src(data)
    _on_all(nodes, key, data)
    dest = tmp_path / "out"
    dest.write_bytes(content(len(data) + 500, seed=9))
    progress: list[int] = []
    used = retrieve_as_git_annex(cluster, key, dest, progress.append)
    assert dest.read_bytes() == data
    assert [c.offset for c in nodes[used].ops("retrieve")] == [0]
    running = 0
    for delta in progress:
        running += delta
        assert running >= 0
    assert running == len(data)


def test_retrieve_complete_destination_writes_nothing(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]], tmp_path: Path
) -> None:
    cluster, nodes = make_cluster(1)
    data = content(1000)
    key, _ = src(data)
    _on_all(nodes, key, data)
    dest = tmp_path / "out"
    dest.write_bytes(data)
    cluster.retrieve(key, str(dest))
    assert dest.read_bytes() == data


def test_retrieve_absent_everywhere(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]], tmp_path: Path
) -> None:
    cluster, _ = make_cluster(3)
    key, _ = src(content(10))
    with pytest.raises(RetrieveFailed, match="none of the nodes"):
        cluster.retrieve(key, str(tmp_path / "out"))


def test_retrieve_failure_names_failing_nodes(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]], tmp_path: Path
) -> None:
    cluster, nodes = make_cluster(3)
    data = content(10)
    key, _ = src(data)
    put(nodes["n1"], key, data)
    nodes["n1"].fail("retrieve", Unavailable)
    nodes["n2"].fail("retrieve", NotFound)
    with pytest.raises(RetrieveFailed) as info:
        cluster.retrieve(key, str(tmp_path / "out"))
    assert "n1" in str(info.value)


# -- presence -------------------------------------------------------------------------


def test_present_true_while_another_node_unavailable(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    """One confirmation is enough when mincopies is 1 (below mincopies, see
    test_verified_reads.py: a store that fell short is not a copy)."""
    cluster, nodes = make_cluster(3, copies=1)
    data = content(10)
    key, _ = src(data)
    put(nodes["n2"], key, data)
    nodes["n0"].fail("present", Unavailable)
    nodes["n1"].fail("present", InjectedFault)
    assert cluster.present(key) is True


def test_presence_unknown_when_absent_on_reachable_nodes(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    cluster, nodes = make_cluster(3)
    key, _ = src(content(10))
    nodes["n1"].fail("present", Unavailable)
    with pytest.raises(PresenceUnknown) as info:
        cluster.present(key)
    assert "n1" in str(info.value)
    assert "n0" not in str(info.value)


def test_presence_unknown_when_a_node_disk_is_gone(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]], tmp_path: Path
) -> None:
    cluster, nodes = make_cluster(2)
    key, _ = src(content(10))
    root_of(nodes["n1"]).rename(tmp_path / "unmounted")
    with pytest.raises(PresenceUnknown, match="n1"):
        cluster.present(key)


def test_present_false_only_when_all_say_absent(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    cluster, nodes = make_cluster(4)
    key, _ = src(content(10))
    assert cluster.present(key) is False
    assert all(len(n.ops("present")) == 1 for n in nodes.values())


def test_present_after_store(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    cluster, _ = make_cluster(3, copies=1)
    key, path = src(content(10))
    cluster.store(key, path)
    assert cluster.present(key) is True


# -- remove ---------------------------------------------------------------------------


def test_remove_hits_every_node_including_stray_copies(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    cluster, nodes = make_cluster(4, copies=1)
    data = content(100)
    key, path = src(data)
    cluster.store(key, path)
    stray = order_names(cluster, key)[-1]
    put(nodes[stray], key, data)
    assert len(holders(nodes, key)) == 2
    cluster.remove(key)
    assert holders(nodes, key) == set()
    assert all(len(n.ops("remove")) == 1 for n in nodes.values())
    assert cluster.present(key) is False


def test_remove_absent_succeeds(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    cluster, _ = make_cluster(3)
    key, _ = src(content(10))
    cluster.remove(key)
    cluster.remove(key)


def test_remove_failed_names_the_failing_node(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    cluster, nodes = make_cluster(3)
    data = content(100)
    key, path = src(data)
    cluster.store(key, path)
    nodes["n1"].fail("remove", Unavailable)
    with pytest.raises(RemoveFailed) as info:
        cluster.remove(key)
    assert set(info.value.failed) == {"n1"}
    msg = str(info.value)
    assert "n1" in msg
    assert "n0" not in msg
    assert "n2" not in msg
    assert str(key) in msg
    assert holders(nodes, key) == {"n1"}, "the other nodes are still removed from"
    nodes["n1"].heal()
    cluster.remove(key)
    assert holders(nodes, key) == set()


# -- progress -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, BLOCK, 3 * BLOCK + 7])
def test_store_progress_sums_to_file_size(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]], size: int
) -> None:
    cluster, _ = make_cluster(3, copies=2)
    key, path = src(content(size))
    progress: list[int] = []
    cluster.store(key, path, progress.append)
    assert sum(progress) == size


def test_store_progress_after_spill_over_sums_to_file_size(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    cluster, nodes = make_cluster(3, copies=2)
    data = content(3 * BLOCK + 7)
    key, path = src(data)
    nodes[order_names(cluster, key)[0]].fail("store", Unavailable, after_bytes=BLOCK)
    progress: list[int] = []
    cluster.store(key, path, progress.append)
    running = 0
    for delta in progress:
        running += delta
        assert 0 <= running <= len(data)
    assert running == len(data)


def test_retrieve_progress_ends_at_file_size(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]], tmp_path: Path
) -> None:
    cluster, nodes = make_cluster(2)
    data = content(2 * BLOCK + 3)
    key, _ = src(data)
    _on_all(nodes, key, data)
    progress: list[int] = []
    cluster.retrieve(key, str(tmp_path / "out"), progress.append)
    assert sum(progress) == len(data)
    assert all(d > 0 for d in progress)


# -- room: maxsize, free space, zones ----------------------------------------------------


def test_full_node_is_skipped_and_the_next_takes_the_copy(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    cluster, nodes = make_cluster(3, copies=2, attrs={"n0": "maxsize=2500"})
    stored_on_n0 = 0
    for i in range(12):
        key, path = src(content(1000, seed=i))
        outcome = cluster.store(key, path)
        assert outcome.copies == 2  # always two copies, whoever is full
        stored_on_n0 += "n0" in outcome.stored
    assert stored_on_n0 == 2  # 2 x 1000 bytes fit under 2500; the third would not
    assert FileNode(nodes["n0"].spec).used() == 2000


def test_maxsize_counts_what_the_node_held_before(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    cluster, nodes = make_cluster(1, attrs={"n0": "maxsize=1500"})
    key, path = src(content(1000, seed=1))
    cluster.store(key, path)
    cluster.close()
    again = Cluster([nodes["n0"]], copies=1)  # a new process: counts the node first
    key2, path2 = src(content(1000, seed=2))
    with pytest.raises(StoreFailed, match=r"n0: full \(1000 bytes held, maxsize 1500\)"):
        again.store(key2, path2)
    again.close()


def test_node_below_its_reserve_is_skipped(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    cluster, nodes = make_cluster(2, copies=1, mincopies=1, attrs={"n0": "reserve=1000PB"})
    for i in range(5):
        key, path = src(content(100, seed=i))
        assert cluster.store(key, path).stored == ["n1"]
    assert nodes["n0"].ops("store") == []
    only, _ = make_cluster(1, attrs={"n0": "reserve=1000PB"})
    key, path = src(content(100, seed=9))
    with pytest.raises(StoreFailed, match="kept in reserve"):
        only.store(key, path)


def test_maxsize_needs_a_node_that_counts(tmp_path: Path) -> None:
    class Blind(FaultyNode):
        counts_bytes = False  # type: ignore[assignment]

    root = tmp_path / "b"
    root.mkdir()
    node = Blind(FileNode(parse_node(f"b=file://{root}?maxsize=1GiB")))
    with pytest.raises(ConfigError, match="maxsize= needs a node that can count"):
        Cluster([node])


def test_copies_go_to_distinct_zones(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    zones = {"n0": "zone=a", "n1": "zone=a", "n2": "zone=a", "n3": "zone=b", "n4": "zone=b"}
    cluster, _ = make_cluster(5, copies=2, attrs=zones)
    for i in range(20):
        key, path = src(content(50, seed=i))
        outcome = cluster.store(key, path)
        assert {zones[n] for n in outcome.stored} == {"zone=a", "zone=b"}


def test_failed_node_is_replaced_from_a_zone_without_a_copy(
    make_cluster: MakeCluster, src: Callable[[bytes], tuple[Key, str]]
) -> None:
    zones = {"n0": "zone=a", "n1": "zone=a", "n2": "zone=b", "n3": "zone=b", "n4": "zone=c"}
    cluster, nodes = make_cluster(5, copies=2, attrs=zones)
    for i in range(10):
        key, path = src(content(50, seed=i))
        first = cluster.store_order(key)[0]
        nodes[first.name].fail("store")
        outcome = cluster.store(key, path)
        assert len({zones[n] for n in outcome.stored}) == 2, outcome
        nodes[first.name].heal()


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(
    nodes=st.lists(
        st.tuples(
            st.sampled_from(["active", "readonly", "drain"]),
            st.sampled_from([0.0, 1.0, 2.5]),
            st.sampled_from(["", "zone=a", "zone=b"]),
        ),
        min_size=1,
        max_size=7,
    ),
    key_seed=st.integers(0, 10**9),
)
def test_store_order_skips_nodes_that_take_no_data_and_keeps_rendezvous_order(
    nodes: list[tuple[str, float, str]], key_seed: int
) -> None:
    specs = [
        parse_node(f"n{i}=file:///nonexistent/n{i}?state={state}&weight={w}&{zone}")
        for i, (state, w, zone) in enumerate(nodes)
    ]
    cluster = Cluster([FileNode(s) for s in specs], copies=1)
    try:
        key = make_key(key_seed.to_bytes(8, "big"))
        order = cluster.store_order(key)
        takers = {s.name for s in specs if s.state.value == "active" and s.weight > 0}
        assert {n.name for n in order} == takers
        if order:  # the key's first choice among the takers is always first
            first = next(n for n in cluster.order(key) if n.name in takers)
            assert order[0].name == first.name
    finally:
        cluster.close()
