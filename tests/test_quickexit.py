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
    """A non-daemon thread (a store still writing, say) is not cut off: the process
    ends only after it, as Python's own exit would."""
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


def test_an_executors_work_is_waited_for_even_when_its_workers_are_daemons(
    tmp_path: Path,
) -> None:
    """A pool first used from a daemon thread has daemon workers (they inherit the
    flag), and Python's exit still waits for their work: so must this."""
    out = _run(
        tmp_path,
        "from concurrent.futures import ThreadPoolExecutor\n"
        "pool = ThreadPoolExecutor(2)\n"
        "def write():\n"
        "    time.sleep(0.5)\n"
        "    open('pool-done', 'w').close()\n"
        "t = threading.Thread(target=lambda: pool.submit(write), daemon=True)\n"
        "t.start(); t.join()\n"
        "exit_quickly(0)\n",
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "pool-done").exists()


def test_idle_workers_of_a_pool_never_shut_down_do_not_hold_it(tmp_path: Path) -> None:
    out = _run(
        tmp_path,
        "from concurrent.futures import ThreadPoolExecutor\n"
        "pool = ThreadPoolExecutor(2)\n"
        "pool.submit(print, 'ran').result()\n"
        "exit_quickly(5)\n",
    )
    assert (out.returncode, out.stdout) == (5, "ran\n"), out.stderr
