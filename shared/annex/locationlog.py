"""The keys a repository knows of, from the location logs of its git-annex branch.

Encrypted nodes cannot say which keys they hold (object names are HMACs), and a
git-annex repository behind a forced command cannot be listed at all: their keys
are matched against these. ``repair`` and ``fsck`` also compare what the nodes
hold with where git-annex believes the content is.

Location logs are ``<hashdirlower>/<key file name>.log`` on the branch, lines
``<timestamp>s <1|0> <uuid>``, the newest line per UUID winning; changes not
yet committed sit in ``.git/annex/journal`` (the path with ``_`` doubled and
``/`` as ``_``), which wins. Read with ``git ls-tree`` (a few hundred top-level
directories at a time) and one ``git cat-file --batch``, streamed, in bounded
memory at any number of keys.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import IO

from shared.annex.keys import Key
from shared.errors import ClusterError, ConfigError, InvalidKey

BRANCH = "git-annex"


def _is_log(path: str) -> bool:
    """Whether ``path`` is where a location log is (``aaa/bbb/KEY.log``)."""
    parts = path.split("/")
    return len(parts) == 3 and parts[2].endswith(".log") and len(parts[0]) == 3


def _key_of(path: str) -> Key | None:
    """The key of a location log's path (``aaa/bbb/KEY.log``), None for other files."""
    if not _is_log(path):
        return None
    parts = path.split("/")
    try:
        return Key.from_file_name(parts[2][: -len(".log")])
    except InvalidKey:
        return None


