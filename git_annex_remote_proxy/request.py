"""What a client asks the gateway for: ``serve``'s own arguments, or, when ``serve`` is
an ssh forced command, the command line the client sent (``SSH_ORIGINAL_COMMAND``).

Pure parsing, no I/O. The forms accepted, and no others:

- ``TARGET``: what ``git-annex-remote-proxy serve TARGET`` asks;
- git-annex-shell's ``configlist DIR`` and ``p2pstdio DIR CLIENT-UUID``, with what
  git-annex appends (``--uuid UUID``, ``--debug``, ``-- autoinit=1 --``...), written
  after ``git-annex-remote-proxy [--debug] serve [OPTIONS]`` (the proxy remote, any
  ``gatewaycommand=``), after ``git-annex-shell [-c]`` (a stock git-annex), or bare;
- ``git-upload-pack DIR`` and ``git-receive-pack DIR`` (also ``git upload-pack DIR``),
  as git sends them over ssh, bare or after ``git-annex-shell -c``.

DIR's last component, less ``.git``, names the target (``/~/archive``, ``archive.git``,
``/srv/git/archive.git``), as it does for git-annex-shell's repository. A client's own
``serve`` options (``--config``, ``--allow``, ``--readonly``...) are read past and
ignored: under a forced command only the forced command's options apply, and nothing a
client sends is ever run as written.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shared.errors import ConfigError

PROG = "git-annex-remote-proxy"

P2PSTDIO = "p2pstdio"
CONFIGLIST = "configlist"
UPLOAD_PACK = "upload-pack"
RECEIVE_PACK = "receive-pack"
GIT_VERBS = (UPLOAD_PACK, RECEIVE_PACK)

# git-annex-shell's other commands: known, and refused by name.
_OTHER_SHELL_COMMANDS = ("notifychanges", "gcryptsetup", "inannex", "recvkey", "sendkey", "dropkey")
# Options that take a value: serve's own, and git-annex-shell's (--uuid, --debugfilter;
# -c NAME=VALUE as git takes it).
_SERVE_VALUED = ("--config", "--allow")
_SHELL_VALUED = ("--uuid", "--debugfilter", "-c", "--config")
_ENV_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*", re.S)
ONLY = "this ssh key serves only git-annex and git clone/fetch/push for the gateway's targets"
SERVE_USAGE = (
    f"{PROG} serve takes TARGET, or git-annex-shell's 'configlist DIR' or "
    "'p2pstdio DIR CLIENT-UUID' with their options"
)


class Refused(ConfigError):
    """What the client asked for is not something ``serve`` does."""


@dataclass(frozen=True)
class Request:
    """``verb``: P2PSTDIO, CONFIGLIST, UPLOAD_PACK or RECEIVE_PACK; ``target``: the
    target's name; ``uuid``: the repository UUID the client expects (``--uuid``)."""

    verb: str
    target: str
    uuid: str | None = None
    client_uuid: str | None = None


def of(args: Sequence[str], environ: Mapping[str, str]) -> Request:
    """What to serve: ``serve``'s own arguments, or (given none, as an ssh forced
    command) what the client sent, ``SSH_ORIGINAL_COMMAND``."""
    if args:
        return from_args(args)
    return from_ssh_command(environ.get("SSH_ORIGINAL_COMMAND", ""))


def from_args(args: Sequence[str]) -> Request:
    """``serve``'s own arguments after its options: ``TARGET``, or git-annex-shell's
    ``configlist``/``p2pstdio`` forms (what ``remote.NAME.annex-shell`` runs)."""
    words = list(args)
    if words[:1] == ["--"]:
        words = words[1:]
    return _annex_request(words, shlex.join(args), target_alone=True, forced=False)


def from_ssh_command(command: str) -> Request:
    """The client's command line, as sshd gives it to a forced command."""
    if not command.strip():
        raise Refused(
            f"nothing to serve: give a target ({PROG} serve TARGET); as an ssh forced "
            f"command, {ONLY}, no interactive login"
        )
    return _parse(_split(command), command, depth=0)


