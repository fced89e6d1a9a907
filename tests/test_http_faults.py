"""``git-annex-remote-proxy http`` under faults and load: clients that vanish in the
middle of an upload or a download, connect and send nothing, trickle a request head,
go silent holding a content lock, or send a body the server refuses. Our server is a
real process on a free loopback port (short ``--timeout``, few ``--jobs``), the
misbehaving clients raw sockets, the normal transfers after them a stock git-annex
10.20261026 client. What the server holds is read from outside: its threads, open
files and memory in /proc, the gateway's lock files, and whether a remove (which
takes the key's lock exclusively) goes through."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Client
from node_conformance import payload
from test_http_server import (
    CLIENT_UUID,
    PROXY,
    Server,
    http_repo,
    key_of,
    keyq,
    objects,
    op_path,
    run_in_all,
    self_signed,
    start_server,
    users_cli,
)

from shared.p2p import httpapi as api

pytestmark = pytest.mark.timeout(600)

TIMEOUT = 3  # the server's --timeout here: seconds a client may stay silent
JOBS = 4  # the server's --jobs here
AUTH = api.basic_auth("rw", "pw-rw")
MiB = 1024 * 1024


@pytest.fixture
def gateway(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """One target, archive, on two file nodes, and one user, rw: test_http_server's
    gateway in fewer processes."""
    config = tmp_path / "gw" / "gw.toml"
    config.parent.mkdir()
    dirs = {n: tmp_path / n for n in ("n1", "n2")}
    for d in dirs.values():
        d.mkdir()
    nodes = [f"{n}=file://{d}" for n, d in dirs.items()]
    subprocess.run(
        [PROXY, "gateway", "--config", str(config), "add", "archive", *nodes],
        check=True,
        capture_output=True,
    )
    users_cli(config, "add", "rw", "--access", "readwrite", password="pw-rw")
    return config, dirs


@pytest.fixture
def server(tmp_path: Path, gateway: tuple[Path, dict[str, Path]]) -> Iterator[Server]:
    config, _dirs = gateway
    srv = start_server(
        config,
        tmp_path / "server.log",
        *("--auth-http", "--jobs", str(JOBS), "--timeout", str(TIMEOUT)),
    )
    yield srv
    srv.stop()


# -- clients, well-behaved and not -------------------------------------------------------


def url_path(srv: Server, op: str, query: str = "") -> str:
    return op_path(srv, "archive", op, query)


def call(
    srv: Server,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout: float = 30,
    context: ssl.SSLContext | None = None,
) -> tuple[int, bytes]:
    """A well-behaved request: its status and body."""
    conn: http.client.HTTPConnection
    if context is not None:
        conn = http.client.HTTPSConnection("127.0.0.1", srv.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Authorization": AUTH, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def put(srv: Server, data: bytes) -> bool:
    status, body = call(
        srv,
        "POST",
        url_path(srv, "put", keyq(key_of(data))),
        data,
        {api.DATA_LENGTH: str(len(data))},
    )
    assert status == 200, body
    return bool(json.loads(body)["stored"])


def get(srv: Server, key: str) -> bytes:
    status, body = call(srv, "GET", url_path(srv, f"key/{key}"))
    assert status == 200, body
    return body


def removed(srv: Server, key: str) -> bool:
    """remove takes the key's lock exclusively: False while anyone holds it locked."""
    status, body = call(srv, "POST", url_path(srv, "remove", keyq(key)))
    assert status == 200, body
    return bool(json.loads(body)["removed"])


def lockcontent(srv: Server, key: str) -> str:
    status, body = call(srv, "POST", url_path(srv, "lockcontent", keyq(key)))
    answer = json.loads(body)
    assert status == 200 and answer["locked"], body
    return str(answer["lockid"])