def present_uuids(text: str) -> set[str]:
    """UUIDs whose newest line says present."""
    newest: dict[str, tuple[float, bool]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[1] not in ("0", "1"):
            continue
        try:
            stamp = float(fields[0].rstrip("s"))
        except ValueError:
            continue
        uuid = fields[2]
        if uuid not in newest or stamp >= newest[uuid][0]:
            newest[uuid] = (stamp, fields[1] == "1")
    return {u for u, (_, here) in newest.items() if here}


def git_dir(cwd: Path) -> Path:
    proc = subprocess.run(
        ["git", "rev-parse", "--absolute-git-dir"],
        cwd=cwd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise ConfigError(f"{cwd} is not in a git repository; run this in the repository")
    return Path(proc.stdout.strip())


def _journal(cwd: Path) -> dict[str, Path]:
    """Branch path -> journal file, for location logs not yet committed."""
    journal = git_dir(cwd) / "annex" / "journal"
    out: dict[str, Path] = {}
    try:
        entries = list(os.scandir(journal))
    except OSError:
        return out
    for entry in entries:
        # "aaa_bbb_KEY.log": the hash directories are hex, so the two separators are
        # at fixed places (the mangling alone is ambiguous: "___" is "/_" or "_/").
        name = entry.name
        if len(name) > 8 and name[3] == name[7] == "_" and name.endswith(".log"):
            out[f"{name[:3]}/{name[4:7]}/{name[8:].replace('__', '_')}"] = Path(entry.path)
    return out


# git maps pack files in windows of up to 1 GiB and keeps 96 MiB of delta bases: on
# a million-key branch a reader's resident memory grew to the size of the pack (260
# MiB for cat-file). Smaller windows and a limit keep it bounded, at no measurable
# cost for streamed reads.
BOUNDED_GIT = (
    "-c", "core.packedGitWindowSize=8m",
    "-c", "core.packedGitLimit=64m",
    "-c", "core.deltaBaseCacheLimit=16m",
)  # fmt: skip
TOP_DIRS_PER_LS_TREE = 256  # one ls-tree -r per this many top-level directories


def _literal_pathspecs() -> dict[str, str]:
    """The environment for an ``ls-tree`` given directory names: each name taken as
    itself. A user's ``GIT_GLOB_PATHSPECS`` or ``GIT_ICASE_PATHSPECS`` would make
    ls-tree refuse, and a name could read as pathspec magic (``:(...)``)."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_PATHSPECS")}
    env["GIT_LITERAL_PATHSPECS"] = "1"
    return env


def _ls_tree(cwd: Path, *args: str) -> Generator[bytes, None, None]:
    """The entries ``git ls-tree -z`` prints, streamed; the process ends with the
    generator. A listing read to its end that git says failed is an error: a
    missing part would read as keys nobody holds."""
    proc = subprocess.Popen(
        # --full-tree: in a subdirectory, ls-tree lists only that part of a tree.
        ["git", *BOUNDED_GIT, "ls-tree", "--full-tree", "-z", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=_literal_pathspecs(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    buf = b""
    finished = False
    try:
        while block := proc.stdout.read(1 << 16):
            buf += block
            *entries, buf = buf.split(b"\0")
            yield from entries
        finished = True
    finally:
        proc.stdout.close()
        why = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        if proc.wait() != 0 and finished:
            detail = why.splitlines()[-1] if why else f"exit status {proc.returncode}"
            raise ClusterError(f"reading the git-annex branch failed: git ls-tree: {detail}")


def _branch_logs(cwd: Path) -> Generator[tuple[str, str], None, None]:
    """(path, blob id) of every location log on the branch, streamed; nothing when
    there is no branch yet.

    ``git ls-tree -r`` keeps every tree it has read in memory: 406 MiB for a
    million-key branch (a million small trees under ``aaa/bbb/``). So the top-level
    directories are listed first, then recursed into a few hundred at a time, each
    batch by its own ``ls-tree -r`` whose memory goes with it; the order is the
    branch's, as one ``ls-tree -r`` gives it. Every batch reads the same tree, the
    branch's when the listing began: git-annex may commit to it meanwhile."""
    resolved = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"refs/heads/{BRANCH}^{{tree}}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    tree = resolved.stdout.strip()
    if resolved.returncode != 0 or not tree:
        return  # no git-annex branch: no location logs
    tops: list[str] = []
    for entry in _ls_tree(cwd, tree):
        meta, _, path = entry.partition(b"\t")
        name = os.fsdecode(path)
        if meta.split()[1:2] == [b"tree"] and len(name) == 3:
            tops.append(name)
    for at in range(0, len(tops), TOP_DIRS_PER_LS_TREE):
        batch = tops[at : at + TOP_DIRS_PER_LS_TREE]
        for entry in _ls_tree(cwd, "-r", tree, "--", *batch):
            meta, _, path = entry.partition(b"\t")
            text = os.fsdecode(path)
            if text.endswith(".log") and text.count("/") == 2:
                yield text, meta.split()[2].decode()


def known_keys(cwd: Path | None = None) -> Iterator[Key]:
    """Every key with a location log, whoever holds it."""
    where = cwd or Path.cwd()
    journal = _journal(where)
    for path, _ in _branch_logs(where):
        key = _key_of(path)
        if key is not None:
            journal.pop(path, None)
            yield key
    for path in journal:
        key = _key_of(path)
        if key is not None:
            yield key


ASK_AHEAD = 4096  # location logs asked of cat-file before their answers are read


def keys_in(uuid: str, cwd: Path | None = None) -> Iterator[Key]:
    """Keys whose location log says ``uuid`` has them (the journal's copy wins).

    A thread feeds the branch's logs to one ``git cat-file --batch`` while this one
    reads the answers: asking one log at a time costs a round trip per key, most of a
    million-key scan. A key is parsed only once its log names ``uuid``."""
    where = cwd or Path.cwd()
    journal = _journal(where)
    proc = subprocess.Popen(
        ["git", *BOUNDED_GIT, "cat-file", "--batch"],
        cwd=where,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    asked: queue.Queue[str | None] = queue.Queue(maxsize=ASK_AHEAD)
    stop = threading.Event()
    failed: list[BaseException] = []
    feeder = threading.Thread(
        target=_ask_logs,
        args=(where, proc.stdin, asked, stop, failed),
        name="location-logs",
        daemon=True,
    )
    feeder.start()
    try:
        while (path := asked.get()) is not None:
            header = proc.stdout.readline().split()
            data = None
            if len(header) == 3:  # else "<id> missing": no content follows
                size = int(header[2])
                data = proc.stdout.read(size + 1)[:size]
            in_journal = journal.pop(path, None)
            text = _journal_text(in_journal, path, where) if in_journal else None
            if text is None:
                if data is None:
                    continue
                text = data.decode(errors="replace")
            if uuid in text and uuid in present_uuids(text) and (key := _key_of(path)):
                yield key
    finally:
        stop.set()
        proc.stdout.close()  # a feeder still writing gets a broken pipe, and ends
        feeder.join()
        proc.wait()
    if failed:
        raise failed[0]
    for path, file in journal.items():
        key = _key_of(path)
        if key is None:
            continue
        text = _journal_text(file, path, where)
        if text is not None and uuid in present_uuids(text):
            yield key


def _journal_text(file: Path, path: str, where: Path) -> str | None:
    """A journal file's log. git-annex commits the journal to the branch, then
    removes its files: one gone since the journal was listed is read from the
    branch as it is now (None: not there either)."""
    try:
        return file.read_text(errors="replace")
    except FileNotFoundError:
        return _on_branch(git_dir(where), path)


def _ask_logs(
    where: Path,
    ask: IO[bytes],
    asked: queue.Queue[str | None],
    stop: threading.Event,
    failed: list[BaseException],
) -> None:
    """Write the blob of every location log to ``ask`` and its path to ``asked``, in
    the same order, then None. Each path is queued after its line is written, and
    written lines are flushed before waiting for room in the queue: the reader waits
    only for answers that were asked."""
    logs = _branch_logs(where)
    try:
        for path, blob in logs:
            if stop.is_set():
                return
            if not _is_log(path):
                continue
            ask.write(blob.encode() + b"\n")
            try:
                asked.put_nowait(path)
            except queue.Full:
                ask.flush()
                while not _put(asked, path, stop):
                    if stop.is_set():
                        return
    except (BrokenPipeError, ValueError):
        return  # the reader stopped (and closed cat-file's output)
    except BaseException as e:
        failed.append(e)
    finally:
        logs.close()
        with contextlib.suppress(OSError, ValueError):
            ask.close()
        while not stop.is_set() and not _put(asked, None, stop):
            pass


def _put(asked: queue.Queue[str | None], item: str | None, stop: threading.Event) -> bool:
    """Queue ``item`` unless the reader stopped; whether it was queued."""
    try:
        asked.put(item, timeout=0.2)
        return True
    except queue.Full:
        return stop.is_set()


def records(key: Key, uuid: str, git_dir: Path) -> bool:
    """Whether the key's location log says ``uuid`` holds it. The log is read as
    git-annex reads it: the journal's copy (not yet committed) instead of the
    branch's, plus the private journal (remotes made with ``--private``, or
    ``annex.private``), in either hash layout of the branch (two levels, or one with
    ``annex.tune.branchhash1``). A few ``git cat-file`` runs: for rare questions."""
    lower = key.hashdirlower
    for path in (f"{lower}{key.file_name}.log", f"{lower.split('/')[0]}/{key.file_name}.log"):
        texts = [_journalled(git_dir / "annex" / "journal-private", path)]
        public = _journalled(git_dir / "annex" / "journal", path)
        texts.append(public if public is not None else _on_branch(git_dir, path))
        found = [t for t in texts if t is not None]
        if found:
            return uuid in present_uuids("\n".join(found))
    return False  # no log: nobody was ever recorded holding it


def _journalled(journal: Path, path: str) -> str | None:
    try:
        where = journal / path.replace("_", "__").replace("/", "_")
        return where.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return None


def _on_branch(git_dir: Path, path: str) -> str | None:
    proc = subprocess.run(
        ["git", f"--git-dir={git_dir}", "cat-file", "blob", f"{BRANCH}:{path}"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    return os.fsdecode(proc.stdout) if proc.returncode == 0 else None
