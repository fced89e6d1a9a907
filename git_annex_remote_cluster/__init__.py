"""The cluster special remote (``externaltype=cluster``) and the operators' command line."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    """``__version__``, looked up on first use (``shared.version``)."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from shared.version import version

    return version()