def head(srv: Server, method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{srv.port}", f"Authorization: {AUTH}"]
    return ("\r\n".join([*lines, *headers]) + "\r\n\r\n").encode()


def connect(srv: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=30)


def vanish(sock: socket.socket) -> None:
    """Close with a reset, as a killed client's kernel does when data is unread."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def ended_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server ended the connection (what it answered is read and
    dropped); fails when it is still open after ``seconds``."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection over {seconds} s") from None
    return time.monotonic() - started


def proc_status(pid: int) -> dict[str, int]:
    """Threads, VmRSS and VmHWM (kB) of a process, and its open files."""
    out = {"fds": len(os.listdir(f"/proc/{pid}/fd"))}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Threads", "VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def settles(what: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not what():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def lock_files(config: Path) -> list[Path]:
    return list((config.parent / "locks").glob("*/*"))


# -- the tests ---------------------------------------------------------------------------


def test_fifty_interrupted_transfers_then_normal_ones(
    tmp_path: Path, pypi_client: Client, server: Server, gateway: tuple[Path, dict[str, Path]]
) -> None:
    """25 uploads cut mid-body and 25 downloads cut mid-body (closed or reset, at
    different points); then a stock client's upload (continuing what the cut uploads
    left), drop (lockcontent) and get work, nothing is left locked, and the server's
    threads, open files and memory are back where they were."""
    config, dirs = gateway
    size = 8 * MiB
    down = payload(size, seed=1)
    down_key = key_of(down)
    assert put(server, down)
    repo = http_repo(tmp_path, pypi_client, server, "archive", "rw")
    up = payload(size, seed=2)
    repo.write("up.bin", up)
    repo.annex("add", "up.bin")
    up_key = repo.lookupkey("up.bin")
    assert up_key == key_of(up)
    before = proc_status(server.proc.pid)
    for i in range(50):
        sock = connect(server)
        if i % 2 == 0:
            sock.sendall(
                head(
                    server,
                    "POST",
                    url_path(server, "put", keyq(up_key)),
                    f"Content-Length: {size}",
                    f"{api.DATA_LENGTH}: {size}",
                )
            )
            sock.sendall(up[: (i + 1) * 128 * 1024])
        else:
            sock.sendall(head(server, "GET", url_path(server, f"key/{down_key}")))
            got = 0
            while got < (i + 1) * 64 * 1024:
                got += len(sock.recv(65536))
        if i % 4 < 2:
            vanish(sock)
        else:
            sock.close()
    # The server keeps serving, with nothing of the cut transfers in the way.
    repo.annex("copy", "--to", "gw", "up.bin")
    assert {p.name for p in objects(dirs["n1"])} == {down_key, up_key}
    repo.annex("drop", "up.bin")  # numcopies 1: lockcontent and keeplocked on the server
    repo.annex("get", "up.bin")
    assert (repo.path / "up.bin").read_bytes() == up
    assert get(server, down_key) == down
    assert settles(lambda: not lock_files(config)), lock_files(config)
    assert removed(server, down_key) and removed(server, up_key)
    pid = server.proc.pid
    assert settles(lambda: proc_status(pid)["Threads"] <= before["Threads"] + 1), (
        before,
        proc_status(pid),
    )
    assert settles(lambda: proc_status(pid)["fds"] <= before["fds"] + 2), (before, proc_status(pid))
    after = proc_status(pid)
    print(f"server after 50 cut transfers: {after} (before: {before})")
    assert after["VmHWM"] < 200 * 1024


def test_idle_and_trickling_connections_do_not_starve_the_workers(server: Server) -> None:
    """As many connections that send nothing as there are workers, and as many that
    trickle a request head a byte at a time: a normal request is still answered within
    the timeout (silent connections hold no worker; a head has that long to arrive),
    and the trickling connections are cut off."""
    data = payload(1000, seed=3)
    put(server, data)
    idle = [connect(server) for _ in range(JOBS)]
    slow = [connect(server) for _ in range(JOBS)]
    partial = head(server, "POST", url_path(server, "checkpresent", keyq(key_of(data))))
    stop = threading.Event()

    def trickle() -> None:
        for byte in partial[:-2]:  # never the blank line that ends the head
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.send(bytes([byte]))
            if stop.wait(0.25):
                return

    dripper = threading.Thread(target=trickle)
    dripper.start()
    try:
        time.sleep(0.5)
        started = time.monotonic()
        status, body = call(
            server, "POST", url_path(server, "checkpresent", keyq(key_of(data))), timeout=20
        )
        took = time.monotonic() - started
        assert status == 200 and json.loads(body) == {"present": True}
        assert took < TIMEOUT + 2, f"answered after {took:.1f} s"
        for sock in slow:
            ended_within(sock, TIMEOUT + 2)
    finally:
        stop.set()
        dripper.join()
        for sock in idle + slow:
            sock.close()


def test_idle_tls_connections_do_not_hold_up_the_others(
    tmp_path: Path, gateway: tuple[Path, dict[str, Path]]
) -> None:
    """Over HTTPS, connections that never start their TLS handshake do not delay
    anyone else's; one that speaks plain HTTP gets an answer that says so."""
    config, _dirs = gateway
    cert, key = self_signed(tmp_path)
    srv = start_server(
        config, tmp_path / "tls.log", "--jobs", "2", "--timeout", "10", tls=(cert, key)
    )
    idle = [connect(srv) for _ in range(3)]
    try:
        time.sleep(0.3)
        context = ssl.create_default_context(cafile=str(cert))
        started = time.monotonic()
        q = keyq("SHA256E-s1--00.bin")
        status, body = call(
            srv, "POST", url_path(srv, "checkpresent", q), timeout=30, context=context
        )
        took = time.monotonic() - started
        assert status == 200 and json.loads(body) == {"present": False}
        assert took < 3, f"answered after {took:.1f} s"
        plain = connect(srv)
        plain.sendall(head(srv, "POST", url_path(srv, "checkpresent", q)))
        plain.settimeout(5)
        assert plain.recv(1000).startswith(b"HTTP/1.1 400")
        plain.close()
    finally:
        for sock in idle:
            sock.close()
        srv.stop()


