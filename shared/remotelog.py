"""Reading a git-annex special remote's configuration from ``remote.log``.

An S3 node given ``annexremote=NAME`` adopts the bucket, prefix, endpoint,
chunking and cipher of the repository's own git-annex S3 remote NAME, so both
read and write the same objects. The configuration lives in ``remote.log`` on
the git-annex branch (lines ``UUID k=v ... timestamp=Ts``, values escaped as
``&NN;``); changes not yet committed to the branch sit in the journal, which
wins.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from pathlib import Path

from shared.errors import ConfigError

_ESCAPE = re.compile(r"&(\d+);")


def _unescape(value: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1))), value)


def parse_remote_log(text: str) -> dict[str, dict[str, str]]:
    """UUID -> configuration, the newest line per UUID."""
    newest: dict[str, tuple[float, dict[str, str]]] = {}
    for line in text.splitlines():
        uuid, _, rest = line.partition(" ")
        if not uuid or not rest:
            continue
        fields: dict[str, str] = {}
        for word in rest.split():
            k, sep, v = word.partition("=")
            if sep:
                fields[k] = _unescape(v)
        stamp_text = fields.pop("timestamp", "0s").rstrip("s")
        try:
            stamp = float(stamp_text)
        except ValueError:
            stamp = 0.0
        if uuid not in newest or stamp >= newest[uuid][0]:
            newest[uuid] = (stamp, fields)
    return {uuid: fields for uuid, (_, fields) in newest.items()}


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
        )
    except OSError:
        return None
    return out.stdout if out.returncode == 0 else None


def read_remote_log(cwd: Path | None = None, log: str = "remote.log") -> str:
    """The branch's ``remote.log`` (or another log: ``uuid.log``) followed by the
    journal's (newer) copy."""
    where = cwd or Path(os.getcwd())
    git_dir = _git(["rev-parse", "--git-dir"], where)
    if git_dir is None:
        raise ConfigError(f"annexremote= needs a git-annex repository, and {where} is not in one")
    text = _git(["cat-file", "blob", f"git-annex:{log}"], where) or ""
    journal = (where / git_dir.strip() / "annex" / "journal" / log).resolve()
    if journal.exists():
        text += "\n" + journal.read_text(errors="replace")
    return text


# What a remote made with ``initremote --sameas=OTHER`` takes from OTHER's configuration
# (git-annex's sameasInherits): the two reach the same storage.
SAMEAS_INHERITS = ("encryption", "mac", "cipher", "cipherkeys", "pubkeys", "chunksize")


def annex_remote_config(name: str, cwd: Path | None = None) -> tuple[str, dict[str, str]]:
    """(UUID, configuration) of the special remote called ``name``. For a remote made
    with ``initremote --sameas=OTHER``, the UUID is OTHER's, which git-annex gives the
    remote (GETUUID, the location log), and the configuration has what it inherits."""
    configs = parse_remote_log(read_remote_log(cwd))
    found = [(u, c) for u, c in configs.items() if c.get("name", c.get("sameas-name")) == name]
    if not found:
        known = sorted(n for c in configs.values() if (n := c.get("name", c.get("sameas-name"))))
        raise ConfigError(
            f"annexremote={name}: this repository has no special remote called {name!r}"
            + (f" (it has: {', '.join(known)})" if known else "")
        )
    if len(found) > 1:
        raise ConfigError(
            f"annexremote={name}: several special remotes are called {name!r}; "
            "rename one with git annex renameremote"
        )
    uuid, config = found[0]
    parent = config.get("sameas-uuid")
    if not parent:
        return uuid, config
    inherited = {k: v for k, v in configs.get(parent, {}).items() if k in SAMEAS_INHERITS}
    own = {k: v for k, v in config.items() if k not in SAMEAS_INHERITS}
    return parent, {**own, **inherited}


#: git-annex's trust levels as ``trust.log`` writes them.
TRUSTED, SEMITRUSTED, UNTRUSTED, DEAD = "1", "?", "0", "X"


def parse_trust_log(text: str) -> dict[str, str]:
    """UUID -> trust level, the newest line per UUID (lines ``UUID LEVEL
    timestamp=Ts``; of two lines with one timestamp, the later: the journal's)."""
    newest: dict[str, tuple[float, str]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[1] not in (TRUSTED, SEMITRUSTED, UNTRUSTED, DEAD):
            continue
        stamp = 0.0
        for field in fields[2:]:
            if field.startswith("timestamp="):
                with contextlib.suppress(ValueError):
                    stamp = float(field.removeprefix("timestamp=").rstrip("s"))
        if fields[0] not in newest or stamp >= newest[fields[0]][0]:
            newest[fields[0]] = (stamp, fields[1])
    return {uuid: level for uuid, (_, level) in newest.items()}


def trust_levels(cwd: Path | None = None) -> dict[str, str]:
    """The repository's trust levels, from ``trust.log`` on the git-annex branch and in
    the journal (``git annex untrust``/``dead``/...). A UUID without a line is
    semitrusted; so is everything outside a repository. Per-clone overrides
    (``remote.NAME.annex-trustlevel``) are not read: they do not hold in other clones."""
    try:
        return parse_trust_log(read_remote_log(cwd, "trust.log"))
    except ConfigError:
        return {}


def remote_names(uuid: str, cwd: Path | None = None) -> list[str]:
    """The names of this repository's special remotes with ``uuid``: the remote's own
    first, then its ``sameas`` remotes; none outside a repository."""
    try:
        configs = parse_remote_log(read_remote_log(cwd))
    except ConfigError:
        return []
    own = [c.get("name", "") for u, c in configs.items() if u == uuid]
    same = [c.get("sameas-name", "") for c in configs.values() if c.get("sameas-uuid") == uuid]
    return list(dict.fromkeys(n for n in own + same if n))


def describe_uuid(uuid: str, cwd: Path | None = None) -> str:
    """How this repository knows ``uuid``, for messages: ``remote NAME (UUID ...)`` for
    its special remotes (with their ``sameas`` names), else its description in
    ``uuid.log``, else only the UUID. Reads two logs: for rare messages only."""
    names = remote_names(uuid, cwd)
    if names:
        return f"remote {' / '.join(names)} (UUID {uuid})"
    description = ""
    try:
        for line in read_remote_log(cwd, "uuid.log").splitlines():
            u, _, rest = line.partition(" ")
            if u == uuid and rest:
                words = [w for w in rest.split() if not w.startswith("timestamp=")]
                description = _unescape(" ".join(words)) or description
    except ConfigError:  # not in a repository: nothing more to tell
        pass
    if description:
        return f"{description!r} (UUID {uuid})"
    return f"UUID {uuid}"
