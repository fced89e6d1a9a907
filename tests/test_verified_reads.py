"""Reads are checked against the key, node by node: a bad copy is never what a get
returns while another node holds a good one, and under-replicated keys are never
reported as stored (issue 18, parts 1 and 2). Real file nodes; faults by hand."""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faulty import FaultyNode
from node_conformance import make_key

from shared.annex.keys import Key
from shared.cluster.badcopies import BadCopies
from shared.cluster.core import Cluster, GetAgain, PresenceUnknown, RetrieveFailed
from shared.crypto.cipher import Cipher
from shared.errors import IntegrityError, Unavailable
from shared.nodes.encrypted import EncryptedNode
from shared.nodes.file import FileNode
from shared.nodes.url import parse_node
from shared.streams import Writable

BLOCK = 1024 * 1024


def content(size: int, seed: int = 0) -> bytes:
    return random.Random(seed * 7919 + size).randbytes(size)


MakeCluster = Callable[..., tuple[Cluster, dict[str, FaultyNode]]]


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[MakeCluster]:
    """Nodes n0, n1, ... with increasing cost, so reads try them in that order."""
    made: list[Cluster] = []
    serial = iter(range(1000))

    def make(n: int = 3, **kw: object) -> tuple[Cluster, dict[str, FaultyNode]]:
        base = tmp_path / f"c{next(serial)}"
        nodes = {}
        for i in range(n):
            (base / f"n{i}").mkdir(parents=True)
            spec = parse_node(f"n{i}=file://{base}/n{i}?cost={10 + i}")
            nodes[f"n{i}"] = FaultyNode(FileNode(spec))
        cluster = Cluster(list(nodes.values()), **kw)  # type: ignore[arg-type]
        made.append(cluster)
        return cluster, nodes

    yield make
    for c in made:
        c.close()


def put(node: FaultyNode, key: Key, data: bytes) -> None:
    node.inner.store(key, io.BytesIO(data), len(data))


def object_path(node: FaultyNode, key: Key) -> Path:
    assert isinstance(node.inner, FileNode)
    return next(node.inner.root.rglob(key.file_name + "/" + key.file_name))