def test_keeplocked_client_that_vanishes_lets_go_of_the_lock(server: Server) -> None:
    """The connection of keeplocked ends without an unlock (the client was killed):
    the lock goes at once, as git annex p2phttp lets it go (and as our ssh serve does
    when its session ends), not ten minutes later."""
    data = payload(1000, seed=4)
    key = key_of(data)
    put(server, data)
    for close in (vanish, socket.socket.close):
        lockid = lockcontent(server, key)
        sock = connect(server)
        sock.sendall(
            head(
                server,
                "POST",
                url_path(server, "keeplocked", f"lockid={lockid}&clientuuid={CLIENT_UUID}"),
                "Transfer-Encoding: chunked",
                "Connection: Keep-Alive",
                "Keep-Alive: timeout=1200",
            )
            + chunk(b'{"unlock": false}\n')
        )
        time.sleep(0.3)
        assert not removed(server, key)  # locked while the client is there
        close(sock)
        assert settles(lambda: not lock_files(server.config), 5), "the lock was kept"
    assert removed(server, key)


def test_silent_keeplocked_frees_its_worker_and_keeps_the_lock(server: Server) -> None:
    """A keeplocked client that goes silent may still be relying on the lock (a stock
    client sends nothing more until it is done): its worker is let go after the timeout,
    the lock stays until it expires; an unlock from another connection releases it."""
    data = payload(1000, seed=5)
    key = key_of(data)
    put(server, data)
    lockid = lockcontent(server, key)
    sock = connect(server)
    keeplocked = url_path(server, "keeplocked", f"lockid={lockid}&clientuuid={CLIENT_UUID}")
    sock.sendall(
        head(server, "POST", keeplocked, "Transfer-Encoding: chunked")
        + chunk(b'{"unlock": false}\n')
    )
    took = ended_within(sock, TIMEOUT + 3)
    assert took >= TIMEOUT - 0.5
    sock.close()
    assert not removed(server, key)  # still locked
    status, body = call(
        server,
        "POST",
        keeplocked,
        b'{"unlock": true}\n',
        {"Content-Type": "application/json"},
    )
    assert status == 200 and json.loads(body) == {"locked": False}
    assert removed(server, key)


