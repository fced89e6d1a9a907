"""FileNode: the conformance suite plus what is particular to local directories."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from node_conformance import (
    BreakingSource,
    FailsAfter,
    NodeConformance,
    NodeFactory,
    ResumableConformance,
    UnreadableSource,
    fetch,
    make_key,
    payload,
    plant_leftovers,
)

from shared.annex.keys import Key
from shared.cluster.fanout import SourceFailed
from shared.errors import ConfigError, IntegrityError, NoSpace, NotFound, Unavailable
from shared.nodes import open_node
from shared.nodes.base import Node
from shared.nodes.file import FileNode
from shared.nodes.url import parse_node


def file_node(root: Path, name: str = "disk") -> FileNode:
    return FileNode(parse_node(f"{name}=file://{root}"))


def tmp_entries(root: Path) -> list[str]:
    tmp = root / "tmp"
    return sorted(os.listdir(tmp)) if tmp.exists() else []


def place_raw(path: Path, data: bytes) -> None:
    """Put an object where git-annex would, read-only like git-annex leaves it."""
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    path.chmod(0o444)
    path.parent.chmod(0o555)


class TestFileNodeConformance(NodeConformance, ResumableConformance):
    @pytest.fixture
    def make_node(self, tmp_path: Path) -> NodeFactory:
        root = tmp_path / "node"
        root.mkdir()
        return lambda: file_node(root)

    @pytest.fixture
    def make_missing_node(self, tmp_path: Path) -> NodeFactory:
        return lambda: file_node(tmp_path / "unmounted")

    def leftovers(self, node: Node) -> list[str]:
        assert isinstance(node, FileNode)
        return tmp_entries(node.root)


class TestLayeredFileNodeConformance(NodeConformance):
    """chunk= and encryption=shared over a directory: git-annex's directory remote layout
    with the same settings; the big objects are split into about 20 chunks."""

    tells_sizes = False  # encrypted: the stored size is the ciphertext's
    checks_stored_size = False
    layers = "chunk=100000&encryption=shared"

    @pytest.fixture
    def make_node(self, tmp_path: Path) -> NodeFactory:
        from shared.crypto import Cipher
        from shared.nodes import open_node

        root = tmp_path / "node"
        root.mkdir()
        cipher = Cipher.generate().to_config()
        self.root = root
        return lambda: open_node(parse_node(f"d=file://{root}?{self.layers}&cipher={cipher}"))

    @pytest.fixture
    def make_missing_node(self, tmp_path: Path) -> NodeFactory:
        from shared.crypto import Cipher
        from shared.nodes import open_node

        root = tmp_path / "unmounted"
        cipher = Cipher.generate().to_config()
        return lambda: open_node(parse_node(f"d=file://{root}?{self.layers}&cipher={cipher}"))

    def leftovers(self, node: Node) -> list[str]:
        return tmp_entries(self.root)


class TestStreamingChunksFileNodeConformance(TestLayeredFileNodeConformance):
    """Chunks too big to buffer stream one at a time (forced here by a zero limit)."""

    tells_sizes = True
    checks_stored_size = True
    layers = "chunk=300000"

    @pytest.fixture(autouse=True)
    def _stream(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import shared.nodes.chunked

        monkeypatch.setattr(shared.nodes.chunked, "BUFFERED_CHUNK_LIMIT", 0)

    @pytest.fixture
    def make_node(self, tmp_path: Path) -> NodeFactory:
        from shared.nodes import open_node

        root = tmp_path / "node"
        root.mkdir()
        self.root = root
        return lambda: open_node(parse_node(f"d=file://{root}?{self.layers}"))

    @pytest.fixture
    def make_missing_node(self, tmp_path: Path) -> NodeFactory:
        from shared.nodes import open_node

        return lambda: open_node(parse_node(f"d=file://{tmp_path / 'unmounted'}?{self.layers}"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "disk"
    r.mkdir()
    return r


@pytest.fixture
def node(root: Path) -> FileNode:
    return file_node(root)


# -- layout -------------------------------------------------------------------


def test_layout_is_directory_remote_hashdirlower(node: FileNode, root: Path) -> None:
    data = payload(100)
    key = make_key(data)
    node.store(key, io.BytesIO(data), len(data))
    digest = hashlib.md5(str(key).encode()).hexdigest()
    path = root / digest[:3] / digest[3:6] / str(key) / str(key)
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) & 0o222 == 0, "object must be read-only"
    assert sorted(p.name for p in root.iterdir()) == sorted(["tmp", digest[:3]])


def test_layout_escapes_key_file_name(node: FileNode, root: Path) -> None:
    key = Key.parse("URL--http://h/100%&x:y")
    node.store(key, io.BytesIO(b"abc"), 3)
    path = root / key.hashdirlower / "URL--http&c%%h%100&s&ax&cy" / "URL--http&c%%h%100&s&ax&cy"
    assert path.read_bytes() == b"abc"


def test_chunks_share_the_parents_hash_directory(node: FileNode, root: Path) -> None:
    parent = Key.parse("SHA256E-s20--" + "aa" * 32)
    chunk = Key.parse("SHA256E-s20-S10-C2--" + "aa" * 32)
    node.store(chunk, io.BytesIO(b"0123456789"), 10)
    assert (root / parent.hashdirlower / str(chunk) / str(chunk)).exists()


def test_mixed_case_hashdir_is_found_retrieved_and_removed(node: FileNode, root: Path) -> None:
    data = payload(5000)
    key = make_key(data)
    old = root / key.hashdirmixed / key.file_name / key.file_name
    place_raw(old, data)
    assert node.present(key) == len(data)
    assert fetch(node, key) == data
    assert fetch(node, key, 4000) == data[4000:]
    # Storing again is a no-op: no second copy under the lower-case hash directory.
    node.store(key, UnreadableSource(), len(data))
    assert not (root / key.hashdirlower / key.file_name).exists()
    node.remove(key)
    assert not old.exists()
    assert not old.parent.exists()
    assert node.present(key) is None


def test_copies_in_both_layouts_are_all_removed(node: FileNode, root: Path) -> None:
    data = payload(64)
    key = make_key(data)
    place_raw(root / key.hashdirmixed / key.file_name / key.file_name, data)
    node.store(key, io.BytesIO(data), len(data))  # present: no-op
    place_raw(root / key.hashdirlower / key.file_name / key.file_name, data)
    node.remove(key)
    assert node.present(key) is None


def test_a_bad_replica_in_a_read_only_key_directory_is_replaced_in_place(
    node: FileNode, root: Path
) -> None:
    """A 0-byte file where git-annex's layout keeps the key (read-only directory, as
    git-annex leaves it): not the key; a store replaces it with one rename and leaves
    the directory read-only again. A good copy in the other layout is the key."""
    from shared.errors import BadReplica

    data = payload(4096)
    key = make_key(data)
    obj = root / key.hashdirlower / key.file_name / key.file_name
    place_raw(obj, b"")
    with pytest.raises(BadReplica, match=f"{key} in {root} has 0 bytes, not 4096"):
        node.present(key)
    assert node.store(key, io.BytesIO(data), len(data)) is True
    assert obj.read_bytes() == data
    assert stat.S_IMODE(obj.parent.stat().st_mode) == 0o555
    assert tmp_entries(root) == []
    other = make_key(payload(100, seed=9))
    place_raw(root / other.hashdirlower / other.file_name / other.file_name, b"x")
    place_raw(root / other.hashdirmixed / other.file_name / other.file_name, payload(100, 9))
    assert node.present(other) == 100
    assert fetch(node, other) == payload(100, 9)


# -- missing root: unavailable, never absent ------------------------------------------


def test_missing_root_is_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "unmounted"
    node = file_node(root)
    key = make_key(b"data")
    with pytest.raises(Unavailable):
        node.present(key)
    with pytest.raises(Unavailable):
        node.store(key, io.BytesIO(b"data"), 4)
    with pytest.raises(Unavailable):
        node.remove(key)
    with pytest.raises(Unavailable):
        node.retrieve(key, io.BytesIO())
    with pytest.raises(Unavailable):
        node.check()
    assert not root.exists(), "a store must not create the missing root (unmounted disk)"
    assert node.usage() is None


def test_root_that_is_a_file_is_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "file"
    root.write_bytes(b"")
    node = file_node(root)
    key = make_key(b"x")
    with pytest.raises(Unavailable):
        node.present(key)
    with pytest.raises(Unavailable):
        node.store(key, io.BytesIO(b"x"), 1)
    with pytest.raises(Unavailable):
        node.remove(key)


def test_root_vanishing_makes_stored_key_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "disk"
    root.mkdir()
    node = file_node(root)
    data = payload(10)
    key = make_key(data)
    node.store(key, io.BytesIO(data), len(data))
    moved = tmp_path / "elsewhere"
    root.rename(moved)
    with pytest.raises(Unavailable):
        node.present(key)
    moved.rename(root)
    assert node.present(key) == len(data)


# -- tmp/ ---------------------------------------------------------------------


def test_tmp_is_empty_after_success_and_failures(node: FileNode, root: Path) -> None:
    data = payload(3 * 1024 * 1024)
    key = make_key(data)
    with pytest.raises(IntegrityError):
        node.store(key, io.BytesIO(data[:-10]), len(data))
    assert tmp_entries(root) == []
    with pytest.raises(RuntimeError):
        node.store(key, _ExplodingSource(data, 1024 * 1024 + 1), len(data))
    assert tmp_entries(root) == []
    with pytest.raises(BaseException):  # noqa: B017 - any error; only the cleanup matters
        node.store(key, BreakingSource(data, 2 * 1024 * 1024), len(data))
    assert tmp_entries(root) == []
    assert node.present(key) is None
    node.store(key, io.BytesIO(data), len(data))
    assert tmp_entries(root) == []
    assert fetch(node, key) == data


class _ExplodingSource:
    def __init__(self, data: bytes, good: int) -> None:
        self._f = io.BytesIO(data[:good])

    def read(self, n: int = -1, /) -> bytes:
        chunk = self._f.read(n)
        if not chunk:
            raise RuntimeError("source exploded")
        return chunk


# -- concurrency ----------------------------------------------------------------


class _BarrierSource(io.BytesIO):
    """Reports EOF only once every writer has written everything: all renames then race."""

    def __init__(self, data: bytes, barrier: threading.Barrier) -> None:
        super().__init__(data)
        self._barrier = barrier

    def read(self, n: int | None = -1, /) -> bytes:
        chunk = super().read(n)
        if not chunk:
            self._barrier.wait(timeout=30)
        return chunk


@pytest.mark.parametrize("synchronised", ["start", "rename"])
def test_concurrent_stores_of_one_key(root: Path, synchronised: str) -> None:
    data = payload(1024 * 1024 + 3)
    key = make_key(data)
    workers = 8
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def work() -> None:
        node = file_node(root)  # separate handles, like separate processes
        try:
            if synchronised == "start":
                barrier.wait(timeout=30)
                node.store(key, io.BytesIO(data), len(data))
            else:
                node.store(key, _BarrierSource(data, barrier), len(data))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    node = file_node(root)
    assert node.present(key) == len(data)
    assert fetch(node, key) == data
    assert tmp_entries(root) == []
    keydir = root / key.hashdirlower / key.file_name
    assert os.listdir(keydir) == [key.file_name]


# -- usage --------------------------------------------------------------------


def test_usage_is_sane(node: FileNode) -> None:
    usage = node.usage()
    assert usage is not None
    assert 0 < usage.free <= usage.total
    st = os.statvfs(node.root)
    assert usage.total == st.f_blocks * st.f_frsize


def test_file_node_facts(node: FileNode) -> None:
    assert node.is_local
    assert node.cost == 100
    assert node.name == "disk"
    assert isinstance(open_node(node.spec), FileNode)


def test_store_refuses_when_not_enough_space(node: FileNode) -> None:
    usage = node.usage()
    assert usage is not None
    huge = usage.free + 1
    key = Key("SHA256E", "ab" * 32, size=huge)
    source = UnreadableSource()
    with pytest.raises(NoSpace, match="free"):
        node.store(key, source, huge)
    assert source.reads == 0


def test_retrieve_absent_names_node(node: FileNode) -> None:
    with pytest.raises(NotFound) as info:
        node.retrieve(make_key(b"nope"), io.BytesIO())
    assert info.value.node == "disk"
    assert "disk" in str(info.value)


# -- configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "file://host/srv/disk",
        "file://example.com/srv/disk",
        "file:relative/path",
        "file://relative/path",
        "file:///srv/disk?foo=1",
        "file:///srv/disk?cost=5&chunk=1MiB",
    ],
)
def test_bad_file_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="node d1"):
        FileNode(parse_node(f"d1={url}"))


@pytest.mark.parametrize(
    ("url", "root"),
    [
        ("file:///srv/disk", "/srv/disk"),
        ("file://localhost/srv/disk", "/srv/disk"),
        ("file:///srv/my%20disk?cost=5&state=readonly", "/srv/my disk"),
    ],
)
def test_good_file_urls(url: str, root: str) -> None:
    assert FileNode(parse_node(f"d1={url}")).root == Path(root)


def test_stale_tmp_of_dead_process_is_cleaned_others_kept(root: Path) -> None:
    """An interrupted store (process killed) leaves tmp/ debris; the next process removes it."""
    from shared.nodes.tmpnames import PREFIX as _TMP_PREFIX

    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    dead = subprocess_pid_that_exited()
    stale = tmp / f"{_TMP_PREFIX}{dead}-abc"
    alive = tmp / f"{_TMP_PREFIX}{os.getpid()}-def"  # a store in progress in a live process
    foreign = tmp / f"cluster-otherhost-{dead}-ghi"  # another host's: not ours to judge
    for d in (stale, alive, foreign):
        d.mkdir()
        (d / "partial").write_bytes(b"x" * 10)
    node = file_node(root)
    key = Key.parse("SHA256E-s3--" + hashlib.sha256(b"abc").hexdigest())
    node.store(key, io.BytesIO(b"abc"), 3)
    assert not stale.exists()
    assert alive.exists() and foreign.exists()


def subprocess_pid_that_exited() -> int:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


def test_chunked_listing_needs_every_chunk(tmp_path: Path) -> None:
    """A key is listed when all its chunks are there; a lone chunk, or chunks of another
    chunk size, are not this node's keys."""
    node = open_node(parse_node(f"c=file://{tmp_path}?chunk=10"))
    plain = open_node(parse_node(f"p=file://{tmp_path}"))
    whole = make_key(payload(25))
    node.store(whole, io.BytesIO(payload(25)), 25)
    partial = make_key(payload(30, seed=1))
    first = Key.parse(str(partial).replace("--", "-S10-C1--", 1))
    plain.store(first, io.BytesIO(payload(10, seed=1)), 10)
    other_size = Key.parse(str(make_key(payload(8, seed=2))).replace("--", "-S4-C1--", 1))
    plain.store(other_size, io.BytesIO(payload(4, seed=2)), 4)
    assert [str(k) for k in node.list_keys()] == [str(whole)]
    node.remove(first)
    assert [str(k) for k in node.list_keys()] == [str(whole)]


