"""The operators' commands: ``nodes add|set|remove|list|import|export`` and ``status``.

They act on a cluster remote of the repository in the current directory. The node
list lives in the remote's configuration in the git-annex branch; changes go
through ``git annex enableremote REMOTE nodes=...``, which checks the new nodes
(the remote's own initremote step) before anything is written, and every clone
picks the change up on its next ``git annex sync``.
"""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.cluster_remote import with_recorded
from shared.errors import ClusterError, ConfigError
from shared.nodecli import check_empty, check_owners, edit, human_size, report, table, takes_over
from shared.nodeedit import describe
from shared.nodes import open_node
from shared.nodes.owner import Ownership
from shared.nodeurl import NodeSpec, format_node_list, parse_node_list
from shared.remotelog import annex_remote_config, describe_uuid


@dataclass
class ClusterConfig:
    """A cluster remote as the git-annex branch records it."""

    name: str
    uuid: str
    config: dict[str, str]

    @classmethod
    def load(cls, name: str, cwd: Path | None = None) -> ClusterConfig:
        uuid, config = annex_remote_config(name, cwd)
        if config.get("type") != "external" or config.get("externaltype") != "cluster":
            raise ConfigError(
                f"remote {name} is not a cluster remote (type={config.get('type')}, "
                f"externaltype={config.get('externaltype', '-')})"
            )
        return cls(name, uuid, config)

    @property
    def specs(self) -> list[NodeSpec]:
        return parse_node_list(self.config.get("nodes", ""))

    def open_specs(self) -> list[NodeSpec]:
        """The nodes as the remote opens them: with recorded UUIDs and ciphers."""
        return with_recorded(
            self.specs, self.config.get("nodeuuids", ""), self.config.get("nodeciphers", "")
        )

    def ownership(self) -> Ownership:
        """The remote as the owner of its nodes, as the commands name it to operators."""
        return Ownership(
            self.uuid,
            describe=describe_uuid,
            remedy=f"give {self.name} storage of its own, or take the node over with --force "
            "on a command that writes the node list (nodes add|set|import), or with git annex "
            f"enableremote {self.name} force=yes (that remote can then no longer write or "
            "remove there)",
        )

    def write_nodes(
        self, specs: list[NodeSpec], cwd: Path | None = None, take_over: bool = False
    ) -> None:
        """``git annex enableremote``: the remote checks every node before it is written
        (``take_over``: with ``force=yes``, taking over nodes another remote owns)."""
        force = ["force=yes"] if take_over else []
        proc = subprocess.run(
            ["git", "annex", "enableremote", self.name, f"nodes={format_node_list(specs)}", *force],
            cwd=cwd,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            # The remote's reason ("git-annex: ..." on stderr) before the bare "failed"
            # that git-annex prints on stdout.
            why = next(
                (ln for ln in reversed(lines) if "git-annex: " in ln),
                next(
                    (ln for ln in reversed(lines) if "failed" in ln),
                    lines[-1] if lines else "no output",
                ),
            )
            raise ConfigError(f"git annex enableremote {self.name} refused the change: {why}")


def cmd_nodes(args: Any) -> int:
    config = ClusterConfig.load(args.remote)

    def empty(name: str) -> None:
        spec = next(s for s in config.open_specs() if s.name == name)
        check_empty(spec, config.uuid, f"nodes set {config.name} {name} state=drain")

    result = edit(args, config.specs, empty)
    if result is None:
        return 0
    new, what = result
    take_over = takes_over(args)
    if not take_over:  # (enableremote refuses them too, but would suggest force=yes)
        check_owners(new, config.ownership())
    config.write_nodes(new, take_over=take_over)
    report(args, config.name, f"{what}; other clones get the change with git annex sync", new)
    return 0


# -- status ---------------------------------------------------------------------


def probe(spec: NodeSpec, client_uuid: str | None) -> dict[str, Any]:
    """One node's health: reachable (with the error), latency, free space."""
    out: dict[str, Any] = describe(spec)
    out.update(reachable=False, error=None, latency_ms=None, free=None, total=None, owner=None)
    try:
        node = open_node(spec, client_uuid)
    except ClusterError as e:
        out["error"] = str(e)
        return out
    try:
        start = time.monotonic()
        node.check()
        out["latency_ms"] = round((time.monotonic() - start) * 1000, 1)
        out["reachable"] = True
        usage = node.usage()
        if usage is not None:
            out["free"], out["total"] = usage.free, usage.total
        if node.records_owner:
            out["owner"] = owner = node.owner()
            if owner is not None and owner != client_uuid:
                out["error"] = (
                    f"belongs to {describe_uuid(owner)}, not to this remote: nothing is "
                    "written to or removed from it"
                )
    except ClusterError as e:
        out["error"] = str(e).removeprefix(f"node {spec.name}: ")
    finally:
        node.close()
    return out


def cmd_status(args: Any) -> int:
    config = ClusterConfig.load(args.remote)
    specs = config.open_specs()
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(specs)))) as pool:
        results = list(pool.map(lambda s: probe(s, config.uuid), specs))
    reachable = sum(r["reachable"] for r in results)
    free = sum(r["free"] or 0 for r in results)
    summary = {
        "remote": config.name,
        "nodes": len(results),
        "reachable": reachable,
        "taking_new_data": sum(
            1 for r in results if r["reachable"] and r["state"] == "active" and r["weight"] > 0
        ),
        "free": free,
        "copies": int(config.config.get("copies") or len(results)),
    }
    from git_annex_remote_cluster.maintain import key_health  # (it builds on this module)

    health = key_health(config)
    summary.update(
        keys=health["keys"],
        short_of_copies=health["short_of_copies"],
        short_of_mincopies=health["short_of_mincopies"],
        bad_copies_noted=len(health["bad_copies_noted"]),
    )
    if args.json:
        print(json.dumps({"summary": summary, "nodes": results, "keys": health}, indent=2))
    else:
        rows = [("NAME", "REACHABLE", "LATENCY", "FREE", "MAXSIZE", "STATE", "ZONE", "WEIGHT")]
        for r in results:
            rows.append(
                (
                    r["name"],
                    "yes" if r["reachable"] else "NO",
                    f"{r['latency_ms']:.0f} ms" if r["latency_ms"] is not None else "-",
                    human_size(r["free"]),
                    human_size(r["maxsize"]),
                    r["state"],
                    r["zone"] or "-",
                    f"{r['weight']:g}",
                )
            )
        table(rows)
        for r in results:
            if r["error"]:
                print(f"{r['name']}: {r['error']}")
        print(
            f"{config.name}: {reachable} of {len(results)} node(s) reachable, "
            f"{summary['taking_new_data']} taking new data, copies={summary['copies']}, "
            f"{human_size(free)} free where known"
        )
        _print_health(config.name, summary, health)
    healthy = not (health["short_of_copies"] or health["bad_copies_noted"] or health["unlisted"])
    return 0 if reachable == len(results) and healthy else 1


def _print_health(name: str, summary: dict[str, Any], health: dict[str, Any]) -> None:
    listed = " (on the nodes that could be listed)" if health["unlisted"] else ""
    print(
        f"{name}: {health['keys']} key(s){listed}; {health['short_of_copies']} short of "
        f"copies={summary['copies']}, {health['short_of_mincopies']} of them below mincopies"
    )
    if health["short_of_copies"]:
        print(f"  run git-annex-remote-cluster repair {name} to give them their copies")
    for entry in health["bad_copies_noted"][:20]:
        print(f"  bad copy of {entry['key']} on node {entry['node']}: {entry['why']}")
    if health["bad_copies_noted"]:
        print(
            f"  {len(health['bad_copies_noted'])} bad copy(ies) found by reads; "
            f"run git-annex-remote-cluster fsck {name} --repair to replace them"
        )