def rot(node: FaultyNode, key: Key, data: bytes) -> Path:
    """A copy of the right size with a few bytes flipped (bit rot)."""
    put(node, key, data)
    path = object_path(node, key)
    raw = bytearray(path.read_bytes())
    for i in range(0, len(raw), max(1, len(raw) // 5)):
        raw[i] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(raw))
    return path


def leftover(node: FaultyNode, key: Key, data: bytes) -> Path:
    """A 0-byte file where the object would be (an interrupted copy by hand)."""
    put(node, key, data)
    path = object_path(node, key)
    path.chmod(0o644)
    path.write_bytes(b"")
    return path


# -- the cluster remote's get ----------------------------------------------------------


def get_again(cluster: Cluster, key: Key, dest: Path) -> None:
    """What git-annex does when a get's attempt fails after progress: it asks again.
    The first attempt put the right content in place; the second checks it and reads
    no node."""
    with pytest.raises(GetAgain, match="read first was wrong"):
        cluster.retrieve(key, str(dest))
    reads = cluster_reads(cluster)
    assert cluster.retrieve(key, str(dest)) == ""
    assert cluster_reads(cluster) == reads


def cluster_reads(cluster: Cluster) -> int:
    return sum(len(n.ops("retrieve")) for n in cluster.nodes if isinstance(n, FaultyNode))


def test_get_fails_over_from_a_bad_copy_and_notes_it(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """A copy that proves wrong after git-annex saw its bytes: the attempt fails with
    the right content in place, and git-annex's retry takes it."""
    told: list[tuple[str, str]] = []
    cluster, nodes = make_cluster(3, copies=2)
    cluster.on_bad = lambda key, node, why: told.append((node, why))
    data = content(2 * BLOCK + 3)
    key = make_key(data)
    bad = rot(nodes["n0"], key, data)
    put(nodes["n1"], key, data)
    dest = tmp_path / "out"
    get_again(cluster, key, dest)
    assert dest.read_bytes() == data
    assert not dest.with_name("out.cluster-part").exists()
    assert [n for n, _ in told] == ["n0"]
    assert cluster.bad.of(key) == {"n0"}
    assert bad.exists()  # a read removes nothing
    # The next read goes to the good node first.
    dest.unlink()
    assert cluster.retrieve(key, str(dest)) == "n1"
    assert len(nodes["n0"].ops("retrieve")) == 1


def test_a_wrong_size_copy_fails_over_before_a_byte_is_written(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """A node tells a wrong-size copy before sending it: the next node writes
    git-annex's file and the first attempt succeeds."""
    cluster, nodes = make_cluster(3, copies=2)
    data = content(2 * BLOCK + 3)
    key = make_key(data)
    bad = leftover(nodes["n0"], key, data)
    put(nodes["n1"], key, data)
    dest = tmp_path / "out"
    assert cluster.retrieve(key, str(dest)) == "n1"
    assert dest.read_bytes() == data
    assert cluster.bad.of(key) == {"n0"}
    assert bad.exists()


def test_a_resumed_get_hashes_what_it_kept(make_cluster: MakeCluster, tmp_path: Path) -> None:
    """git-annex resumes from its temp file, which an earlier attempt may have filled
    with wrong bytes: those are hashed too, and the node is then read whole."""
    cluster, nodes = make_cluster(2, copies=2)
    data = content(BLOCK + 11)
    key = make_key(data)
    put(nodes["n0"], key, data)
    put(nodes["n1"], key, data)
    dest = tmp_path / "out"
    dest.write_bytes(b"\0" * 1000)  # wrong, from who knows where
    get_again(cluster, key, dest)
    assert dest.read_bytes() == data
    assert [c.offset for c in nodes["n0"].ops("retrieve")] == [1000, 0]
    assert cluster.bad.of(key) == set()  # n0's copy is good: nothing noted


def test_when_every_copy_is_bad_git_annex_gets_one_to_judge(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    cluster, nodes = make_cluster(2, copies=2)
    data = content(5000)
    key = make_key(data)
    rot(nodes["n0"], key, data)
    second = rot(nodes["n1"], key, data)
    dest = tmp_path / "out"
    assert cluster.retrieve(key, str(dest)) == "n1"
    assert dest.read_bytes() == second.read_bytes() != data
    assert cluster.bad.of(key) == {"n0", "n1"}


def test_a_bad_copy_and_an_unreadable_node_fail_the_get_with_nothing_kept(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """The unreadable node may hold the one good copy: git-annex must not be handed the
    bad one (fsck --from would answer it with REMOVE, which goes to every node)."""
    cluster, nodes = make_cluster(2, copies=2)
    data = content(5000)
    key = make_key(data)
    rot(nodes["n0"], key, data)
    put(nodes["n1"], key, data)
    nodes["n1"].fail("retrieve", Unavailable)
    dest = tmp_path / "out"
    with pytest.raises(RetrieveFailed, match="n0 holds a bad copy"):
        cluster.retrieve(key, str(dest))
    assert not dest.exists() or dest.read_bytes() == b""  # no wrong byte to resume from


def test_a_longer_copy_is_bad_not_truncated(make_cluster: MakeCluster, tmp_path: Path) -> None:
    """A copy with extra bytes at the end must not be cut to size and taken for good (a
    key without a hash could not tell)."""
    cluster, nodes = make_cluster(2, copies=2)
    data = content(3000)
    key = Key.parse(f"WORM-s{len(data)}-m1--file")
    put(nodes["n0"], key, data)
    path = object_path(nodes["n0"], key)
    path.chmod(0o644)
    path.write_bytes(data + b"extra")
    put(nodes["n1"], key, data)
    dest = tmp_path / "out"
    assert cluster.retrieve(key, str(dest)) == "n1"
    assert dest.read_bytes() == data


# -- the gateway's get (a stream that cannot be taken back) ---------------------------------


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


def test_stream_says_wrong_content_then_reads_the_good_copy_next_time(
    make_cluster: MakeCluster,
) -> None:
    cluster, nodes = make_cluster(2, copies=2)
    data = content(BLOCK + 5)
    key = make_key(data)
    rot(nodes["n0"], key, data)
    put(nodes["n1"], key, data)
    with pytest.raises(IntegrityError, match="wrong content"):
        cluster.retrieve_stream(key, Sink())
    again = Sink()
    assert cluster.retrieve_stream(key, again) == "n1"
    assert bytes(again.data) == data


def test_stream_skips_an_empty_leftover_before_anything_went_out(
    make_cluster: MakeCluster,
) -> None:
    cluster, nodes = make_cluster(2, copies=2)
    data = content(4000)
    key = make_key(data)
    leftover(nodes["n0"], key, data)
    put(nodes["n1"], key, data)
    out = Sink()
    assert cluster.retrieve_stream(key, out) == "n1"
    assert bytes(out.data) == data


def test_stream_resumed_checks_the_whole_copy(make_cluster: MakeCluster) -> None:
    """A client that holds the first bytes asks for the rest: the node's copy is read
    from byte 0 and hashed whole, and only the rest is sent."""
    cluster, nodes = make_cluster(2, copies=2)
    data = content(BLOCK + 500)
    key = make_key(data)
    rot(nodes["n0"], key, data)
    put(nodes["n1"], key, data)
    with pytest.raises(IntegrityError):
        cluster.retrieve_stream(key, Sink(), 700)
    rest = Sink()
    assert cluster.retrieve_stream(key, rest, 700) == "n1"
    assert bytes(rest.data) == data[700:]


def test_bad_copies_outlive_the_process(make_cluster: MakeCluster, tmp_path: Path) -> None:
    journal = tmp_path / "state" / "bad-copies"
    cluster, nodes = make_cluster(2, copies=2, bad=BadCopies(journal))
    data = content(100)
    key = make_key(data)
    rot(nodes["n0"], key, data)
    put(nodes["n1"], key, data)
    get_again(cluster, key, tmp_path / "out")
    assert BadCopies(journal).of(key) == {"n0"}
    # A store replaces the bad copy (a size-preserving rot looks "present") and clears it.
    src = tmp_path / "src"
    src.write_bytes(data)
    cluster.store(key, str(src))
    assert object_path(nodes["n0"], key).read_bytes() == data
    assert BadCopies(journal).of(key) == set()


# -- presence and under-replication -----------------------------------------------------


def test_a_key_below_mincopies_is_absent_unless_git_annex_recorded_it(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """A store that reached fewer than mincopies nodes failed: CHECKPRESENT must not
    turn it into a success on the retry. A key git-annex recorded as stored, which
    lost copies since, stays present (repair tops it up)."""
    cluster, nodes = make_cluster(2, copies=2)
    data = content(100)
    key = make_key(data)
    put(nodes["n0"], key, data)
    assert cluster.present(key, recorded=lambda _k: False) is False
    assert cluster.present(key, recorded=lambda _k: True) is True
    with pytest.raises(PresenceUnknown, match="fewer than mincopies=2"):
        cluster.present(key)  # a gateway: no location log to tell the two apart
    nodes["n1"].fail("present", Unavailable)
    # n1 might hold it, but nobody can say: not a copy git-annex may count
    assert cluster.present(key, recorded=lambda _k: False) is False
    nodes["n1"].heal()
    src = tmp_path / "src"
    src.write_bytes(data)
    outcome = cluster.store(key, str(src))
    assert (outcome.stored, outcome.already) == (["n1"], ["n0"])
    assert cluster.present(key) is True


def test_a_bad_copy_does_not_count_as_present(make_cluster: MakeCluster) -> None:
    cluster, nodes = make_cluster(2, copies=1)
    data = content(100)
    key = make_key(data)
    leftover(nodes["n0"], key, data)
    leftover(nodes["n1"], key, data)
    assert cluster.present(key) is False
    assert cluster.bad.of(key) == {"n0", "n1"}


class _Watching(FaultyNode):
    """Records what git-annex's file holds when the node is done writing (git-annex
    hashes that file as it grows, and a proxying git-annex streams it)."""

    def __init__(self, inner: FileNode, dest: Path) -> None:
        super().__init__(inner)
        self.dest, self.seen = dest, []

    def retrieve(self, key: Key, sink: Writable, offset: int = 0) -> None:
        super().retrieve(key, sink, offset)
        self.seen.append(self.dest.read_bytes() if self.dest.exists() else b"")


def rotten_then_good(
    tmp_path: Path, dest: Path
) -> tuple[Cluster, list[_Watching], Key, bytes, bytes]:
    """Two watched file:// nodes, w0 read first: a rotten copy on w0, the good one on
    w1; the cluster, its nodes, the key, its content and the rotten bytes."""
    nodes = []
    for i in range(2):
        (tmp_path / f"w{i}").mkdir()
        spec = parse_node(f"w{i}=file://{tmp_path}/w{i}?cost={10 + i}")
        nodes.append(_Watching(FileNode(spec), dest))
    data = content(70_000)
    key = make_key(data)
    rotten = rot(nodes[0], key, data).read_bytes()
    put(nodes[1], key, data)
    return Cluster(nodes, copies=2), nodes, key, data, rotten


def test_git_annex_never_takes_the_bytes_of_a_bad_copy(tmp_path: Path) -> None:
    """Once git-annex's file held a bad copy's bytes, it is not written again: the
    next node writes beside it, the right content replaces it whole, and the attempt
    fails, so that nothing git-annex hashed as it grew is taken as verified."""
    dest = tmp_path / "annex-tmp" / "KEY"
    dest.parent.mkdir()
    cluster, nodes, key, data, rotten = rotten_then_good(tmp_path, dest)
    with pytest.raises(GetAgain):
        cluster.retrieve(key, str(dest))
    assert nodes[0].seen == [rotten] and nodes[1].seen == [rotten]
    assert dest.read_bytes() == data
    assert not dest.with_name("KEY.cluster-part").exists()
    assert cluster.retrieve(key, str(dest)) == ""
    assert len(nodes[0].seen) == len(nodes[1].seen) == 1
    cluster.close()


def test_a_get_killed_half_way_is_continued_from_its_side_file(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    cluster, nodes = make_cluster(1)
    data = content(BLOCK + 99)
    key = make_key(data)
    put(nodes["n0"], key, data)
    dest = tmp_path / "out"
    dest.with_name("out.cluster-part").write_bytes(data[:5000])  # what the killed get wrote
    assert cluster.retrieve(key, str(dest)) == "n0"
    assert dest.read_bytes() == data
    assert [c.offset for c in nodes["n0"].ops("retrieve")] == [5000]


def test_a_failed_get_leaves_its_good_bytes_for_git_annex_to_resume(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    cluster, nodes = make_cluster(1)
    data = content(3 * BLOCK)
    key = make_key(data)
    put(nodes["n0"], key, data)
    nodes["n0"].fail("retrieve", Unavailable, after_bytes=BLOCK + 7)
    dest = tmp_path / "out"
    with pytest.raises(RetrieveFailed):
        cluster.retrieve(key, str(dest))
    assert dest.read_bytes() == data[: BLOCK + 7]
    nodes["n0"].heal()
    assert cluster.retrieve(key, str(dest)) == "n0"
    assert dest.read_bytes() == data


# -- what the review found ---------------------------------------------------------------


def test_a_stream_that_fell_over_blames_only_the_copy_that_is_bad(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """n0 (rotten in its first half) fails half-way, n1 (intact) continues, the hash
    fails at the end: n1 must not be noted bad, or the gateway's next REMOVE (which
    removes noted copies) would take the only good copy."""
    from git_annex_remote_proxy.gateway import ClusterBackend

    cluster, nodes = make_cluster(2, copies=2, mincopies=1)
    data = content(BLOCK)
    key = make_key(data)
    put(nodes["n0"], key, data)
    path = object_path(nodes["n0"], key)
    path.chmod(0o644)
    raw = bytearray(data)
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    put(nodes["n1"], key, data)
    nodes["n0"].fail("retrieve", Unavailable, after_bytes=BLOCK // 2, times=1)
    with pytest.raises(IntegrityError):
        cluster.retrieve_stream(key, Sink())
    assert cluster.bad.of(key) == {"n0"}
    (tmp_path / "locks").mkdir()
    backend = ClusterBackend(cluster, lambda _m: None, None, tmp_path / "locks")
    assert backend.remove(key) == (False, ())  # the bad copy only, and a FAILURE
    assert object_path(nodes["n1"], key).read_bytes() == data
    assert nodes["n0"].inner.present(key) is None
    assert backend.remove(key) == (True, ())  # asked again: everywhere


def test_a_read_from_past_the_end_notes_no_copy_bad(make_cluster: MakeCluster) -> None:
    """A receiver that says it holds more bytes than the key has (a client's corrupt
    partial file, a bogus offset) is refused: reading the nodes would find every good
    copy of a key without a hash "too short" and note it bad, and a gateway's next
    REMOVE deletes noted copies first."""
    cluster, nodes = make_cluster(2, copies=2, mincopies=1)
    data = content(5000)
    key = Key.parse(f"WORM-s{len(data)}-m1700000000--notes.txt")
    put(nodes["n0"], key, data)
    put(nodes["n1"], key, data)
    for offset in (len(data) + 1, 10 * len(data)):
        with pytest.raises(RetrieveFailed, match="past its end"):
            cluster.retrieve_stream(key, Sink(), offset)
    assert cluster.bad.of(key) == set()
    sink = Sink()
    cluster.retrieve_stream(key, sink, len(data))  # at the end: nothing to send, no error
    assert cluster.bad.of(key) == set()


@pytest.mark.parametrize("size", [10_000, 3 * BLOCK])  # read whole, and streamed
def test_what_the_gateway_answers_for_a_get_no_node_gives(
    make_cluster: MakeCluster, tmp_path: Path, size: int
) -> None:
    """A small get is read before anyone is asked whether the key is there: when no
    node gives it, the answer must still be the one asking first gave. Absent (404)
    only when every node said so or held nothing but a bad copy; a node that could
    not be asked makes it unknown; a node that holds it but fails the read, an error."""
    from git_annex_remote_proxy.gateway import ClusterBackend

    cluster, nodes = make_cluster(2, copies=2, mincopies=1)
    (tmp_path / "locks").mkdir()
    backend = ClusterBackend(cluster, lambda _m: None, None, tmp_path / "locks")
    data = content(size, seed=3)
    key = make_key(data)
    assert backend.retrieve(key, 0) is None  # on no node
    nodes["n1"].fail("check", Unavailable)
    nodes["n1"].fail("present", Unavailable)
    nodes["n1"].fail("retrieve", Unavailable)
    with pytest.raises(PresenceUnknown):
        backend.retrieve(key, 0)
    put(nodes["n0"], key, data)
    nodes["n0"].fail("retrieve", Unavailable)
    with pytest.raises(RetrieveFailed):  # held, and no read went through
        found = backend.retrieve(key, 0)
        assert found is not None
        b"".join(found[1])
    nodes["n0"].heal()
    nodes["n1"].heal()
    found = backend.retrieve(key, 0)
    assert found is not None and found[0] == size and b"".join(found[1]) == data
    rot(nodes["n0"], key, data)  # the only copy, bad: never handed out whole
    with pytest.raises(IntegrityError):
        found = backend.retrieve(key, 0)
        assert found is not None
        b"".join(found[1])


def test_a_resumable_store_replaces_a_noted_bad_copy(tmp_path: Path) -> None:
    """The gateway's uploads go through store_resuming: a rotten copy of the same size
    must not count as "already there"."""
    nodes = []
    for name in ("r0", "r1"):
        (tmp_path / name).mkdir()
        nodes.append(FileNode(parse_node(f"{name}=file://{tmp_path}/{name}")))
    cluster = Cluster(nodes, copies=2)
    data = content(5000)
    key = make_key(data)
    rot(FaultyNode(nodes[0]), key, data)
    cluster.bad.note(key, "r0", "read found it wrong")
    outcome = cluster.store_resuming(key, io.BytesIO(data), len(data), 0, nodes)
    assert sorted(outcome.stored) == ["r0", "r1"]
    assert object_path(FaultyNode(nodes[0]), key).read_bytes() == data
    assert cluster.bad.of(key) == set()
    cluster.close()


def test_maintenance_does_not_count_or_copy_from_a_noted_bad_copy(tmp_path: Path) -> None:
    from shared.ops.mover import Mover

    nodes = {}
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        nodes[name] = FaultyNode(FileNode(parse_node(f"{name}=file://{tmp_path}/{name}")))
    data = content(3000)
    key = make_key(data)
    for node in nodes.values():
        put(node, key, data)
    rot(nodes["c"], key, data)
    bad = BadCopies()
    bad.note(key, "c", "a read found it wrong")
    mover = Mover(nodes, copies=2, bad=bad)
    assert mover.confirmed(key, ["a", "b", "c"]) == ["a", "b"]
    # A copy to the bad node replaces its copy (same size: it looked present).
    assert mover.copy(key, ["c", "a"], "c") == "a"
    assert object_path(nodes["c"], key).read_bytes() == data
    assert bad.of(key) == set()


def test_a_proxy_remote_notes_no_bad_copy_of_its_gateway(tmp_path: Path) -> None:
    """Removing a gateway's copy removes every copy behind it: a cluster whose node is a
    gateway notes nothing (so no store removes "the bad copy" first)."""
    (tmp_path / "g").mkdir()
    node = FaultyNode(FileNode(parse_node(f"g=file://{tmp_path}/g")))
    cluster = Cluster([node], note_bad=False)
    data = content(100)
    key = make_key(data)
    rot(node, key, data)
    told: list[str] = []
    cluster.on_bad = lambda _k, n, _w: told.append(n)
    with pytest.raises(IntegrityError):
        cluster.retrieve_stream(key, Sink())
    assert told == ["g"] and cluster.bad.of(key) == set()
    cluster.close()


def test_the_location_log_is_read_from_the_private_journal_too(tmp_path: Path) -> None:
    """Remotes made with initremote --private log to journal-private: an
    under-replicated key of such a remote is still recorded (fsck --from keeps it)."""
    from shared.annex.locationlog import records

    key = make_key(b"private")
    uuid = "11111111-2222-3333-4444-555555555555"
    git_dir = tmp_path / ".git"
    journal = git_dir / "annex" / "journal-private"
    journal.mkdir(parents=True)
    path = f"{key.hashdirlower}{key.file_name}.log"
    (journal / path.replace("_", "__").replace("/", "_")).write_text(f"1700000000s 1 {uuid}\n")
    assert records(key, uuid, git_dir) is True
    assert records(key, "99999999-2222-3333-4444-555555555555", git_dir) is False


def test_a_restart_that_was_not_for_wrong_content_does_not_fail_the_get(
    tmp_path: Path,
) -> None:
    """A key without a size, on nodes that cannot tell sizes (encrypted): after a
    node fails mid-way the next one must start over, beside git-annex's file. What
    git-annex read there was right, so the get succeeds (it used to fail with
    GetAgain on every attempt, with the right content in place)."""
    cipher = Cipher(random.Random(5).randbytes(256) + b"passphrase-for-the-test", "HMACSHA256")
    nodes = []
    for i in range(2):
        (tmp_path / f"n{i}").mkdir()
        spec = parse_node(f"n{i}=file://{tmp_path}/n{i}?cost={10 + i}")
        nodes.append(FaultyNode(EncryptedNode(FileNode(spec), cipher)))
    cluster = Cluster(nodes, copies=2)
    data = content(3 * BLOCK + 5)
    key = Key.parse("URL--http&c%%example.com%big")
    for node in nodes:
        node.inner.store(key, io.BytesIO(data), len(data))
    nodes[0].fail("retrieve", Unavailable, after_bytes=BLOCK, times=1)
    dest = tmp_path / "tmpobj"
    assert cluster.retrieve(key, str(dest)) == "n1"
    assert dest.read_bytes() == data
    cluster.close()


def test_a_git_annex_proxy_never_sees_a_byte_before_it_proved_right(tmp_path: Path) -> None:
    """A git-annex proxy streams its temp file as it grows and says VALID whatever
    the get's outcome: there, the bytes go beside it until they proved right."""
    dest = tmp_path / ".git" / "annex" / "othertmp" / "proxy.0" / "KEY"
    dest.parent.mkdir(parents=True)
    cluster, nodes, key, data, _ = rotten_then_good(tmp_path, dest)
    assert cluster.retrieve(key, str(dest)) == "w1"  # no failed attempt
    assert nodes[0].seen == [b""] and nodes[1].seen == [b""]
    assert dest.read_bytes() == data
    assert not dest.with_name("KEY.cluster-part").exists()
    cluster.close()
