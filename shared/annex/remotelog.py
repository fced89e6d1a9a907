"""Reading a git-annex special remote's configuration from ``remote.log``.

An S3 node given ``annexremote=NAME`` adopts the bucket, prefix, endpoint,
chunking and cipher of the repository's own git-annex S3 remote NAME, so both
read and write the same objects. The configuration lives in ``remote.log`` on
the git-annex branch (lines ``UUID k=v ... timestamp=Ts``, values escaped as
``&NN;``); changes not yet committed to the branch sit in the journal, which
wins.

A clone need not use the newest configuration: git-annex (since it has ``git annex
verifyremote``) keeps using the configuration this clone accepted until its user
accepts a newer one, and sends nothing to a remote whose configuration the clone
never accepted. The accepted configurations are the clone's own, in
``.git/annex/verified-remote.log`` (the format of ``remote.log``, without secrets
such as ``cipher``, and with what a ``sameas`` remote inherits); the state of each
remote is ``remote.NAME.annex-verified`` in git config (``verified``, or ``manual``
and ``automatic`` for a remote enabled but not accepted). ``used_remote_config``
reads what git-annex uses; older git-annex ignores both and uses the newest.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
from dataclasses import dataclass
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
    """(UUID, newest configuration) of the special remote called ``name``. For a remote
    made with ``initremote --sameas=OTHER``, the UUID is OTHER's, which git-annex gives
    the remote (GETUUID, the location log), and the configuration has what it inherits."""
    configs = parse_remote_log(read_remote_log(cwd))
    key, config = _find(configs, name, f"annexremote={name}: ")
    return _identity(configs, key, config)


def _find(
    configs: dict[str, dict[str, str]], name: str, prefix: str = ""
) -> tuple[str, dict[str, str]]:
    """(remote.log's UUID, configuration) of the remote called ``name``."""
    found = [(u, c) for u, c in configs.items() if c.get("name", c.get("sameas-name")) == name]
    if not found:
        known = sorted(n for c in configs.values() if (n := c.get("name", c.get("sameas-name"))))
        raise ConfigError(
            f"{prefix}this repository has no special remote called {name!r}"
            + (f" (it has: {', '.join(known)})" if known else "")
        )
    if len(found) > 1:
        raise ConfigError(
            f"{prefix}several special remotes are called {name!r}; "
            "rename one with git annex renameremote"
        )
    return found[0]


def _identity(
    configs: dict[str, dict[str, str]], key: str, config: dict[str, str]
) -> tuple[str, dict[str, str]]:
    """The UUID git-annex gives the remote whose ``remote.log`` line is ``key``, and its
    configuration with what a ``sameas`` remote inherits."""
    parent = config.get("sameas-uuid")
    if not parent:
        return key, config
    inherited = {k: v for k, v in configs.get(parent, {}).items() if k in SAMEAS_INHERITS}
    own = {k: v for k, v in config.items() if k not in SAMEAS_INHERITS}
    return parent, {**own, **inherited}


# -- what this clone uses (git annex verifyremote) ----------------------------------

VERIFIED_LOG = "verified-remote.log"
#: What ``verified-remote.log`` leaves out of a configuration: secrets, which cannot
#: change anyway, and are taken from ``remote.log``.
_NOT_VERIFIED = ("cipher", "cipherkeys", "pubkeys", "timestamp")


@dataclass(frozen=True)
class UsedConfig:
    """A special remote's configuration as git-annex uses it in this clone.

    ``config`` is what git-annex uses; ``newer`` the newest configuration in the
    git-annex branch when this clone has not accepted it (None: it uses the newest);
    ``accepted`` is False when the clone has accepted no configuration of the remote
    yet (``config`` is then the newest, and git-annex sends nothing to the remote)."""

    name: str
    uuid: str
    config: dict[str, str]
    newer: dict[str, str] | None = None
    accepted: bool = True

    @property
    def pending(self) -> bool:
        """Whether git annex verifyremote has something for this clone to accept."""
        return self.newer is not None or not self.accepted


def used_remote_config(name: str, cwd: Path | None = None) -> UsedConfig:
    """The configuration of the special remote ``name`` that git-annex uses in this
    clone (see the module's docstring), and whether a newer one awaits acceptance."""
    where = cwd or Path(os.getcwd())
    configs = parse_remote_log(read_remote_log(where))
    key, newest_line = _find(configs, name)
    uuid, newest = _identity(configs, key, newest_line)
    verified_text = _local_log(where, VERIFIED_LOG)
    accepted_line = parse_remote_log(verified_text).get(key) if verified_text else None
    if accepted_line is not None:
        _, accepted = _identity(configs, key, accepted_line)
        accepted = {**accepted, **{k: newest[k] for k in _NOT_VERIFIED if k in newest}}
        if _same(accepted, newest) or not _verifyremote_known(where):
            return UsedConfig(name, uuid, newest)
        return UsedConfig(name, uuid, accepted, newer=newest)
    state = _git(["config", "--get", f"remote.{name}.annex-verified"], where)
    enabled_only = state is not None and state.strip() in ("manual", "automatic")
    if enabled_only and _verifyremote_known(where):
        return UsedConfig(name, uuid, newest, accepted=False)
    # Older git-annex, or a remote enabled before git-annex verified remotes (which
    # git-annex accepts as it is on first use): the newest is used.
    return UsedConfig(name, uuid, newest)


def _same(a: dict[str, str], b: dict[str, str]) -> bool:
    def strip(c: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in c.items() if k not in _NOT_VERIFIED}

    return strip(a) == strip(b)


def _local_log(where: Path, log: str) -> str | None:
    """A log of this clone's own, under ``.git/annex`` (never in the git-annex branch)."""
    git_dir = _git(["rev-parse", "--git-dir"], where)
    if git_dir is None:
        return None
    path = where / git_dir.strip() / "annex" / log
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


@functools.cache
def _verifyremote_known(where: Path) -> bool:
    """Whether the git-annex this clone runs has ``verifyremote`` (and so uses the
    accepted configuration); asked only when that makes a difference."""
    try:
        proc = subprocess.run(
            ["git", "annex", "verifyremote", "--help"],
            cwd=where,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


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
