"""Credentials for HTTP servers from ``git credential``, as git-annex's own HTTP client
gets them (``Git/Credential.hs``): ``fill`` with the URL and the server's
``WWW-Authenticate`` challenges when the server answers 401, ``approve`` once the
credentials worked, ``reject`` when the server refused them. Whatever helpers the
user configured (``credential.helper``: a store, a cache, a keyring) answer, or git
prompts on the terminal as it does for ``git fetch``.

Passwords never appear in messages, logs or exceptions raised here.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field

TIMEOUT = 300.0  # git may be prompting a person


class CredentialError(Exception):
    """``git credential`` could not be run, or gave no username and password."""


@dataclass(frozen=True)
class Credential:
    """What ``git credential fill`` answered (every field, to hand back to approve and
    reject as git expects)."""

    fields: tuple[tuple[str, str], ...] = field(repr=False)

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.fields if k == name), None)

    @property
    def username(self) -> str:
        return self.get("username") or ""

    @property
    def password(self) -> str:
        return self.get("password") or ""

    def __repr__(self) -> str:  # never the password
        return f"Credential(username={self.username!r})"


def _format(pairs: Iterable[tuple[str, str]]) -> bytes:
    lines = []
    for k, v in pairs:
        if "\n" in k or "\n" in v or "\0" in v:
            raise CredentialError(f"a credential field {k!r} contains a newline or NUL")
        lines.append(f"{k}={v}\n")
    return ("".join(lines) + "\n").encode()


def _parse(out: bytes) -> tuple[tuple[str, str], ...]:
    pairs = []
    for line in out.decode("utf-8", "replace").splitlines():
        k, sep, v = line.partition("=")
        if sep:
            pairs.append((k, v))
    return tuple(pairs)


def _run(action: str, data: bytes) -> bytes:
    try:
        proc = subprocess.run(
            ["git", "credential", action],
            input=data,
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CredentialError(f"git credential {action} did not run: {e}") from None
    if proc.returncode != 0:
        last = proc.stderr.decode(errors="replace").strip().splitlines()
        detail = last[-1].strip() if last else f"exit status {proc.returncode}"
        raise CredentialError(f"git credential {action} failed: {detail[:300]}")
    return proc.stdout


def fill(url: str, challenges: Iterable[str] = (), username: str | None = None) -> Credential:
    """The username and password git's helpers (or the user, prompted) give for ``url``;
    ``CredentialError`` when there are none."""
    pairs = [("url", url)]
    if username:
        pairs.append(("username", username))
    pairs += [("wwwauth[]", c) for c in challenges]
    cred = Credential(_parse(_run("fill", _format(pairs))))
    if cred.get("username") is None or cred.get("password") is None:
        raise CredentialError("git credential fill gave no username and password")
    return cred


def approve(cred: Credential) -> None:
    """Tell git's helpers the credential worked (a store keeps it); failures ignored."""
    with contextlib.suppress(CredentialError):
        _run("approve", _format(cred.fields))


def reject(cred: Credential) -> None:
    """Tell git's helpers the credential was refused (a store forgets it); failures ignored."""
    with contextlib.suppress(CredentialError):
        _run("reject", _format(cred.fields))
