"""Reading a git-annex special remote's configuration from ``remote.log``.

An S3 node given ``annexremote=NAME`` adopts the bucket, prefix, endpoint,
chunking and cipher of the repository's own git-annex S3 remote NAME, so both
read and write the same objects. The configuration lives in ``remote.log`` on
the git-annex branch (lines ``UUID k=v ... timestamp=Ts``, values escaped as
``&NN;``); changes not yet committed to the branch sit in the journal, which
wins.
"""

from __future__ import annotations

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


def read_remote_log(cwd: Path | None = None) -> str:
    """The branch's ``remote.log`` followed by the journal's (newer) copy."""
    where = cwd or Path(os.getcwd())
    git_dir = _git(["rev-parse", "--git-dir"], where)
    if git_dir is None:
        raise ConfigError(f"annexremote= needs a git-annex repository, and {where} is not in one")
    text = _git(["cat-file", "blob", "git-annex:remote.log"], where) or ""
    journal = (where / git_dir.strip() / "annex" / "journal" / "remote.log").resolve()
    if journal.exists():
        text += "\n" + journal.read_text(errors="replace")
    return text


def annex_remote_config(name: str, cwd: Path | None = None) -> tuple[str, dict[str, str]]:
    """(UUID, configuration) of the special remote called ``name``."""
    configs = parse_remote_log(read_remote_log(cwd))
    found = [(u, c) for u, c in configs.items() if c.get("name") == name]
    if not found:
        known = sorted(c["name"] for c in configs.values() if "name" in c)
        raise ConfigError(
            f"annexremote={name}: this repository has no special remote called {name!r}"
            + (f" (it has: {', '.join(known)})" if known else "")
        )
    if len(found) > 1:
        raise ConfigError(
            f"annexremote={name}: several special remotes are called {name!r}; "
            "rename one with git annex renameremote"
        )
    return found[0]
