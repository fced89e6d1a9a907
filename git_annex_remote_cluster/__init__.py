"""The cluster special remote (``externaltype=cluster``) and the operators' command line."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    """``__version__``, looked up on first use: importlib.metadata costs the remote a
    few tens of ms of start-up that git-annex waits for, and only ``--version`` needs it."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("git-annex-remote-cluster")
    except PackageNotFoundError:  # running from a checkout
        return "0.0.0+checkout"
