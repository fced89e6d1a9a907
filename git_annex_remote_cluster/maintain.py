"""``rebalance``, ``repair`` and ``fsck`` on a cluster remote of the repository in the
current directory (the commands themselves are in ``shared.maintaincli``).

Keys of encrypted nodes are recognised by matching the repository's known keys, so
run them in a clone that is up to date (``git annex sync`` or ``git annex merge``).
"""

from __future__ import annotations

from typing import Any

from git_annex_remote_cluster.operators import ClusterConfig
from shared import locationlog, maintaincli
from shared.errors import ConfigError
from shared.nodes import Node, open_node

COMMAND = "git-annex-remote-cluster"


def add_parsers(sub: Any) -> None:
    maintaincli.add_parsers(sub, "remote")


def run(args: Any) -> int:
    config = ClusterConfig.load(args.remote)
    specs = config.open_specs()
    if not specs:
        raise ConfigError(f"remote {config.name} has no nodes")
    nodes: dict[str, Node] = {}
    try:
        for spec in specs:
            nodes[spec.name] = open_node(spec, config.uuid)
        subject = maintaincli.Subject(
            name=config.name,
            specs=specs,
            nodes=nodes,
            copies=int(config.config.get("copies") or len(specs)),
            command=COMMAND,
            known=lambda: locationlog.known_keys(),
            logged=lambda: locationlog.keys_in(config.uuid),
        )
        return maintaincli.run(args.command, args, subject)
    finally:
        for node in nodes.values():
            node.close()
