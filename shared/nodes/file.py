"""``file:///abs/path`` nodes: a local directory in git-annex's directory special remote layout.

Objects live at ``<root>/<hashdirlower>/<keyfile>/<keyfile>`` (lookups also try
the mixed-case hash directories of old directory remotes), so a node directory
can be used as a native ``type=directory`` remote. A store writes into a private
directory under ``<root>/tmp/`` and renames that directory into place, the same
atomic step the directory remote takes; the object is then made read-only.
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
from shared.keys import Key
from shared.nodes.base import BLOCK, CHEAP_COST, Node, Readable, Usage, Writable, copy_exact
from shared.nodes.tmpnames import (
    abandoned_claims,
    claim_name,
    is_stale,
    new_tmp_name,
    resume_name,
)
from shared.nodeurl import NodeSpec


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
        """Path and size of the stored object, None if confirmed absent."""
        self.check()
        for p in self._candidates(key):
            try:
                st = os.stat(p)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise Unavailable(f"cannot check {p}: {e.strerror}", self.name) from e
            if stat.S_ISREG(st.st_mode):
                return p, st.st_size
        # The root may have vanished while we looked: absence is only proven if it is still there.
        self.check()
        return None

    # -- Node interface -----------------------------------------------------

    def present(self, key: Key) -> int | None:
        found = self._find(key)
        return None if found is None else found[1]

    def store(self, key: Key, source: Readable, size: int) -> bool:
        if self._find(key) is not None:
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
            self._commit(key, tmpdir)
        except OSError as e:
            raise from_oserror(e, self.name, f"storing {key} in {self.root}") from e
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        return True

    def _commit(self, key: Key, tmpdir: Path) -> None:
        """Rename the finished temp directory into place: the object appears whole."""
        final = self.root / key.hashdirlower / key.file_name
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmpdir, final)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            # Another writer got there first; its object is complete (it was renamed in whole).
            if self._find(key) is None:
                raise
        else:
            _fsync_dir(final.parent)

    # -- resumable stores (a gateway's uploads) ------------------------------

    resumable = True

    def _kept(self, key: Key) -> list[Path]:
        """Where interrupted uploads of ``key`` left bytes, in the order a store takes
        them: the released temp, then claims whose process is gone (tmpnames)."""
        tmp = self.root / "tmp"
        free = tmp / resume_name(str(key))
        if free.exists():
            return [free]
        try:
            names = os.listdir(tmp)
        except OSError:
            return []
        return [tmp / name for name in abandoned_claims(str(key), names)]

    def partial(self, key: Key) -> int:
        for kept in self._kept(key):
            try:
                return os.stat(kept / key.file_name).st_size
            except OSError:
                continue
        return 0

    def _claim(self, key: Key) -> Path:
        """The key's kept bytes under a name of this store alone (a rename has one
        winner, so two uploads of one key never share a file), or a new empty temp."""
        mine = self.root / "tmp" / claim_name(str(key))
        mine.parent.mkdir(parents=True, exist_ok=True)
        for kept in self._kept(key):
            try:
                os.rename(kept, mine)
            except FileNotFoundError:
                continue  # another upload took it first
            os.utime(mine)  # its age counts from now: cleaners elsewhere go by age
            return mine
        mine.mkdir()
        return mine

    def store_from(
        self, key: Key, source: Readable, size: int, offset: int, prefix: Callable[[bytes], None]
    ) -> bool:
        if self._find(key) is not None:
            # What an interrupted upload of it kept is of no use any more.
            shutil.rmtree(self.root / "tmp" / resume_name(str(key)), ignore_errors=True)
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
            self._commit(key, mine)
            keep = False
        except OSError as e:
            raise from_oserror(e, self.name, f"storing {key} in {self.root}") from e
        except BaseException as e:
            keep = not wrong_content(e)  # wrong content: nothing worth keeping
            raise
        finally:
            if mine is not None and mine.exists():
                self._release(key, mine, keep)
        return True

    def _release(self, key: Key, mine: Path, keep: bool) -> None:
        """Give the kept bytes back under the key's shared temp name, or drop them."""
        try:
            worth = keep and os.stat(mine / key.file_name).st_size > 0
        except OSError:
            worth = False
        if worth:
            # If another upload released its own meanwhile, ours stays a claim, taken
            # up as abandoned once this process is gone.
            with contextlib.suppress(OSError):
                os.rename(mine, self.root / "tmp" / resume_name(str(key)))
            return
        shutil.rmtree(mine, ignore_errors=True)

    counts_bytes = True

    def used(self) -> int:
        total = 0
        for name, keydir in self._objects():
            try:
                total += (keydir / name).stat().st_size
            except OSError:
                continue  # removed meanwhile
        return total

    def _objects(self) -> Iterator[tuple[str, Path]]:
        self.check()
        for top in _subdirs(self.root):
            if top.name == "tmp":
                continue
            for mid in _subdirs(top):
                for keydir in _subdirs(mid):
                    yield keydir.name, keydir

    def list_names(self) -> Iterator[str]:
        """Objects are ``<2 hash dirs>/<name>/<name>``; ``tmp/`` holds stores in progress."""
        for name, keydir in self._objects():
            if (keydir / name).is_file():
                yield name

    def retrieve(self, key: Key, sink: Writable, offset: int = 0) -> None:
        found = self._find(key)
        if found is None:
            raise NotFound(f"{key} is not in {self.root}", self.name)
        path, _ = found
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
        """Remove what interrupted stores of this host left in tmp/ (their process is gone).

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
        for entry in entries:
            try:
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if is_stale(entry.name, mtime):
                shutil.rmtree(entry.path, ignore_errors=True)

    def usage(self) -> Usage | None:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return Usage(free=st.f_bavail * st.f_frsize, total=st.f_blocks * st.f_frsize)


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


def _subdirs(path: Path) -> Iterator[Path]:
    try:
        with os.scandir(path) as entries:
            dirs = [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    yield from sorted(dirs)
