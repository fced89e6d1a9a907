"""``exit_quickly``: what Python's exit would have done that matters is still done."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import VENV_BIN


def _run(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    script = "import atexit, sys, threading, time\nfrom shared.quickexit import exit_quickly\n"
    return subprocess.run(
        [str(VENV_BIN / "python"), "-c", script + body],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def test_atexit_functions_run_and_buffered_output_is_written(tmp_path: Path) -> None:
    out = _run(
        tmp_path,
        "atexit.register(lambda: open('atexit-ran', 'w').close())\n"
        "sys.stdout.write('buffered, not flushed')\n"
        "sys.stderr.write('to stderr')\n"
        "exit_quickly(3)\n",
    )
    assert out.returncode == 3
    assert out.stdout == "buffered, not flushed" and out.stderr == "to stderr"
    assert (tmp_path / "atexit-ran").exists()


def test_a_thread_still_working_is_waited_for(tmp_path: Path) -> None:
    """A non-daemon thread (a store still writing, say) is not cut off: Python exits
    as usual, after it."""
    out = _run(
        tmp_path,
        "def work():\n"
        "    time.sleep(0.5)\n"
        "    open('thread-done', 'w').close()\n"
        "threading.Thread(target=work).start()\n"
        "exit_quickly(0)\n",
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "thread-done").exists()


def test_daemon_threads_do_not_keep_it(tmp_path: Path) -> None:
    out = _run(
        tmp_path,
        "threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
        "print('bye')\n"
        "exit_quickly(0)\n",
    )
    assert (out.returncode, out.stdout) == (0, "bye\n")
