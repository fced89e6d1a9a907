"""The proxy remote (``externaltype=proxy``) and its gateway server (``serve``)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("git-annex-remote-cluster")
except PackageNotFoundError:  # running from a checkout
    __version__ = "0.0.0+checkout"
