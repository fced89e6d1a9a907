"""``rebalance``, ``repair`` and ``fsck`` on a cluster remote of the repository in the
current directory (the commands themselves are in ``shared.ops.maintaincli``).

Keys of encrypted nodes are recognised by matching the repository's known keys, so
run them in a clone that is up to date (``git annex sync`` or ``git annex merge``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from git_annex_remote_cluster.operators import ClusterConfig
from shared.annex import locationlog
from shared.annex.keys import Key
from shared.annex.remotelog import describe_uuid
from shared.cluster.badcopies import BadCopies, bad_copies_path
from shared.errors import ConfigError
from shared.nodes import Node, open_node
from shared.nodes.base import KnownKeys
from shared.nodes.url import parse_size
from shared.ops import maintaincli
from shared.ops.maintaincli import Logged, Sized

COMMAND = "git-annex-remote-cluster"


def add_parsers(sub: Any) -> None:
    maintaincli.add_parsers(sub, "remote")


def run(args: Any) -> int:
    config = ClusterConfig.load(args.remote)
    command = args.command
    if command == "rebalance" and args.apply and not args.dry_run:
        config.refuse_pending(
            f"rebalance {config.name}",
            "the moves would follow the old one, not the one other clones use",
        )
    elif maintaincli.writes(command, args):
        config.refuse_pending(f"{command} {config.name}")
    config.say_pending()
    with open_subject(config) as subject:
        return maintaincli.run(args.command, args, subject)


def key_health(config: ClusterConfig) -> dict[str, Any]:
    """``status``'s count of keys short of copies and of the bad copies reads noted."""
    with open_subject(config) as subject:
        return maintaincli.key_health(subject)


@contextlib.contextmanager
def open_subject(config: ClusterConfig) -> Iterator[maintaincli.Subject]:
    """The remote's nodes, opened as the remote opens them, for the commands."""
    specs = config.open_specs()
    if not specs:
        raise ConfigError(f"remote {config.name} has no nodes")
    stored = _as_stored(config.config)
    known: KnownKeys | None = None
    logged: Logged | None = None
    sized: Sized | None = None
    if stored is not None:
        as_stored = stored

        def known() -> Iterator[Key]:
            for key in locationlog.known_keys():
                yield from (name for name, _ in as_stored(key))

        def logged() -> Iterator[tuple[Key, list[Key]]]:
            for key in locationlog.keys_in(config.uuid):
                yield key, [name for name, _ in as_stored(key)]

        if config.config.get("encryption") == "shared":  # HMAC names hide the sizes

            def sized() -> Iterator[tuple[Key, int]]:
                for key in locationlog.known_keys():
                    for name, size in as_stored(key):
                        if size is not None:
                            yield name, size

    nodes: dict[str, Node] = {}
    try:
        for spec in specs:
            nodes[spec.name] = open_node(spec, config.uuid, ownership=config.ownership())
        copies = int(config.config.get("copies") or len(specs))
        yield maintaincli.Subject(
            name=config.name,
            specs=specs,
            nodes=nodes,
            copies=copies,
            command=COMMAND,
            known=known,
            logged=logged,
            sized=sized,
            mincopies=int(config.config.get("mincopies") or copies),
            bad=BadCopies(bad_copies_path(locationlog.git_dir(Path.cwd()), config.uuid)),
            owner=config.uuid,
            describe=describe_uuid,
        )
    finally:
        for node in nodes.values():
            node.close()


def _as_stored(config: dict[str, str]) -> Callable[[Key], list[tuple[Key, int | None]]] | None:
    """How git-annex hands a key to this remote, each with its content's size: as its
    chunk keys when the remote itself chunks (``chunk=``), under HMAC names when it
    encrypts with ``encryption=shared``. None when that cannot be known (a cipher
    encrypted to gpg keys, git-annex's old ``chunksize=``)."""
    encryption = config.get("encryption", "none")
    if encryption not in ("none", "shared") or "chunksize" in config:
        return None
    name: Callable[[Key], Key] = lambda k: k  # noqa: E731
    if encryption == "shared":
        from shared.crypto import Cipher

        cipher = Cipher.from_config(config["cipher"], config.get("mac", "HMACSHA1"))
        name = lambda k: Key.parse(cipher.encrypt_key(str(k)))  # noqa: E731
    chunk = parse_size(config["chunk"]) if config.get("chunk", "0") != "0" else 0

    def stored(key: Key) -> list[tuple[Key, int | None]]:
        if not chunk or key.size is None:
            return [(name(key), key.size)]
        count = max(1, -(-key.size // chunk))
        chunks = (
            Key(key.backend, key.name, key.size, key.mtime, chunk, n) for n in range(1, count + 1)
        )
        return [(name(c), c.content_size) for c in chunks]

    return stored
