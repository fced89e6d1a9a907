"""The gateway's configuration file: named targets, each a node or a cluster, with a UUID.

TOML, one table per target::

    [targets.archive]
    uuid = "3f1c...-..."             # generated once; clients record it
    nodes = ["a=file:///srv/a", "b=sftp://store2/srv/b"]
    copies = 2                       # optional, default: every node
    mincopies = 1                    # optional, default: copies
    ciphers = { b = "..." }          # written by 'gateway add' for encryption=shared nodes

Node URLs and ``copies``/``mincopies`` mean what they mean for the cluster remote.
The file is rewritten whole through a temp file and a rename, so a reader never
sees half of it; it is created readable by its owner only, since it holds the
ciphers of encrypting nodes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import tomllib
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import ConfigError
from shared.nodes import generate_ciphers, with_ciphers
from shared.nodes.owner import Ownership
from shared.nodes.url import NAME_RE, NodeSpec, parse_node_list

ENV_CONFIG = "GIT_ANNEX_REMOTE_PROXY_CONFIG"
_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def default_path() -> Path:
    """``$GIT_ANNEX_REMOTE_PROXY_CONFIG``, else
    ``$XDG_CONFIG_HOME/git-annex-remote-proxy/gateway.toml`` (``~/.config/...``)."""
    if os.environ.get(ENV_CONFIG):
        return Path(os.environ[ENV_CONFIG])
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "git-annex-remote-proxy" / "gateway.toml"


@dataclass
class Target:
    name: str
    uuid: str
    nodes: list[str]
    copies: int | None = None
    mincopies: int | None = None
    ciphers: dict[str, str] = field(default_factory=dict)  # node name -> base64 cipher

    def node_list(self) -> list[NodeSpec]:
        """The nodes as written in the file (what operators edit)."""
        return parse_node_list(" ".join(self.nodes))

    def specs(self) -> list[NodeSpec]:
        """The nodes as the gateway opens them: each encrypting node with its cipher."""
        return with_ciphers(self.node_list(), self.ciphers)

    def validate(self) -> None:
        if not NAME_RE.fullmatch(self.name):
            raise ConfigError(
                f"target name {self.name!r} is invalid: use letters, digits, '.', '_' or '-'"
            )
        if not _UUID_RE.fullmatch(self.uuid):
            raise ConfigError(f"target {self.name}: uuid {self.uuid!r} is not a UUID")
        try:
            specs = self.specs()
        except ConfigError as e:
            raise ConfigError(f"target {self.name}: {e}") from e
        for what, value in (("copies", self.copies), ("mincopies", self.mincopies)):
            if value is not None and not 1 <= value <= len(specs):
                raise ConfigError(
                    f"target {self.name}: {what}={value} must be 1 to {len(specs)} (the nodes)"
                )
        if self.copies and self.mincopies and self.mincopies > self.copies:
            raise ConfigError(f"target {self.name}: mincopies must not exceed copies")

    def as_dict(self, secrets: bool = False) -> dict[str, object]:
        """What the file holds; the ciphers only with ``secrets`` (never in listings)."""
        out: dict[str, object] = {"uuid": self.uuid, "nodes": list(self.nodes)}
        if self.copies is not None:
            out["copies"] = self.copies
        if self.mincopies is not None:
            out["mincopies"] = self.mincopies
        if secrets and self.ciphers:
            out["ciphers"] = dict(self.ciphers)
        return out


@dataclass
class GatewayConfig:
    path: Path
    targets: dict[str, Target] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None, missing_ok: bool = False) -> GatewayConfig:
        path = path or default_path()
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            if missing_ok:
                return cls(path)
            raise ConfigError(
                f"no gateway configuration at {path}: create it with 'git-annex-remote-proxy "
                "gateway add TARGET NAME=URL ...', or name another file with --config FILE "
                "(for serve: in the proxy remote's gatewaycommand=, or in the forced command)"
            ) from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read the gateway configuration {path}: {e}") from None
        config = cls(path)
        tables = raw.get("targets", {})
        if not isinstance(tables, dict):
            raise ConfigError(f"{path}: [targets] must be a table of targets")
        for name, table in tables.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: targets.{name} must be a table")
            unknown = set(table) - {"uuid", "nodes", "copies", "mincopies", "ciphers"}
            if unknown:
                raise ConfigError(
                    f"{path}: targets.{name}: unknown key(s) {', '.join(sorted(unknown))}"
                )
            nodes = table.get("nodes")
            if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
                raise ConfigError(
                    f"{path}: targets.{name}.nodes must be a list of NAME=URL strings"
                )
            ciphers = table.get("ciphers", {})
            if not isinstance(ciphers, dict) or not all(
                isinstance(v, str) for v in ciphers.values()
            ):
                raise ConfigError(f"{path}: targets.{name}.ciphers must map node names to strings")
            target = Target(
                name=name,
                ciphers=dict(ciphers),
                uuid=str(table.get("uuid", "")),
                nodes=nodes,
                copies=_opt_int(table, "copies", path, name),
                mincopies=_opt_int(table, "mincopies", path, name),
            )
            try:
                target.validate()
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
            config.targets[name] = target
        return config

    def target(self, name: str) -> Target:
        try:
            return self.targets[name]
        except KeyError:
            known = ", ".join(sorted(self.targets)) or "none"
            raise ConfigError(f"unknown target {name!r} (targets here: {known})") from None

    def by_uuid(self, uuid: str) -> Target | None:
        return next((t for t in self.targets.values() if t.uuid == uuid), None)

    def describe(self, uuid: str) -> str:
        """How operators know ``uuid`` here: a target of this gateway, or only the UUID
        (a cluster remote, or another gateway's target)."""
        target = self.by_uuid(uuid)
        return f"target {target.name} of this gateway (UUID {uuid})" if target else f"UUID {uuid}"

    def ownership(self, target: Target) -> Ownership:
        """The target as the owner of its nodes (``shared.nodes.owner``)."""
        return Ownership(
            target.uuid,
            describe=self.describe,
            remedy=f"give target {target.name} storage of its own, or take the node over "
            "with --force on a command that writes the target's nodes (gateway add, gateway "
            "nodes add|set|import; the other owner can then no longer write or remove there)",
        )

    def add(self, name: str, nodes: list[str], copies: int | None, mincopies: int | None) -> Target:
        """Add a target, or change the nodes of an existing one (its UUID stays).

        Each node with encryption=shared gets a cipher generated once; existing ones are
        kept, also for nodes no longer listed (the data they encrypted needs them)."""
        old = self.targets.get(name)
        ciphers = dict(old.ciphers) if old else {}
        target = Target(
            name, old.uuid if old else str(uuidlib.uuid4()), nodes, copies, mincopies, ciphers
        )
        target.validate()
        generate_ciphers(target.node_list(), ciphers)
        self.targets[name] = target
        return target

    def remove(self, name: str) -> None:
        self.target(name)
        del self.targets[name]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "# git-annex-remote-proxy gateway configuration\n"
        for name in sorted(self.targets):
            text += f"\n[targets.{_toml_key(name)}]\n"
            for key, value in self.targets[name].as_dict(secrets=True).items():
                text += f"{key} = {_toml_value(value)}\n"
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".gateway-", suffix=".toml")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _opt_int(table: dict[str, object], key: str, path: Path, name: str) -> int | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{path}: targets.{name}.{key} must be a whole number")
    return value


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def _toml_value(value: object) -> str:
    """Strings, ints, lists of strings and tables of strings: JSON's escaping is valid TOML
    for these."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return json.dumps(value)