def test_silent_upload_frees_its_worker_within_the_timeout(
    server: Server, gateway: tuple[Path, dict[str, Path]]
) -> None:
    """An upload whose client stops sending mid-body (without closing) ends after the
    timeout: its worker and node session go, nothing of it is visible, and the same
    upload then works, in chunked transfer encoding too."""
    _config, dirs = gateway
    data = payload(4 * MiB, seed=6)
    key = key_of(data)
    put_path = url_path(server, "put", keyq(key))
    length = f"{api.DATA_LENGTH}: {len(data)}"
    for framing, first in [
        (f"Content-Length: {len(data)}", data[:MiB]),
        ("Transfer-Encoding: chunked", chunk(data[: MiB // 2]) + chunk(data[MiB // 2 : MiB])),
    ]:
        sock = connect(server)
        sock.sendall(head(server, "POST", put_path, framing, length) + first)
        took = ended_within(sock, TIMEOUT + 2)
        sock.close()
        assert took < TIMEOUT + 2
        assert objects(dirs["n1"]) == []
    assert put(server, data)
    assert get(server, key) == data
    assert "Traceback" not in server.log.read_text()  # one line says what happened


def test_trickling_upload_is_cut_off(server: Server) -> None:
    """An upload that trickles, never silent for the timeout but far below the
    minimum rate, is cut off soon after the timeout instead of holding its worker
    for as long as its client likes."""
    data = payload(MiB, seed=7)
    sock = connect(server)
    sock.sendall(
        head(
            server,
            "POST",
            url_path(server, "put", keyq(key_of(data))),
            f"Content-Length: {len(data)}",
            f"{api.DATA_LENGTH}: {len(data)}",
        )
        + data[:100]
    )
    stop = threading.Event()

    def trickle() -> None:
        for byte in data[100:]:
            if stop.wait(0.25):
                return
            try:
                sock.send(bytes([byte]))
            except OSError:
                return

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        took = ended_within(sock, TIMEOUT + 6)
        assert took < TIMEOUT + 3
    finally:
        stop.set()
        sender.join()
        sock.close()


def test_chunked_upload_in_odd_pieces(server: Server) -> None:
    """A chunked upload with chunks of every size, a chunk extension and a trailer,
    sent in fragments that split sizes, data and CRLFs: stored whole. A bad chunk
    size fails the upload and closes the connection."""
    data = payload(300_000, seed=8)
    body = b"".join(chunk(data[a:b]) for a, b in [(0, 1), (1, 8), (8, 65_544), (65_544, 300_000)])
    body = body.replace(b"\r\n", b";ext=1\r\n", 1) + b"0\r\nX-Trailer: yes\r\n\r\n"
    put_path = url_path(server, "put", keyq(key_of(data)))
    length = f"{api.DATA_LENGTH}: {len(data)}"
    sock = connect(server)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(head(server, "POST", put_path, "Transfer-Encoding: chunked", length))
    for a in range(0, len(body), 9_973):
        sock.sendall(body[a : a + 9_973])
        time.sleep(0.001)
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    assert resp.status == 200 and json.loads(resp.read())["stored"]
    sock.close()
    assert get(server, key_of(data)) == data
    other = payload(1000, seed=9)
    sock = connect(server)
    sock.sendall(
        head(server, "POST", url_path(server, "put", keyq(key_of(other))),
             "Transfer-Encoding: chunked", f"{api.DATA_LENGTH}: {len(other)}")
        + b"-3e8\r\n" + other + b"\r\n0\r\n\r\n"
    )  # fmt: skip
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    assert not json.loads(resp.read())["stored"] and resp.getheader("Connection") == "close"
    ended_within(sock, 5)
    sock.close()


def test_downloads_to_clients_that_stop_reading_end_within_the_timeout(server: Server) -> None:
    """As many downloads as there are workers, to clients that read nothing: each ends
    once its client has taken nothing for the timeout, and others are served then."""
    data = os.urandom(32 * MiB)
    put(server, data)
    stalled = []
    for _ in range(JOBS):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(head(server, "GET", url_path(server, f"key/{key_of(data)}")))
        stalled.append(sock)
    try:
        time.sleep(0.5)
        started = time.monotonic()
        status, _body = call(server, "POST", url_path(server, "checkpresent", keyq(key_of(data))))
        assert status == 200
        took = time.monotonic() - started
        assert took < TIMEOUT + 3, f"answered after {took:.1f} s"
    finally:
        for sock in stalled:
            sock.close()
    assert removed(server, key_of(data))


def test_refused_upload_bodies_take_no_memory(server: Server) -> None:
    """A 256 MiB upload refused before its body is read (no credentials: 401; no data
    length: 400) is read and dropped in small pieces, not held in memory whole, so a
    stock client that sent it all still gets the answer."""
    size = 256 * MiB
    base = proc_status(server.proc.pid)["VmHWM"]
    for headers, status in [
        ((f"Content-Length: {size}", f"{api.DATA_LENGTH}: {size}"), 401),
        ((f"Content-Length: {size}", f"Authorization: {AUTH}"), 400),
    ]:
        sock = connect(server)
        lines = [f"POST {url_path(server, 'put', keyq(key_of(b'x')))} HTTP/1.1", "Host: x"]
        sock.sendall(("\r\n".join([*lines, *headers]) + "\r\n\r\n").encode())
        block = bytes(MiB)
        for _ in range(size // MiB):
            sock.sendall(block)
        sock.settimeout(30)
        answer = sock.recv(1000)
        assert answer.startswith(f"HTTP/1.1 {status}".encode()), answer
        sock.close()
    grew = proc_status(server.proc.pid)["VmHWM"] - base
    assert grew < 64 * 1024, f"the server's peak memory grew by {grew} kB"
    assert removed(server, key_of(b"x"))  # still serving


def test_oversized_request_head_is_refused(server: Server) -> None:
    """A request head of 32 MiB (one endless header) is refused once it passes 64 KiB,
    not read into memory."""
    base = proc_status(server.proc.pid)["VmHWM"]
    sock = connect(server)
    sock.sendall(head(server, "POST", url_path(server, "checkpresent", keyq(key_of(b"x"))))[:-2])
    sock.settimeout(30)
    with contextlib.suppress(OSError):  # the server closes while we still send
        sock.sendall(b"X-Big: ")
        for _ in range(32):
            sock.sendall(b"a" * MiB)
    answer = b""
    with contextlib.suppress(OSError):
        answer = sock.recv(1000)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer
    grew = proc_status(server.proc.pid)["VmHWM"] - base
    assert grew < 16 * 1024, f"the server's peak memory grew by {grew} kB"


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux's prlimit")
def test_out_of_file_descriptors_then_serving_again(server: Server) -> None:
    """More connections than the server may open files for: it says so once (cheroot
    alone logs a traceback thousands of times a second, spinning on the accept error)
    and serves again as soon as they go."""
    limit = proc_status(server.proc.pid)["fds"] + 10
    subprocess.run(["prlimit", f"--pid={server.proc.pid}", f"--nofile={limit}"], check=True)
    socks = []
    try:
        with contextlib.suppress(OSError):
            for _ in range(30):
                socks.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        time.sleep(0.5)
    finally:
        for sock in socks:
            sock.close()
    status, _body = call(server, "GET", "/health", timeout=15)
    assert status == 200
    assert server.log.read_text().count("Too many open files") == 1


# -- load: slow -------------------------------------------------------------------------


@pytest.mark.slow
def test_sixteen_stock_clients_at_once_peak_memory(
    tmp_path: Path, pypi_client: Client, gateway: tuple[Path, dict[str, Path]]
) -> None:
    """16 stock clients copy a 32 MiB file each at once through a server of 16 workers,
    then get them back; the server's peak memory is reported and stays bounded."""
    config, dirs = gateway
    srv = start_server(config, tmp_path / "server.log", "--auth-http")
    try:
        idle = proc_status(srv.proc.pid)
        repos = [
            http_repo(tmp_path / f"c{i}", pypi_client, srv, "archive", "rw") for i in range(16)
        ]
        keys = []
        for i, r in enumerate(repos):
            r.write(f"f{i}.bin", os.urandom(32 * MiB))
            r.annex("add", f"f{i}.bin")
            keys.append(r.lookupkey(f"f{i}.bin"))

        run_in_all(repos, "copy", "--to", "gw", ".", timeout=600)
        assert {p.name for p in objects(dirs["n1"])} == set(keys)
        run_in_all(repos, "drop", ".", timeout=600)
        run_in_all(repos, "get", ".", timeout=600)
        after = proc_status(srv.proc.pid)
        print(f"server idle: {idle}; after 16 clients x 32 MiB up and down: {after}")
        assert after["VmHWM"] < 400 * 1024
    finally:
        srv.stop()


@pytest.mark.slow
def test_big_upload_and_download_peak_memory(
    tmp_path: Path, pypi_client: Client, gateway: tuple[Path, dict[str, Path]]
) -> None:
    """A 500 MiB file up and down through the server with a stock client: the server's
    peak memory is reported and is a small fraction of the file."""
    config, _dirs = gateway
    srv = start_server(config, tmp_path / "server.log", "--auth-http")
    try:
        repo = http_repo(tmp_path, pypi_client, srv, "archive", "rw")
        with open(repo.path / "big.bin", "wb") as f:
            for _ in range(500):
                f.write(os.urandom(MiB))
        repo.annex("add", "big.bin")
        idle = proc_status(srv.proc.pid)
        repo.annex("copy", "--to", "gw", "big.bin", timeout=900)
        up = proc_status(srv.proc.pid)
        repo.annex("drop", "big.bin")
        repo.annex("get", "big.bin", timeout=900)
        down = proc_status(srv.proc.pid)
        print(f"server idle: {idle}; after 500 MiB up: {up}; after 500 MiB down: {down}")
        assert down["VmHWM"] < 200 * 1024
    finally:
        srv.stop()