def _split(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError as e:
        raise Refused(f"refused {command!r}, which is not a command line ({e}): {ONLY}") from None


def _refused(command: str) -> Refused:
    return Refused(f"refused {command!r}: {ONLY}; use another account for anything else")


def _parse(words: list[str], command: str, depth: int) -> Request:
    # An "env NAME=VALUE ..." prefix (as in a gatewaycommand=) is read past, never run.
    if words[:1] == ["env"]:
        words = words[1:]
    while words and _ENV_WORD.fullmatch(words[0]):
        words = words[1:]
    if not words:
        raise _refused(command)
    program = posixpath.basename(words[0])
    if program == PROG:
        return _annex_request(_past_serve(words[1:], command), command, target_alone=True)
    if program == "git-annex-shell":
        rest = words[1:]
        while rest[:1] == ["-c"]:  # as a login shell: "git-annex-shell -c 'COMMAND'"
            rest = rest[1:]
        if len(rest) == 1 and len(rest[0].split()) > 1 and depth == 0:
            return _parse(_split(rest[0]), command, depth + 1)
        if rest[:1] and _git_verb(rest) is not None:
            return _git_request(rest, command)
        return _annex_request(rest, command)
    if _git_verb(words) is not None:
        return _git_request(words, command)
    return _annex_request(words, command)  # git-annex-shell's forms without the name


def _past_serve(words: list[str], command: str) -> list[str]:
    """What follows ``git-annex-remote-proxy [--debug] serve [OPTIONS] [--]``."""
    while words[:1] and words[0].startswith("-"):  # the program's own options (--debug)
        words = words[1:]
    if words[:1] != ["serve"]:
        raise _refused(command)  # "gateway remove ...", "--version" and the like
    words = words[1:]
    while words and words[0].startswith("-"):
        option = words.pop(0)
        if option == "--":
            break
        if option in _SERVE_VALUED and words:
            words.pop(0)
    return words


def _git_verb(words: list[str]) -> str | None:
    if words[0] in ("git-upload-pack", "git-receive-pack"):
        return words[0].removeprefix("git-")
    if words[0] == "git" and len(words) > 1 and words[1] in GIT_VERBS:
        return words[1]
    return None


def _git_request(words: list[str], command: str) -> Request:
    verb = _git_verb(words)
    assert verb is not None
    args = words[2:] if words[0] == "git" else words[1:]
    if len(args) != 1 or args[0].startswith("-"):
        raise Refused(f"refused {command!r}: git-{verb} takes one repository path, nothing else")
    return Request(verb, _target_of(args[0], command))


def _annex_request(
    words: list[str], command: str, target_alone: bool = False, forced: bool = True
) -> Request:
    """git-annex-shell's configlist/p2pstdio; a TARGET alone only after ``serve``."""
    if not words:
        raise Refused(
            f"nothing to serve: give a target ({PROG} serve TARGET), or use this command "
            "as git-annex-shell"
        )
    verb = words[0]
    if verb in (P2PSTDIO, CONFIGLIST):
        positional, uuid = _shell_params(words[1:], command)
        wanted = 2 if verb == P2PSTDIO else 1
        if len(positional) != wanted:
            usage = "DIR CLIENT-UUID" if verb == P2PSTDIO else "DIR"
            raise Refused(f"refused {command!r}: {verb} takes {usage} and options, nothing else")
        client = positional[1] if verb == P2PSTDIO else None
        return Request(verb, _target_of(positional[0], command), uuid, client)
    if verb in _OTHER_SHELL_COMMANDS:
        raise Refused(
            f"git-annex-shell's {verb} is not served here, only configlist and p2pstdio: "
            "use a git-annex that speaks the P2P protocol (6.20180312 or later), and "
            "no gcrypt remote"
        )
    if target_alone and len(words) == 1 and not verb.startswith("-"):
        return Request(P2PSTDIO, _target_of(verb, command))
    raise _refused(command) if forced else Refused(f"refused {command!r}: {SERVE_USAGE}")


def _shell_params(words: list[str], command: str) -> tuple[list[str], str | None]:
    """git-annex-shell's parameters after the command: (positional words, --uuid).
    Fields between ``--`` markers (autoinit=1, remoteuuid=) and options are left out."""
    params = words[: words.index("--")] if "--" in words else words
    positional: list[str] = []
    uuid: str | None = None
    i = 0
    while i < len(params):
        word = params[i]
        name, eq, value = word.partition("=")
        if word.startswith("-") and len(word) > 1:
            if name in _SHELL_VALUED and not eq:
                if i + 1 >= len(params):
                    raise Refused(f"refused {command!r}: {word} needs a value")
                value = params[i + 1]
                i += 1
            if name == "--uuid":
                uuid = value
        else:
            positional.append(word)
        i += 1
    return positional, uuid


def _target_of(directory: str, command: str) -> str:
    name = posixpath.basename(directory.rstrip("/")).removesuffix(".git")
    if not name or name in (".", "..", "~") or name.startswith("~"):
        raise Refused(
            f"refused {command!r}: {directory!r} names no target; the path's last "
            "component is the target's name (e.g. /~/archive or archive.git)"
        )
    return name
