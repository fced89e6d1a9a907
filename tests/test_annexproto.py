"""Scripted-conversation tests for shared.annex.protocol (no git-annex needed)."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.annex.protocol import AnnexMaster, Availability, Remote, RemoteError, escape, run

ROOT = Path(__file__).resolve().parents[1]


class Dummy(Remote):
    """Minimal remote; tests override single methods through ``hooks``."""

    hooks: dict[str, Callable[..., object]] = {}  # noqa: RUF012 (replaced per test)
    availability: Availability = "global"

    def __init__(self, annex: AnnexMaster) -> None:
        super().__init__(annex)
        self.configs = {"url": "where the cluster is", "copies": "how many\ncopies"}
        self.info = {"nodes": "a\nb"}
        self.seen: list[object] = []

    def _hook(self, name: str, *args: object) -> object:
        hook = self.hooks.get(name)
        return hook(self, *args) if hook else None

    def initremote(self) -> None:
        self._hook("initremote")

    def prepare(self) -> None:
        self._hook("prepare")

    def transfer_store(self, key: str, local_file: str) -> None:
        self._hook("transfer_store", key, local_file)

    def transfer_retrieve(self, key: str, local_file: str) -> None:
        self._hook("transfer_retrieve", key, local_file)

    def checkpresent(self, key: str) -> bool:
        if "checkpresent" in self.hooks:
            return bool(self._hook("checkpresent", key))
        return key == "present"

    def remove(self, key: str) -> None:
        self._hook("remove", key)

    def getcost(self) -> int:
        cost = self._hook("getcost")
        return cost if isinstance(cost, int) else 150

    def getavailability(self) -> Availability:
        return self.availability

    def whereis(self, key: str) -> str:
        return str(self._hook("whereis", key) or "")


def converse(
    lines: list[str],
    hooks: dict[str, Callable[..., object]] | None = None,
    out: io.BytesIO | None = None,
    **attrs: object,
) -> tuple[int, list[str], list[Dummy]]:
    """Run a whole conversation; returns exit status, output lines, the remote."""
    cls = type("T", (Dummy,), {"hooks": hooks or {}, **attrs})
    made: list[Dummy] = []

    def factory(master: AnnexMaster) -> Remote:
        made.append(cls(master))
        return made[-1]

    stdin = io.BytesIO("".join(f"{line}\n" for line in lines).encode("utf-8", "surrogateescape"))
    out = io.BytesIO() if out is None else out
    status = run(factory, stdin=stdin, stdout=out)
    text = out.getvalue().decode("utf-8", "surrogateescape")
    assert text.endswith("\n") or not text
    return status, text.split("\n")[:-1], made


def non_debug(lines: list[str]) -> list[str]:
    return [line for line in lines if not line.startswith("DEBUG ")]


def test_startup_sends_version_2_and_eof_returns_0() -> None:
    assert converse([])[:2] == (0, ["VERSION 2"])


def test_extensions_reply_is_intersection_and_offer_remembered() -> None:
    _, out, (remote,) = converse(
        ["EXTENSIONS INFO ASYNC UNAVAILABLERESPONSE DELEGATE TRANSFER-RETRIEVE-URL"]
    )
    assert out == ["VERSION 2", "EXTENSIONS INFO UNAVAILABLERESPONSE"]
    assert remote.annex.extensions == frozenset(
        {"INFO", "ASYNC", "UNAVAILABLERESPONSE", "DELEGATE", "TRANSFER-RETRIEVE-URL"}
    )
    assert converse(["EXTENSIONS ASYNC"])[1][1] == "EXTENSIONS"


def test_listconfigs_one_line_per_config_then_configend() -> None:
    _, out, _ = converse(["LISTCONFIGS"])
    assert out == [
        "VERSION 2",
        "CONFIG copies how many\\ncopies",
        "CONFIG url where the cluster is",
        "CONFIGEND",
    ]


def test_getinfo_values_escaped_per_message() -> None:
    _, out, _ = converse(["GETINFO"])
    assert out[1:] == ["INFOFIELD nodes", "INFOVALUE a\\nb", "INFOEND"]


def test_getordered() -> None:
    assert converse(["GETORDERED"])[1][1] == "ORDERED"
    assert converse(["GETORDERED"], ordered=False)[1][1] == "UNORDERED"


def test_failure_message_with_newlines_stays_one_line() -> None:
    def fail(self: Dummy, key: str, path: str) -> None:
        raise RemoteError("node a down\nnode b\r\nfull")

    _, out, _ = converse(
        ["TRANSFER STORE k1 /tmp/f", "CHECKPRESENT present"], {"transfer_store": fail}
    )
    assert out == [
        "VERSION 2",
        "TRANSFER-FAILURE STORE k1 node a down\\nnode b\\r\\nfull",
        "CHECKPRESENT-SUCCESS present",
    ]


def test_exception_in_transfer_fails_that_key_only() -> None:
    def boom(self: Dummy, key: str, path: str) -> None:
        raise KeyError("no\nslot")

    status, out, _ = converse(
        ["TRANSFER STORE k1 /tmp/a file", "CHECKPRESENT present", "REMOVE k2"],
        {"transfer_store": boom},
    )
    assert status == 0
    debug = [line for line in out if line.startswith("DEBUG ")]
    assert debug[0] == "DEBUG Traceback (most recent call last):"
    assert any("in boom" in line for line in debug)
    assert non_debug(out) == [
        "VERSION 2",
        "TRANSFER-FAILURE STORE k1 KeyError: 'no\\nslot'",
        "CHECKPRESENT-SUCCESS present",
        "REMOVE-SUCCESS k2",
    ]
    assert out.index(debug[-1]) < out.index("TRANSFER-FAILURE STORE k1 KeyError: 'no\\nslot'")


@pytest.mark.parametrize(
    ("request_", "hook", "reply"),
    [
        ("CHECKPRESENT k", "checkpresent", "CHECKPRESENT-UNKNOWN k RuntimeError: x"),
        ("REMOVE k", "remove", "REMOVE-FAILURE k RuntimeError: x"),
        (
            "TRANSFER RETRIEVE k /f",
            "transfer_retrieve",
            "TRANSFER-FAILURE RETRIEVE k RuntimeError: x",
        ),
        ("WHEREIS k", "whereis", "WHEREIS-FAILURE"),
    ],
)
def test_exception_in_per_key_request(request_: str, hook: str, reply: str) -> None:
    def boom(self: Dummy, *args: object) -> None:
        raise RuntimeError("x")

    status, out, _ = converse([request_, "GETCOST"], {hook: boom})
    assert (status, non_debug(out)) == (0, ["VERSION 2", reply, "COST 150"])
    assert "DEBUG RuntimeError: x" in out


def test_remote_error_in_checkpresent_is_unknown() -> None:
    def down(self: Dummy, key: str) -> bool:
        raise RemoteError("node down")

    assert converse(["CHECKPRESENT k"], {"checkpresent": down})[1][1:] == [
        "CHECKPRESENT-UNKNOWN k node down"
    ]
    assert converse(["CHECKPRESENT absent"])[1][1:] == ["CHECKPRESENT-FAILURE absent"]


def test_exception_in_getcost_is_fatal() -> None:
    def boom(self: Dummy) -> int:
        raise ValueError("bad\ncost")

    status, out, _ = converse(["GETCOST", "CHECKPRESENT present"], {"getcost": boom})
    assert status == 1
    assert out[0] == "VERSION 2"
    assert all(line.startswith("DEBUG ") for line in out[1:-1]) and len(out) > 3
    assert out[-1] == "ERROR ValueError: bad\\ncost"


def test_malformed_request_is_fatal() -> None:
    status, out, _ = converse(["TRANSFER STORE k-without-file", "GETCOST"])
    assert status == 1 and out[-1].startswith("ERROR SyntaxError: ")
    assert "COST 150" not in out


def test_factory_failure_is_reported() -> None:
    def factory(master: AnnexMaster) -> Remote:
        raise OSError("no config")

    out = io.BytesIO()
    assert run(factory, stdin=io.BytesIO(b"PREPARE\n"), stdout=out) == 1
    assert out.getvalue() == b"ERROR OSError: no config\n"


def test_unknown_request_unsupported() -> None:
    assert converse(["FROBNICATE x", "GETCOST"])[1][1:] == ["UNSUPPORTED-REQUEST", "COST 150"]


def test_whitespace_in_key_gives_failure_reply() -> None:
    status, out, _ = converse(["CHECKPRESENT a b", "REMOVE a\tb", "GETCOST"])
    assert status == 0
    assert non_debug(out)[1].startswith("CHECKPRESENT-UNKNOWN a b ValueError: Invalid key")
    assert non_debug(out)[2].startswith("REMOVE-FAILURE a\tb ValueError: Invalid key")
    assert non_debug(out)[3] == "COST 150"


def test_getavailability() -> None:
    def avail(ext: str, value: str) -> str:
        lines = ([f"EXTENSIONS {ext}"] if ext else []) + ["GETAVAILABILITY"]
        return converse(lines, availability=value)[1][-1]

    assert avail("INFO UNAVAILABLERESPONSE", "unavailable") == "AVAILABILITY UNAVAILABLE"
    assert avail("INFO", "unavailable") == "AVAILABILITY GLOBAL"
    assert avail("", "unavailable") == "AVAILABILITY GLOBAL"
    assert avail("UNAVAILABLERESPONSE", "local") == "AVAILABILITY LOCAL"
    assert avail("", "global") == "AVAILABILITY GLOBAL"


def test_getconfig_round_trip() -> None:
    def prepare(self: Dummy) -> None:
        self.seen.append(self.annex.getconfig("url"))

    status, out, (remote,) = converse(
        ["PREPARE", "VALUE http://node a/", "CHECKPRESENT present"], {"prepare": prepare}
    )
    assert status == 0
    assert out == ["VERSION 2", "GETCONFIG url", "PREPARE-SUCCESS", "CHECKPRESENT-SUCCESS present"]
    assert remote.seen == ["http://node a/"]


def test_non_utf8_path_and_cr_survive() -> None:
    path = "/tmp/caf\udce9 \r"  # b"\xe9" is not utf-8; "\r" is part of the name

    def store(self: Dummy, key: str, local_file: str) -> None:
        self.seen.append(local_file)
        raise RemoteError(f"cannot read {local_file}")

    _, out, (remote,) = converse([f"TRANSFER STORE k {path}"], {"transfer_store": store})
    assert remote.seen == [path]
    assert out[1] == "TRANSFER-FAILURE STORE k cannot read /tmp/caf\udce9 \\r"


def test_say_uses_info_only_when_offered() -> None:
    def prepare(self: Dummy) -> None:
        self.annex.say("hello\nworld")

    with_info = converse(["EXTENSIONS INFO", "PREPARE"], {"prepare": prepare})[1]
    assert with_info[2:] == ["INFO hello\\nworld", "PREPARE-SUCCESS"]
    without = converse(["EXTENSIONS ASYNC", "PREPARE"], {"prepare": prepare})[1]
    assert without[2:] == ["DEBUG hello\\nworld", "PREPARE-SUCCESS"]


def progress_values(out: list[str]) -> list[int]:
    return [int(line.split()[1]) for line in out if line.startswith("PROGRESS ")]


def test_progress_meter_deterministic_flushes() -> None:
    def store(self: Dummy, key: str, local_file: str) -> None:
        with self.annex.progress_meter(interval=3600) as add:
            add(10)
            add.flush()
            add.flush()  # unchanged: nothing sent
            add(5)
            add(-3)  # rewind, e.g. failover to another node
            add.flush()
            add.set(100)
            add(20)

    _, out, _ = converse(["TRANSFER STORE k /f"], {"transfer_store": store})
    assert out[1:] == ["PROGRESS 10", "PROGRESS 12", "PROGRESS 120", "TRANSFER-SUCCESS STORE k"]


def test_progress_meter_timer_sends_and_stops_before_reply() -> None:
    out = io.BytesIO()

    def store(self: Dummy, key: str, local_file: str) -> None:
        with self.annex.progress_meter(start=1000, interval=0.005) as add:
            add(7)
            deadline = time.monotonic() + 10
            while b"PROGRESS 1007" not in out.getvalue():  # the timer, not the exit flush
                assert time.monotonic() < deadline
                time.sleep(0.001)
            for _ in range(50):
                add(1)
                time.sleep(0.0005)
        self.seen.append(threading.enumerate())

    status, lines, (remote,) = converse(["TRANSFER STORE k /f"], {"transfer_store": store}, out)
    assert status == 0
    assert lines[-1] == "TRANSFER-SUCCESS STORE k"
    values = progress_values(lines)
    assert values[0] == 1007 and values[-1] == 1057
    assert values == sorted(values) and len(set(values)) == len(values)
    assert lines[:-1] == ["VERSION 2"] + [f"PROGRESS {v}" for v in values]
    threads = remote.seen[0]
    assert isinstance(threads, list)
    assert not any(t.name == "annexproto-progress" for t in threads)
    time.sleep(0.05)
    assert out.getvalue().decode().split("\n")[:-1] == lines


def test_progress_meter_of_a_short_transfer_starts_no_thread() -> None:
    """A small file's transfer is a few round trips: no timer thread per file, only the
    last PROGRESS, which leaves with the reply (one write)."""
    out = io.BytesIO()

    def store(self: Dummy, key: str, local_file: str) -> None:
        with self.annex.progress_meter(interval=0.001, size=4096) as add:
            self.seen.append([t.name for t in threading.enumerate()])
            add(4096)
            time.sleep(0.01)
            self.seen.append(out.getvalue())

    status, lines, (remote,) = converse(["TRANSFER STORE k /f"], {"transfer_store": store}, out)
    assert status == 0 and lines[1:] == ["PROGRESS 4096", "TRANSFER-SUCCESS STORE k"]
    during, written = remote.seen
    assert isinstance(during, list) and "annexproto-progress" not in during
    assert written == b"VERSION 2\n"  # nothing sent while it ran


def test_debug_lines_leave_with_the_next_flushed_message() -> None:
    out = io.BytesIO()

    def prepare(self: Dummy) -> None:
        self.annex.debug("one")
        self.seen.append(out.getvalue())

    status, lines, (remote,) = converse(["PREPARE"], {"prepare": prepare}, out)
    assert status == 0 and lines[1:] == ["DEBUG one", "PREPARE-SUCCESS"]
    assert remote.seen == [b"VERSION 2\n"]


def test_progress_meter_silent_when_unchanged() -> None:
    def store(self: Dummy, key: str, local_file: str) -> None:
        with self.annex.progress_meter(start=5, interval=0.001):
            time.sleep(0.02)

    assert converse(["TRANSFER STORE k /f"], {"transfer_store": store})[1][1:] == [
        "TRANSFER-SUCCESS STORE k"
    ]


@given(st.text())
def test_any_debug_message_is_one_line(message: str) -> None:
    out = io.BytesIO()
    master = AnnexMaster(out)
    master.debug(message)
    master.close()
    data = out.getvalue()
    assert data.count(b"\n") == 1 and b"\r" not in data
    assert data.decode() == f"DEBUG {escape(message)}\n"


SCRIPT = textwrap.dedent(
    """
    import subprocess, sys
    from shared.annex.protocol import Remote, run

    class Noisy(Remote):
        def initremote(self): pass
        def prepare(self):
            print("junk from print")
            sys.stdout.flush()
            subprocess.run([sys.executable, "-c", "print('junk from child')"], check=True)
        def transfer_store(self, key, local_file): pass
        def transfer_retrieve(self, key, local_file): pass
        def checkpresent(self, key): return True
        def remove(self, key): pass

    sys.exit(run(Noisy))
    """
)


def test_claim_stdout_keeps_prints_off_the_protocol() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        input=b"EXTENSIONS INFO\nPREPARE\nCHECKPRESENT k\n",
        capture_output=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().split("\n") == [
        "VERSION 2",
        "EXTENSIONS INFO",
        "PREPARE-SUCCESS",
        "CHECKPRESENT-SUCCESS k",
        "",
    ]
    assert b"junk from print" in proc.stderr and b"junk from child" in proc.stderr
