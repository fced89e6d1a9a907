"""``serve``'s entry: which target a request reaches, under which restrictions, and
which way in (``configlist``, git, or the P2P gateway).

The restrictions are ``serve``'s own options, which under an ssh forced command are
the forced command's: ``--readonly`` and ``--appendonly`` (or git-annex-shell's
``GIT_ANNEX_SHELL_READONLY``/``GIT_ANNEX_SHELL_APPENDONLY`` in the environment) and
``--allow TARGET``. Nothing the client sends adds to them or lifts them
(``request`` reads the client's words; none of them is ever run).

Kept light: ``configlist`` and git (``git clone``, ``fetch``, ``push`` of a stock
client) answer without loading the gateway and its node backends.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from git_annex_remote_proxy import request
from git_annex_remote_proxy.config import GatewayConfig, Target
from git_annex_remote_proxy.request import Request
from shared.errors import ConfigError
from shared.p2p.io import Mode


def serve(
    asked: Request,
    config_path: Path | None,
    readonly: bool = False,
    appendonly: bool = False,
    allow: Sequence[str] = (),
    environ: Mapping[str, str] = os.environ,
) -> int:
    """Answer one request (``request.of``: serve's arguments, or what the client of a
    forced command sent)."""
    config = GatewayConfig.load(config_path)
    check_allowed(asked.target, allow)
    if allow and asked.target not in config.targets:  # name only the key's targets
        known = ", ".join(t for t in allow if t in config.targets) or "none"
        raise ConfigError(f"unknown target {asked.target!r} (targets here: {known})")
    target = config.target(asked.target)
    if asked.uuid is not None and asked.uuid != target.uuid:
        by_uuid = config.by_uuid(asked.uuid)
        if by_uuid is None:  # git-annex-shell's text
            raise ConfigError(f"expected repository UUID {asked.uuid} but found UUID {target.uuid}")
        target = by_uuid
        check_allowed(target.name, allow)
    how = mode(readonly, appendonly, environ)
    if asked.verb == request.CONFIGLIST:
        sys.stdout.write(f"annex.uuid={target.uuid}\ncore.gcrypt-id=\n")
        sys.stdout.flush()
        return 0
    if asked.verb in request.GIT_VERBS:
        return _git(asked.verb, target, how, config.path)
    from git_annex_remote_proxy.gateway import serve_target

    return serve_target(target, asked.client_uuid, how, config.path)


def mode(readonly: bool, appendonly: bool, environ: Mapping[str, str] = os.environ) -> str:
    """The strictest of the options and git-annex-shell's environment variables."""
    if readonly or environ.get("GIT_ANNEX_SHELL_READONLY"):
        return Mode.READONLY
    if appendonly or environ.get("GIT_ANNEX_SHELL_APPENDONLY"):
        return Mode.APPENDONLY
    return Mode.READWRITE


def check_allowed(target: str, allow: Sequence[str]) -> None:
    """Refuse a target that ``--allow`` does not name (before saying whether it exists)."""
    if allow and target not in allow:
        raise ConfigError(
            f"target {target} is not allowed for this key (it may use: "
            f"{', '.join(allow)}); ask the gateway's operator to add it to the key's --allow"
        )


def git_dir(config_path: Path, target: str) -> Path:
    """A target's git repository, for stock git-annex clients (``git clone``, ``git annex
    sync``): ``git/TARGET.git`` beside the configuration file."""
    return config_path.parent / "git" / f"{target}.git"


def _git(verb: str, target: Target, how: str, config_path: Path) -> int:
    """git-upload-pack or git-receive-pack on the target's git repository, in place of
    this process (stdin and stdout are the client's), as git-annex-shell hands git's
    commands to git-shell. Read-only, a push is refused; append-only, a push may not
    delete a branch or rewrite its history."""
    where = git_dir(config_path, target.name)
    if verb == request.RECEIVE_PACK and how == Mode.READONLY:
        raise ConfigError(
            f"git push to target {target.name} refused: this key is read-only "
            "(serve --readonly); push with a key that may write"
        )
    if not (where / "HEAD").is_file():
        raise ConfigError(
            f"target {target.name} has no git repository on this gateway: its operator "
            f"creates it with 'git init --bare {where}'"
        )
    argv = ["git"]
    if verb == request.RECEIVE_PACK and how == Mode.APPENDONLY:
        argv += ["-c", "receive.denyDeletes=true", "-c", "receive.denyNonFastForwards=true"]
    argv += [verb, str(where)]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp("git", argv)
    except OSError as e:
        raise ConfigError(
            f"cannot run git on this gateway ({e.strerror or e}): its operator installs git"
        ) from None
    return 1  # not reached: git took this process over
