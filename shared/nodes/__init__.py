"""Storage backends behind one ``Node`` interface, and the factory that picks one per URL.

Two layers in git-annex's own formats can sit on top of the storing backends
(file, sftp, s3): ``chunk=SIZE`` and ``encryption=shared`` (see
``shared.nodes.chunked`` and ``shared.nodes.encrypted``). Chunking comes first,
then each chunk is encrypted, as git-annex does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from shared.errors import ConfigError
from shared.nodes.base import Node, Usage
from shared.nodes.owner import Ownership
from shared.nodes.url import NodeSpec, parse_size

__all__ = [
    "LAYER_PARAMS",
    "Node",
    "Ownership",
    "Usage",
    "generate_ciphers",
    "needs_cipher",
    "open_node",
    "open_storage",
    "with_ciphers",
]

LAYER_PARAMS = ("chunk", "encryption", "mac", "cipher")
_LAYERED_SCHEMES = ("file", "sftp", "s3")


def needs_cipher(spec: NodeSpec) -> bool:
    """Whether the node encrypts and no cipher has been given to it yet: the cluster
    remote (at initremote) and the gateway (at ``gateway add``) generate and record one."""
    return (
        spec.params.get("encryption") == "shared"
        and "cipher" not in spec.params
        and "annexremote" not in spec.params
    )


def with_ciphers(specs: list[NodeSpec], ciphers: Mapping[str, str]) -> list[NodeSpec]:
    """Hand each encrypting node its recorded cipher (node name -> base64)."""
    return [
        replace(s, params={**s.params, "cipher": ciphers[s.name]})
        if needs_cipher(s) and s.name in ciphers
        else s
        for s in specs
    ]


def generate_ciphers(specs: list[NodeSpec], ciphers: dict[str, str]) -> list[str]:
    """Add to ``ciphers`` a new cipher for each encrypting node that has none; return
    their names. Existing entries are never replaced nor dropped, also not for nodes
    no longer listed: the data they encrypted needs them."""
    from shared.crypto import Cipher

    new = [s.name for s in specs if needs_cipher(s) and s.name not in ciphers]
    for name in new:
        ciphers[name] = Cipher.generate().to_config()
    return new


def open_node(
    spec: NodeSpec,
    client_uuid: str | None = None,
    trusted_source: bool = True,
    ownership: Ownership | None = None,
) -> Node:
    """Build the node for a spec; backends are imported lazily to keep start-up cheap.

    ``client_uuid`` is who is asking: git-annex repository nodes record transfers
    under it (the cluster remote passes its own UUID). ``trusted_source``: False
    on a gateway, whose uploads are only verified at their end (see
    ``shared.nodes.chunked``). ``ownership``: the remote (or gateway target) whose
    node this is; a node whose storage records its owner then writes and removes
    only while that is this remote (``shared.nodes.owner``)."""
    spec = _adopted(spec)
    layers = {k: v for k, v in spec.params.items() if k in LAYER_PARAMS}
    if layers and spec.scheme not in _LAYERED_SCHEMES:
        raise ConfigError(
            f"node {spec.name}: {', '.join(sorted(layers))} apply to file://, sftp:// and s3:// "
            "nodes; a git-annex repository or gateway stores keys as it is given them"
        )
    node = _backend(_unlayered(spec), client_uuid)
    node = _layer(node, spec, layers, trusted_source)
    if spec.scheme in (
        "sftp",
        "s3",
        "annex",
        "annex+ssh",
        "annex+http",
        "annex+https",
        "gateway+ssh",
    ):
        from shared.nodes.retry import RetryingNode

        # S3 nodes retry each request themselves: here only the "down for a while" part.
        # git annex p2phttp refuses a store (500) for a few seconds after an upload
        # that was interrupted, while it still holds the key's transfer lock.
        http = spec.scheme in ("annex+http", "annex+https")
        node = RetryingNode(
            node, attempts=1 if spec.scheme == "s3" else 3, store_patience=5.0 if http else 0.0
        )
    if ownership is not None and node.records_owner:
        from shared.nodes.owner import OwnedNode

        node = OwnedNode(node, ownership)
    return node


def open_storage(spec: NodeSpec) -> Node:
    """The storage under a node's chunking and encryption, without retries: enough to
    read or write its owner marker before the node has a cipher (a node being added)."""
    spec = _adopted(spec)
    return _backend(_unlayered(spec), None)


def _adopted(spec: NodeSpec) -> NodeSpec:
    if spec.scheme == "s3" and "annexremote" in spec.params:
        from shared.nodes.s3 import adopt_annex_remote

        return adopt_annex_remote(spec)
    return spec


def _unlayered(spec: NodeSpec) -> NodeSpec:
    return replace(spec, params={k: v for k, v in spec.params.items() if k not in LAYER_PARAMS})


def _backend(spec: NodeSpec, client_uuid: str | None) -> Node:
    if spec.scheme == "file":
        from shared.nodes.file import FileNode

        return FileNode(spec)
    if spec.scheme == "sftp":
        from shared.nodes.sftp import SFTPNode

        return SFTPNode(spec)
    if spec.scheme == "s3":
        from shared.nodes.s3 import S3Node

        return S3Node(spec)
    if spec.scheme in ("annex", "annex+ssh", "gateway+ssh"):
        from shared.nodes.annex import AnnexNode

        return AnnexNode(spec, client_uuid)
    if spec.scheme in ("annex+http", "annex+https"):
        from shared.nodes.http import HTTPNode

        return HTTPNode(spec, client_uuid)
    raise ConfigError(
        f"node {spec.name}: {spec.scheme}:// nodes are not supported; use file://, sftp://, "
        "s3://, annex+ssh://, annex:///, annex+http(s):// or gateway+ssh:// nodes"
    )


def _layer(node: Node, spec: NodeSpec, layers: dict[str, str], trusted_source: bool) -> Node:
    encryption = layers.get("encryption", "none")
    if encryption == "shared":
        from shared.crypto import Cipher
        from shared.nodes.encrypted import EncryptedNode

        if "cipher" not in layers:
            raise ConfigError(
                f"node {spec.name}: encryption=shared, but no cipher is recorded for it; "
                "run git annex enableremote on the cluster remote (or gateway add on a "
                "gateway) to generate one"
            )
        try:
            cipher = Cipher.from_config(layers["cipher"], layers.get("mac", "HMACSHA1"))
        except ConfigError as e:
            raise ConfigError(f"node {spec.name}: {e}") from e
        node = EncryptedNode(node, cipher)
    elif encryption != "none":
        raise ConfigError(
            f"node {spec.name}: encryption={encryption} is not supported for nodes; "
            "use encryption=shared or none"
        )
    elif "cipher" in layers or "mac" in layers:
        raise ConfigError(f"node {spec.name}: mac= and cipher= need encryption=shared")
    chunk = layers.get("chunk", "")
    if chunk:
        from shared.nodes.chunked import ChunkedNode

        try:
            size = parse_size(chunk)
        except ConfigError as e:
            raise ConfigError(f"node {spec.name}: chunk: {e}") from e
        if size > 0:  # 0 (also "0.4", which rounds to 0) is no chunking, as in git-annex
            node = ChunkedNode(node, size, trusted_source=trusted_source)
    return node
