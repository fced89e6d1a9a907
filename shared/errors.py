"""One flat family of errors, translated at each backend's edge.

Callers decide on retries and on what to tell git-annex from the type alone;
``is_transient`` is the single place that says "this may work if tried again".
"""

from __future__ import annotations

import errno


class ClusterError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(ClusterError):
    """The remote's configuration (node list, copies, URL) is invalid."""


class InvalidKey(ClusterError):
    """A key that git-annex (or a peer) sent is malformed or unsafe to use as a name."""


class NodeError(ClusterError):
    """A node could not do what was asked. ``node`` names it for messages."""

    def __init__(self, message: str, node: str | None = None) -> None:
        super().__init__(message)
        self.node = node

    def __str__(self) -> str:
        msg = super().__str__()
        return f"node {self.node}: {msg}" if self.node else msg


class NotFound(NodeError):
    """The key (or path) is not on the node."""


class Unavailable(NodeError):
    """The node cannot be reached or did not answer: presence is unknown."""


class PermissionDenied(NodeError):
    """The node refused the operation."""


class NotOwner(PermissionDenied):
    """The node's storage records another remote (or gateway target) as its owner:
    nothing of ours writes or removes there. ``owner`` is that UUID (None when the
    record cannot be read as one)."""

    def __init__(self, message: str, node: str | None = None, owner: str | None = None) -> None:
        super().__init__(message, node)
        self.owner = owner


class NoSpace(NodeError):
    """The node is out of space or over its maxsize."""


class Unsupported(NodeError):
    """The node cannot hold this key at all (S3 object names must be UTF-8)."""


class IntegrityError(NodeError):
    """Content did not match what was expected (size or hash)."""


class BadReplica(IntegrityError):
    """A node holds something under the key's name that is not the key's content (a
    wrong size, or bytes that fail the key's hash). It is a replica to repair, never a
    copy: presence does not count it, a store replaces it, a read fails over from it."""


def is_transient(exc: BaseException) -> bool:
    """Whether trying again later might succeed."""
    return isinstance(exc, Unavailable)


def from_oserror(exc: OSError, node: str, what: str) -> NodeError:
    """Translate a filesystem error (local, or an SFTP status) at a backend's edge."""
    detail = f"{what}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(detail, node)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(detail, node)
    if exc.errno == errno.ENOENT:
        return NotFound(detail, node)
    return Unavailable(detail, node)


def wrong_content(exc: BaseException) -> bool:
    """Whether a failure says the content was wrong (then a kept partial is worthless),
    as opposed to the source going away (then it is worth keeping)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, IntegrityError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
