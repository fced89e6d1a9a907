"""Ending a process without Python's interpreter teardown, once nothing is left to do.

git-annex waits for a special remote's process to exit before it records what the
command did, and a client's ssh session ends only when the gateway's ``serve`` has
exited. Python's own exit then frees every object of every module, one by one: about
50 ms with paramiko loaded (measured: 52.6 ms median against 4.7 ms), at the end of
every git-annex command that used the remote, on the gateway again for every session.
``exit_quickly`` keeps what of that teardown matters (the ``atexit`` functions, which
close ssh connections and stop their ProxyCommand children, and flushing stdout and
stderr) and ends the process without the rest. Open files are not its concern: every
file this code writes is closed by a ``with`` block before its command returns.

When a thread that is not a daemon still runs (an executor's worker, a store still
writing), Python exits as usual instead, which waits for it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import NoReturn


def exit_quickly(code: int) -> NoReturn:
    """Exit with ``code``: quickly when only daemon threads are left, else as usual."""
    main = threading.main_thread()
    if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