def test_listing_names_only_objects_whose_file_is_there(tmp_path: Path) -> None:
    """What the maintenance commands count as held: a key directory whose file a cut
    short removal took away holds nothing, and neither do tmp/, stray files or files
    at the wrong depth; the listing and the byte count agree."""
    node = file_node(tmp_path)
    kept, emptied = make_key(payload(5)), make_key(payload(6, seed=1))
    for key, size in ((kept, 5), (emptied, 6)):
        node.store(key, io.BytesIO(payload(size, seed=0 if key == kept else 1)), size)
    husk = tmp_path / emptied.hashdirlower / emptied.file_name
    os.chmod(husk / emptied.file_name, 0o644)
    (husk / emptied.file_name).unlink()  # the removal was killed before its rmdir
    (tmp_path / "tmp" / "x").mkdir(parents=True)
    (tmp_path / "abc").mkdir(exist_ok=True)
    (tmp_path / "abc" / "stray").write_bytes(b"not an object")
    assert list(node.list_names()) == [kept.file_name]
    assert [str(k) for k in node.list_keys()] == [str(kept)]
    assert node.used() == 5


# -- resumable stores (a gateway's uploads) -----------------------------------------


def test_old_resumable_temps_are_cleaned(tmp_path: Path) -> None:
    node = file_node(tmp_path)
    data = payload(1000)
    key = make_key(data)
    with pytest.raises(SourceFailed):
        node.store_from(key, FailsAfter(data, 500, SourceFailed("gone")), len(data), 0, print)
    (kept,) = (tmp_path / "tmp").iterdir()
    week_ago = time.time() - 8 * 24 * 3600
    os.utime(kept, (week_ago, week_ago))
    other = file_node(tmp_path)  # a new process: cleans once
    other.store(make_key(b"x"), io.BytesIO(b"x"), 1)
    assert other.partial(key) == 0


def test_an_upload_removes_this_hosts_leftovers_of_the_key_only(root: Path) -> None:
    data = payload(50_000)
    key = make_key(data)
    stays = plant_leftovers(root / "tmp", key, make_key(b"another key"))
    assert file_node(root).store_from(key, io.BytesIO(data), len(data), 0, print)
    assert tmp_entries(root) == stays
    assert fetch(file_node(root), key) == data
