"""Where an ssh node lives, as its URL says: kept apart from :mod:`shared.transport.ssh` so
that parsing a node URL does not import paramiko (a tenth of a second at every start of
a gateway session or a remote whose nodes need no ssh)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SSHTarget:
    """A host as written in a node URL: an ~/.ssh/config alias or a name/IP."""

    host: str
    port: int | None = None
    user: str | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and self.port else self.host
        return (
            (f"{self.user}@" if self.user else "") + host + (f":{self.port}" if self.port else "")
        )
