"""``file:///abs/path`` nodes: a local directory in git-annex's directory special remote layout.

Objects live at ``<root>/<hashdirlower>/<keyfile>/<keyfile>`` (lookups also try
the mixed-case hash directories of old directory remotes), so a node directory
can be used as a native ``type=directory`` remote. A store writes into a private
directory under ``<root>/tmp/`` and renames that directory into place, the same
atomic step the directory remote takes; the object is then made read-only.
A gateway's uploads keep what they wrote in ``<root>/tmp/resume-*`` between
attempts; ``shared.nodes.tmpnames`` says how those are taken, given back and
removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from shared.annex.keys import Key
from shared.errors import (
    ConfigError,
    NodeError,
    NoSpace,
    NotFound,
    PermissionDenied,
    Unavailable,
    from_oserror,
    wrong_content,
)
from shared.nodes.base import CHEAP_COST, Node, Usage, check_size, copy_exact
from shared.nodes.owner import MARKER, MARKER_MAX, marker_text, parse_marker
from shared.nodes.tmpnames import (
    claim_name,
    is_stale,
    kept_entries,
    new_tmp_name,
    resume_name,
    unsettled,
)
from shared.nodes.url import NodeSpec
from shared.streams import BLOCK, Readable, Writable


class FileNode(Node):
    default_cost = CHEAP_COST

    def __init__(self, spec: NodeSpec) -> None:
        super().__init__(spec)
        parts = urlsplit(spec.url)
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(
                f"node {spec.name}: file:// URLs are local paths; write file:///abs/path, "
                f"not {spec.url!r}"
            )
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ConfigError(f"node {spec.name}: file:// needs an absolute path, got {path!r}")
        if spec.params:
            raise ConfigError(
                f"node {spec.name}: unknown parameter(s) for file:// nodes: "
                + ", ".join(sorted(spec.params))
            )
        self.root = Path(path)
        self._tmp_checked = False

    @property
    def is_local(self) -> bool:
        return True

    # -- paths --------------------------------------------------------------

    def _candidates(self, key: Key) -> list[Path]:
        name = key.file_name
        return [
            self.root / key.hashdirlower / name / name,
            self.root / key.hashdirmixed / name / name,
        ]

    def check(self) -> None:
        try:
            st = os.stat(self.root)
        except OSError as e:
            raise Unavailable(
                f"directory {self.root} is not accessible ({e.strerror}); is the disk mounted?",
                self.name,
            ) from e
        if not stat.S_ISDIR(st.st_mode):
            raise Unavailable(f"{self.root} is not a directory", self.name)

    def _find(self, key: Key) -> tuple[Path, int] | None:
        """Path and size of what is stored under the key's name (of the candidates, one
        of the key's size first), None if confirmed absent. (Whether the root is there
        is asked only when nothing was found: a found object proves it.)"""
        expected = key.content_size
        found: tuple[Path, int] | None = None
        name, root = key.file_name, str(self.root)
        for hashdir in (key.hashdirlower, key.hashdirmixed):  # as _candidates, as strings:
            p = f"{root}/{hashdir}/{name}/{name}"  # Paths cost more than the stat (a GET's 5%)
            try:
                st = os.stat(p)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise Unavailable(f"cannot check {p}: {e.strerror}", self.name) from e
            if stat.S_ISREG(st.st_mode):
                if expected is None or st.st_size == expected:
                    return Path(p), st.st_size
                found = found or (Path(p), st.st_size)
        # The root may have vanished while we looked: absence is only proven if it is still there.
        self.check()
        return found

    def _holds(self, key: Key, size: int) -> bool:
        """Whether the key is stored with exactly ``size`` bytes; anything else under its
        name (a 0-byte leftover, a truncated copy) is for a store to replace."""
        found = self._find(key)
        return found is not None and found[1] == size

    # -- the owner marker (shared.nodes.owner) -------------------------------

    records_owner = True

    def owner(self) -> str | None:
        marker = self.root / MARKER
        self.check()
        try:
            with open(marker, "rb") as f:
                data = f.read(MARKER_MAX)
        except FileNotFoundError:
            self.check()  # absent only while the directory is still there
            return None
        except OSError as e:
            raise Unavailable(f"cannot read {marker}: {e.strerror}", self.name) from e
        return parse_marker(data, self.name, str(marker))

    def claim(self, uuid: str, take_over: bool = False) -> str:
        current = self.owner()
        if current == uuid or (current is not None and not take_over):
            return current
        marker = self.root / MARKER
        # A dotfile beside the marker: one filesystem, so the link and rename are atomic.
        temp = self.root / f"{MARKER}.{new_tmp_name()}"
        for left in self.root.glob(f"{MARKER}.*"):  # of claims killed half-way
            if is_stale(left.name.removeprefix(f"{MARKER}.")):
                with contextlib.suppress(OSError):
                    left.unlink()
        try:
            with open(temp, "xb") as out:
                out.write(marker_text(uuid))
                out.flush()
                os.fsync(out.fileno())
            if current is None:
                try:
                    os.link(temp, marker)  # exclusive: of two first claims, one wins
                except FileExistsError:
                    return self.owner() or uuid  # the winner's
                except OSError as e:
                    if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                        raise
                    os.rename(temp, marker)  # no hard links here: atomic, not exclusive
            else:
                os.replace(temp, marker)
            _fsync_dir(self.root)
        except OSError as e:
            raise from_oserror(e, self.name, f"recording the owner in {marker}") from e
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        return self.owner() or uuid

    # -- Node interface -----------------------------------------------------

    def present(self, key: Key) -> int | None:
        found = self._find(key)
        return None if found is None else check_size(key, found[1], self.name, str(self.root))

    def store(self, key: Key, source: Readable, size: int) -> bool:
        if self._holds(key, size):
            return False
        usage = self.usage()
        if usage is not None and usage.free < size:
            raise NoSpace(f"{size} bytes needed, {usage.free} free in {self.root}", self.name)
        name = key.file_name
        self._clean_stale_tmp()
        tmpdir = self.root / "tmp" / new_tmp_name()
        try:
            tmpdir.mkdir(parents=True)
            with open(tmpdir / name, "xb") as out:
                copy_exact(source, out, size, key, self.name)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmpdir / name, 0o444)
            self._commit(key, tmpdir, size)
        except OSError as e:
            raise from_oserror(e, self.name, f"storing {key} in {self.root}") from e
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        return True

    def _commit(self, key: Key, tmpdir: Path, size: int) -> None:
        """Rename the finished temp directory into place: the object appears whole. If
        the key directory is there already, either another writer got there first (its
        object is complete: it was renamed in whole) or it holds something else under
        the key's name (a bad replica), which the new file replaces in one rename."""
        final = self.root / key.hashdirlower / key.file_name
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmpdir, final)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            if not self._holds(key, size):
                _replace_in(final, tmpdir / key.file_name)
        else:
            _fsync_dir(final.parent)

    # -- resumable stores (a gateway's uploads) ------------------------------

    resumable = True

    def _kept(self, key: Key) -> list[tuple[Path, int]]:
        """What interrupted uploads of ``key`` left that no running upload holds (the
        released temp, claims whose process is gone: tmpnames), with the bytes each
        holds (-1: none), the most first: the one a store takes."""
        tmp = self.root / "tmp"
        try:
            names = os.listdir(tmp)
        except OSError:
            return []
        found = [(tmp / e, _size(tmp / e / key.file_name)) for e in kept_entries(str(key), names)]
        return sorted(found, key=lambda entry: -entry[1])

    def partial(self, key: Key) -> int:
        kept = self._kept(key)
        return max(kept[0][1], 0) if kept else 0

    def _claim(self, key: Key) -> Path:
        """The key's kept bytes under a name of this store alone (a rename has one
        winner, so two uploads of one key never share a file), or a new empty temp.
        What else was kept holds fewer bytes: of no use any more, it is dropped."""
        mine = self.root / "tmp" / claim_name(str(key))
        mine.parent.mkdir(parents=True, exist_ok=True)
        taken = False
        for kept, _ in self._kept(key):
            if taken:
                self._drop(kept)
                continue
            try:
                os.rename(kept, mine)
            except FileNotFoundError:
                continue  # another upload took it first
            os.utime(mine)  # its age counts from now: cleaners elsewhere go by age
            taken = True
        if not taken:
            mine.mkdir()
        return mine

    def _drop(self, kept: Path) -> None:
        """Remove kept bytes that no upload holds: renamed to a temp name of this process
        first (one winner: what another upload took meanwhile is never touched; if this
        process is killed now, the next one removes it as stale), then deleted."""
        doomed = kept.parent / new_tmp_name()
        try:
            os.rename(kept, doomed)
        except OSError:
            return  # taken meanwhile
        shutil.rmtree(doomed, ignore_errors=True)

    def _drop_kept(self, key: Key) -> None:
        """The key is stored: what interrupted uploads of it kept is of no use any more.
        Claims of running uploads are theirs; they drop them when they end (_release)."""
        for kept, _ in self._kept(key):
            self._drop(kept)

    def _stored(self, key: Key) -> bool:
        try:
            found = self._find(key)
        except NodeError:
            return False
        # (A bad replica, of another size than the key's, is not the key stored.)
        expected = key.content_size
        return found is not None and (expected is None or found[1] == expected)

    def store_from(
        self, key: Key, source: Readable, size: int, offset: int, prefix: Callable[[bytes], None]
    ) -> bool:
        if self._holds(key, size):
            self._drop_kept(key)
            return False
        self._clean_stale_tmp()
        name = key.file_name
        mine: Path | None = None
        keep = True  # on failure, release what was written for the next attempt
        try:
            mine = self._claim(key)
            with open(os.open(mine / name, os.O_RDWR | os.O_CREAT, 0o644), "r+b") as out:
                kept = os.fstat(out.fileno()).st_size
                if kept < offset:
                    if self._stored(key):
                        return False  # another upload committed it and dropped what was kept
                    raise NodeError(
                        f"another upload of {key} changed its kept bytes ({kept}, not "
                        f"{offset}); try again",
                        self.name,
                    )
                out.truncate(offset)
                while out.tell() < offset and (block := out.read(min(BLOCK, offset - out.tell()))):
                    prefix(block)
                try:
                    copy_exact(source, out, size - offset, key, self.name)
                finally:
                    out.flush()
                    os.fsync(out.fileno())
            os.chmod(mine / name, 0o444)
            self._commit(key, mine, size)
            keep = False
        except OSError as e:
            raise from_oserror(e, self.name, f"storing {key} in {self.root}") from e
        except BaseException as e:
            keep = not wrong_content(e)  # wrong content: nothing worth keeping
            raise
        finally:
            if mine is not None and mine.exists():
                self._release(key, mine, keep)
        self._drop_kept(key)
        return True

    def _release(self, key: Key, mine: Path, keep: bool) -> None:
        """Give the kept bytes back under the key's shared temp name, or drop them when
        they are worth nothing: wrong content, no bytes, or the key stored meanwhile by
        another upload. If another upload released its own meanwhile, the one holding
        more bytes is kept; only if that keeps happening does ours stay a claim (taken
        up as abandoned once this process is gone)."""
        name = key.file_name
        if not (keep and _size(mine / name) > 0 and not self._stored(key)):
            shutil.rmtree(mine, ignore_errors=True)
            return
        free = self.root / "tmp" / resume_name(str(key))
        for _ in range(3):
            try:
                os.rename(mine, free)
                return
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    return
            other = self.root / "tmp" / claim_name(str(key))
            try:
                os.rename(free, other)
            except OSError:
                continue  # taken meanwhile
            if _size(other / name) > _size(mine / name):
                mine, other = other, mine
            shutil.rmtree(other, ignore_errors=True)

    counts_bytes = True

    def used(self) -> int:
        total = 0
        for name, keydir in self._objects():
            try:
                total += os.stat(f"{keydir}/{name}").st_size
            except OSError:
                continue  # removed meanwhile
        return total

    def _objects(self) -> Iterator[tuple[str, str]]:
        """(name, key directory) of every object directory, as strings: a listing of a
        million keys is mostly this loop, and a Path per directory cost more than the
        directory reads themselves."""
        self.check()
        root = str(self.root)
        for top in _subdirs(root):
            if top == "tmp":
                continue
            for mid in _subdirs(f"{root}/{top}"):
                where = f"{root}/{top}/{mid}"
                for name in _subdirs(where):
                    yield name, f"{where}/{name}"

    def list_names(self) -> Iterator[str]:
        """Objects are ``<2 hash dirs>/<name>/<name>``; ``tmp/`` holds stores in progress.
        A key directory without its file (a removal cut short) holds nothing."""
        for name, keydir in self._objects():
            if os.path.isfile(f"{keydir}/{name}"):
                yield name

    def retrieve(self, key: Key, sink: Writable, offset: int = 0) -> None:
        found = self._find(key)
        if found is None:
            raise NotFound(f"{key} is not in {self.root}", self.name)
        path, size = found
        check_size(key, size, self.name, str(self.root))
        try:
            with open(path, "rb") as src:
                src.seek(offset)
                while block := src.read(BLOCK):
                    sink.write(block)
        except OSError as e:
            raise from_oserror(e, self.name, f"reading {path}") from e

    def remove(self, key: Key) -> None:
        self.check()
        for p in self._candidates(key):
            keydir = p.parent
            if not keydir.exists():
                continue
            try:
                os.chmod(keydir, 0o755)
                if p.exists():
                    os.chmod(p, 0o644)
                    p.unlink()
                keydir.rmdir()
            except FileNotFoundError:
                pass  # removed concurrently: absent is what we want
            except OSError as e:
                raise from_oserror(e, self.name, f"removing {p}") from e
        if self._find(key) is not None:
            raise PermissionDenied(f"{key} is still present after removal", self.name)

    def _clean_stale_tmp(self) -> None:
        """Remove what interrupted stores of this host left in tmp/ (their process is gone),
        and settle what killed uploads kept (``_settle``).

        Other hosts may share the node (a network filesystem); their entries carry
        their host name and are left alone. Done once per process.
        """
        if self._tmp_checked:
            return
        self._tmp_checked = True
        try:
            entries = list(os.scandir(self.root / "tmp"))
        except OSError:
            return
        left = []
        for entry in entries:
            try:
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if is_stale(entry.name, mtime):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                left.append(entry.name)
        for group in unsettled(left):
            self._settle(group)

    def _settle(self, group: list[str]) -> None:
        """One key's kept bytes that no running upload holds, not where the next upload
        looks first (several entries, or a claim its killed process left): the one
        holding the most bytes is given back under the key's shared temp name, the
        others are dropped."""
        tmp = self.root / "tmp"
        # The most bytes first; of equal ones, the shared name (nothing to rename).
        best, *rest = sorted(group, key=lambda e: (_held(tmp / e), "." not in e), reverse=True)
        for entry in rest:
            self._drop(tmp / entry)
        if _held(tmp / best) <= 0:
            self._drop(tmp / best)
        elif "." in best:
            with contextlib.suppress(OSError):  # taken, or another released, meanwhile
                os.rename(tmp / best, tmp / best.partition(".")[0])

    def usage(self) -> Usage | None:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return Usage(free=st.f_bavail * st.f_frsize, total=st.f_blocks * st.f_frsize)


def _replace_in(keydir: Path, new: Path) -> None:
    """Put ``new`` in place of the file of its name in ``keydir`` with one rename (the
    old one stays whole until then); the directory, read-only like git-annex leaves
    it, is writable only meanwhile."""
    mode = stat.S_IMODE(os.stat(keydir).st_mode)
    os.chmod(keydir, mode | stat.S_IWUSR | stat.S_IXUSR)
    try:
        os.replace(new, keydir / new.name)
    finally:
        os.chmod(keydir, mode)
    _fsync_dir(keydir)


def _fsync_dir(path: Path) -> None:
    """Make a rename durable; best effort on filesystems that refuse directory fsync."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _held(entry: Path) -> int:
    """The bytes a kept entry of tmp/ holds: the size of the file in it; -1 when none."""
    try:
        with os.scandir(entry) as files:
            sizes = [f.stat().st_size for f in files if f.is_file(follow_symlinks=False)]
    except OSError:
        return -1
    return max(sizes, default=-1)


def _size(path: Path) -> int:
    """The size of the file at ``path``; -1 when there is none."""
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def _subdirs(path: str) -> list[str]:
    """The names of the directories in ``path``, sorted; none if it cannot be read."""
    try:
        with os.scandir(path) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except OSError:
        return []
