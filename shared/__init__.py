"""Library shared by the cluster remote and the proxy: keys, protocols, nodes, placement."""

import importlib
import importlib.util
import sys
import types


class _Deferred(types.ModuleType):
    """A module imported on first use of one of its attributes (see ``_defer``)."""

    def __getattr__(self, name: str) -> object:
        real = self.__dict__.get("_real")
        if real is None:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            real = self.__dict__["_real"] = importlib.import_module(self.__name__)
        return getattr(real, name)


def _defer(name: str) -> None:
    """Let ``import name`` succeed without loading the module until it is used.

    paramiko imports ``invoke`` when it starts, for ssh_config's ``Match exec``
    alone, and invoke imports asyncio, ssl and unittest.mock: about a quarter of a
    second of CPU in every remote process git-annex starts (four for a -J4 command)
    before the first request is served. (The standard library's LazyLoader does not
    do here: the import statement itself reads the module's ``__spec__``, which loads
    it.) Not installed: nothing deferred, so the import fails where it did."""
    if name not in sys.modules and importlib.util.find_spec(name) is not None:
        sys.modules[name] = _Deferred(name)


_defer("invoke")
