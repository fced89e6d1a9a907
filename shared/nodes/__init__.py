"""Storage backends behind one ``Node`` interface, and the factory that picks one per URL."""

from __future__ import annotations

from shared.errors import ConfigError
from shared.nodes.base import Node, Usage
from shared.nodeurl import NodeSpec

__all__ = ["Node", "Usage", "open_node"]


def open_node(spec: NodeSpec, client_uuid: str | None = None) -> Node:
    """Build the node for a spec; backends are imported lazily to keep start-up cheap.

    ``client_uuid`` is who is asking: git-annex repository nodes record transfers
    under it (the cluster remote passes its own UUID)."""
    if spec.scheme == "file":
        from shared.nodes.file import FileNode

        return FileNode(spec)
    if spec.scheme == "sftp":
        from shared.nodes.retry import RetryingNode
        from shared.nodes.sftp import SFTPNode

        return RetryingNode(SFTPNode(spec))
    if spec.scheme in ("annex", "annex+ssh", "gateway+ssh"):
        from shared.nodes.annex import AnnexNode
        from shared.nodes.retry import RetryingNode

        return RetryingNode(AnnexNode(spec, client_uuid))
    raise ConfigError(
        f"node {spec.name}: {spec.scheme}:// nodes are not supported by this version yet; "
        "use file://, sftp://, annex+ssh://, annex:/// or gateway+ssh:// nodes"
    )
