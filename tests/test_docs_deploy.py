"""docs/deploy-http.md, run as written: its target and users scripts, the systemd
unit's command line (and ``systemd-analyze verify`` of the unit), the nginx site
in Debian's nginx on loopback ports with a self-signed certificate in front of
the unit's server on its unix socket, a stock git-annex 10.20261026 copying,
getting and dropping through both, and the nftables ruleset (``nft -c``). Only
ports and paths are replaced by the test's own."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import VENV_BIN, Client
from loopback import free_port
from test_e2e_sftp_cluster import add_file
from test_http_server import Server, http_repo, objects, self_signed

pytestmark = pytest.mark.timeout(600)
DOC = Path(__file__).resolve().parent.parent / "docs" / "deploy-http.md"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
ALICE = "pw-alice"  # http_repo's convention: user NAME's password is pw-NAME


def block(kind: str, name: str) -> str:
    """The doc's ``<!-- script: NAME -->`` or ``<!-- file: NAME -->`` block."""
    text = DOC.read_text()
    found = re.search(
        rf"<!-- {kind}: {re.escape(name)} -->\n```\w*\n(.*?)```\n<!-- end {kind} -->", text, re.S
    )
    assert found, f"{DOC.name} lost its {kind} {name}"
    return found.group(1)


@dataclasses.dataclass
class Host:
    """The doc's paths, moved under a test directory."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def srv(self) -> Path:
        return self.root / "srv"

    @property
    def config(self) -> Path:
        return self.state / "gateway.toml"

    def place(self, text: str) -> str:
        for doc, ours in (
            ("/usr/local/bin/git-annex-remote-proxy", str(VENV_BIN / "git-annex-remote-proxy")),
            ("/var/lib/git-annex-proxy", str(self.state)),
            ("/run/git-annex-proxy", str(self.run)),
            ("/srv/annex", str(self.srv)),
        ):
            text = text.replace(doc, ours)
        return text

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "HOME": str(self.state),
            "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            **extra,
        }

    def script(self, name: str, **env: str) -> str:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", self.place(block("script", name))],
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, f"script {name}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout


def exec_start(unit: str) -> list[str]:
    """The unit's ExecStart, as systemd splits it (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", unit)
    line = next(ln for ln in joined.splitlines() if ln.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def unix_get(sock_path: Path, path: str) -> tuple[int, bytes]:
    class Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(30)
            self.sock.connect(str(sock_path))

    conn = Conn("localhost")
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_for(ready: object, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited: {log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            if ready():  # type: ignore[operator]
                return
        time.sleep(0.1)
    raise AssertionError(f"{what} not ready in 30 s: {log.read_text()[-3000:]}")


@pytest.fixture
def host(tmp_path_factory: pytest.TempPathFactory) -> Host:
    """The account's directories (short paths: a unix socket's is at most 107 bytes);
    RuntimeDirectory=, which systemd would make, made as the unit says (0750)."""
    h = Host(tmp_path_factory.mktemp("dep"))
    for d in (h.state, h.srv / "disk1", h.srv / "disk2"):
        d.mkdir(parents=True)
    h.run.mkdir(mode=0o750)
    return h


@pytest.fixture
def unit_server(host: Host) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """The target and users scripts, then the unit's ExecStart, as written."""
    out = host.script("target")
    assert "archive" in out
    out = host.script("http-users", ALICE_PASSWORD=ALICE, BACKUP_PASSWORD="pw-backup")
    assert re.search(r"^alice\s+readwrite\s+\*$", out, re.M), out
    assert re.search(r"^backup\s+appendonly\s+archive$", out, re.M), out
    assert out.rstrip().endswith(f"600 {host.state}/http-users.json"), out
    argv = exec_start(host.place(block("file", "git-annex-proxy.service")))
    log = host.root / "server.log"
    with log.open("ab") as f:
        proc = subprocess.Popen(argv, env=host.env(), stdin=subprocess.DEVNULL, stdout=f, stderr=f)
    sock = host.run / "http.sock"
    try:
        wait_for(lambda: unix_get(sock, "/health")[0] == 200, "the server", proc, log)
        yield proc, log
    finally:
        stop(proc)


@pytest.mark.skipif(not os.access(NGINX, os.X_OK), reason="needs nginx (make sysdeps-test)")
def test_stock_client_through_the_guides_nginx_and_unit(
    host: Host,
    unit_server: tuple[subprocess.Popen[bytes], Path],
    pypi_client: Client,
    tmp_path: Path,
) -> None:
    server, server_log = unit_server
    assert unix_get(host.run / "http.sock", "/health") == (200, b"ok\n")
    certs = host.root / "certs"
    certs.mkdir()
    cert, key = self_signed(certs)
    port, internal = free_port(), free_port()
    site = host.place(block("file", "nginx-site"))
    site = site.replace("listen 9417 ssl;", f"listen 127.0.0.1:{port} ssl;")
    site = site.replace("listen 127.0.0.1:9418;", f"listen 127.0.0.1:{internal};")
    site = site.replace("/etc/letsencrypt/live/annex.example.org/fullchain.pem", str(cert))
    site = site.replace("/etc/letsencrypt/live/annex.example.org/privkey.pem", str(key))
    ngx = host.root / "nginx"
    ngx.mkdir()
    (ngx / "site.conf").write_text(site)
    # What Debian's /etc/nginx/nginx.conf gives a site, with this test's files.
    (ngx / "nginx.conf").write_text(
        f"""user root;
worker_processes 1;
error_log {ngx}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log {ngx}/access.log;
    client_body_temp_path {ngx}/body;
    proxy_temp_path {ngx}/proxy;
    fastcgi_temp_path {ngx}/fastcgi;
    uwsgi_temp_path {ngx}/uwsgi;
    scgi_temp_path {ngx}/scgi;
    include {ngx}/site.conf;
}}
"""
    )
    nginx_log = ngx / "stderr.log"
    with nginx_log.open("ab") as f:
        nginx = subprocess.Popen(
            [NGINX, "-p", str(ngx), "-e", str(ngx / "error.log"), "-c", str(ngx / "nginx.conf"),
             "-g", f"daemon off; pid {ngx}/nginx.pid;"],
            stdin=subprocess.DEVNULL, stdout=f, stderr=f,
        )  # fmt: skip
    try:
        wait_for(lambda: socket.create_connection(("127.0.0.1", port), 1).close() is None,
                 "nginx", nginx, nginx_log)  # fmt: skip
        # A stock client through nginx, trusting the self-signed certificate.
        trusted = host.root / "trusted"
        trusted.mkdir()
        shutil.copy(cert, trusted / "cert.pem")
        client = dataclasses.replace(
            pypi_client, env={**pypi_client.env, "SYSTEM_CERTIFICATE_PATH": str(trusted)}
        )
        front = Server(nginx, port, "https", host.config, nginx_log)
        repo = http_repo(tmp_path, client, front, "archive", "alice")
        akey = add_file(repo, "a.bin", 3_000_000)
        repo.annex("copy", "--to", "gw", "a.bin")
        for disk in ("disk1", "disk2"):
            assert [p.name for p in objects(host.srv / disk)] == [akey]
        repo.annex("drop", "a.bin")  # numcopies 1: lockcontent and keeplocked through nginx
        repo.annex("get", "a.bin")
        repo.annex("drop", "--from", "gw", "a.bin")
        assert objects(host.srv / "disk1") == [] and objects(host.srv / "disk2") == []

        # Metrics and health on the internal listener only.
        with urllib.request.urlopen(f"http://127.0.0.1:{internal}/metrics", timeout=30) as r:
            text = r.read().decode()
        puts = re.search(r'^git_annex_proxy_http_requests_total\{operation="put",status="200"\} '
                         r"(\S+)$", text, re.M)  # fmt: skip
        assert puts and float(puts.group(1)) >= 1, text[-3000:]
        sent = re.search(r'^git_annex_proxy_http_sent_bytes_total\{operation="key"\} (\S+)$',
                         text, re.M)  # fmt: skip
        assert sent and float(sent.group(1)) >= 3_000_000
        with urllib.request.urlopen(f"http://127.0.0.1:{internal}/health", timeout=30) as r:
            assert r.read() == b"ok\n"
        ctx = ssl.create_default_context(cafile=str(cert))
        with pytest.raises(urllib.error.HTTPError) as public:
            urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", timeout=30, context=ctx)
        assert public.value.code == 404
    finally:
        stop(nginx, signal.SIGQUIT)
    stop(server)
    assert server.returncode == 0, server_log.read_text()[-3000:]

    # The access log (stderr, the journal): JSON lines, the client's address as
    # nginx saw it, alice, never her password.
    logged = server_log.read_text()
    records = [json.loads(ln) for ln in logged.splitlines() if ln.startswith("{")]
    ops = {(r["operation"], r["status"]) for r in records if r["user"] == "alice"}
    assert {("put", 200), ("key", 200), ("lockcontent", 200), ("remove", 200)} <= ops, ops
    assert all(r.get("forwarded_for") == "127.0.0.1" for r in records if r["user"] == "alice")
    assert ALICE not in logged
    assert base64.b64encode(f"alice:{ALICE}".encode()).decode() not in logged


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_unit_verifies(host: Host) -> None:
    """``systemd-analyze verify``: no unknown option, an executable ExecStart."""
    unit = host.root / "git-annex-proxy.service"
    unit.write_text(host.place(block("file", "git-annex-proxy.service")))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (nftables)")
def test_the_firewall_ruleset_parses(tmp_path: Path) -> None:
    """``nft -c``: checked, never applied."""
    rules = tmp_path / "nftables.conf"
    rules.write_text(block("file", "nftables"))
    proc = subprocess.run(["nft", "-c", "-f", str(rules)], capture_output=True, text=True)
    if proc.returncode != 0 and "Operation not permitted" in proc.stderr:
        pytest.skip("nft -c needs CAP_NET_ADMIN here")
    assert proc.returncode == 0, proc.stderr
