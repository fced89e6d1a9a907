"""``git-annex-remote-proxy http`` end to end: our server as a real process on a free
loopback port, a stock git-annex 10.20261026 client using it through
``remote.NAME.annexUrl``, with real credentials from git's credential helper."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import VENV_BIN, Client, Repo, make_repo
from test_e2e_file_cluster import summary_of_testremote
from test_e2e_sftp_cluster import add_file

from git_annex_remote_proxy.config import GatewayConfig
from shared.annex.keys import Key
from shared.p2p import httpapi as api

pytestmark = pytest.mark.timeout(600)
PROXY = str(VENV_BIN / "git-annex-remote-proxy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def objects(d: Path) -> list[Path]:
    return [
        p
        for p in d.rglob("*")
        if p.is_file() and p.parent != d and "tmp" not in p.relative_to(d).parts
    ]


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    scheme: str
    config: Path
    log: Path

    def url(self, uuid: str = "") -> str:
        return f"annex+{self.scheme}://127.0.0.1:{self.port}/git-annex/"

    def uuid(self, target: str) -> str:
        return GatewayConfig.load(self.config).target(target).uuid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_server(
    config: Path, log: Path, *options: str, tls: tuple[Path, Path] | None = None
) -> Server:
    port = free_port()
    argv = [PROXY, "http", "--config", str(config), "--bind", "127.0.0.1", "--port", str(port)]
    if tls is not None:
        argv += ["--certfile", str(tls[0]), "--privatekeyfile", str(tls[1])]
    out = log.open("ab")
    proc = subprocess.Popen([*argv, *options], stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    out.close()
    server = Server(proc, port, "https" if tls else "http", config, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return server
        time.sleep(0.1)
    server.stop()
    raise AssertionError("the server did not listen within 30 s")


CLIENT_UUID = "79a5a1f4-07e8-11ef-873d-97f93ca91925"  # the client of raw requests


def key_of(data: bytes) -> str:
    return f"SHA256E-s{len(data)}--{hashlib.sha256(data).hexdigest()}.bin"


def op_path(srv: Server, target: str, op: str, query: str = "") -> str:
    """The path of a v4 API request to ``target``."""
    return f"/git-annex/{srv.uuid(target)}/v4/{op}" + (f"?{query}" if query else "")


def keyq(key: str) -> str:
    return f"key={key}&clientuuid={CLIENT_UUID}"


def users_cli(config: Path, *args: str, password: str = "") -> str:
    return subprocess.run(
        [PROXY, "http-users", "--config", str(config), *args],
        input=password + "\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.fixture
def gateway(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """Two targets: archive (two file nodes) and other (one)."""
    config = tmp_path / "gw" / "gw.toml"
    config.parent.mkdir()
    dirs = {n: tmp_path / n for n in ("n1", "n2", "o")}
    for d in dirs.values():
        d.mkdir()
    run = [PROXY, "gateway", "--config", str(config), "add"]
    subprocess.run(
        [*run, "archive", f"n1=file://{dirs['n1']}", f"n2=file://{dirs['n2']}"], check=True
    )
    subprocess.run([*run, "other", f"o=file://{dirs['o']}"], check=True)
    for name, access, targets in [
        ("rw", "readwrite", ()),
        ("ro", "readonly", ()),
        ("ao", "appendonly", ()),
        ("one", "readwrite", ("other",)),
    ]:
        extra = [a for t in targets for a in ("--target", t)]
        users_cli(config, "add", name, "--access", access, *extra, password=f"pw-{name}")
    return config, dirs


@pytest.fixture
def server(tmp_path: Path, gateway: tuple[Path, dict[str, Path]]) -> Iterator[Server]:
    config, _dirs = gateway
    srv = start_server(config, tmp_path / "server.log", "--auth-http", "--jobs", "8")
    yield srv
    srv.stop()


def http_repo(tmp_path: Path, client: Client, srv: Server, target: str, user: str) -> Repo:
    """A stock client repository with remote ``gw`` using our server for ``target``."""
    repo = make_repo(tmp_path / f"client-{user}-{target}", client)
    store = Path(client.env["HOME"]) / f"creds-{user}"
    store.write_text(
        "".join(f"{s}://{user}:pw-{user}@127.0.0.1:{srv.port}\n" for s in ("http", "https"))
    )
    store.chmod(0o600)
    repo.run("git", "config", "credential.helper", f"store --file={store}")
    repo.run("git", "config", "credential.useHttpPath", "false")
    repo.run("git", "config", "annex.security.allowed-ip-addresses", "127.0.0.1")
    repo.run("git", "remote", "add", "gw", f"{srv.scheme}://127.0.0.1:{srv.port}/git/{target}")
    repo.run("git", "config", "remote.gw.annexUrl", srv.url())
    repo.run("git", "config", "remote.gw.annex-uuid", srv.uuid(target))
    return repo


def test_stock_client_copy_get_drop_fsck(
    tmp_path: Path, pypi_client: Client, server: Server, gateway: tuple[Path, dict[str, Path]]
) -> None:
    _config, dirs = gateway
    repo = http_repo(tmp_path, pypi_client, server, "archive", "rw")
    key = add_file(repo, "a.bin", 1_500_000)
    repo.annex("copy", "--to", "gw", "a.bin")
    assert [p.name for p in objects(dirs["n1"])] == [key]
    assert [p.name for p in objects(dirs["n2"])] == [key]
    repo.annex("drop", "a.bin")  # numcopies 1: lockcontent on the server
    repo.annex("get", "a.bin")
    repo.annex("fsck", "--from", "gw", "a.bin")
    repo.annex("drop", "--from", "gw", "a.bin")
    assert objects(dirs["n1"]) == [] and objects(dirs["n2"]) == []
    assert "rw" in server.log.read_text() and "pw-rw" not in server.log.read_text()


def rot(path: Path) -> bytes:
    """Flip one byte of a stored object in place (same size: only its hash tells);
    what it held before."""
    good = path.read_bytes()
    path.chmod(0o644)
    path.write_bytes(good[:1000] + bytes([good[1000] ^ 0xFF]) + good[1001:])
    return good


def raw_get(srv: Server, target: str, key: str, user: str) -> tuple[int, bytes]:
    """A GET of ``key`` as a client sees it: the announced X-git-annex-data-length and
    the body that came (what there was of it when the connection ended)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        auth = {"Authorization": api.basic_auth(user, f"pw-{user}")}
        conn.request("GET", api.path(srv.uuid(target), 4, "key", Key.parse(key)), headers=auth)
        resp = conn.getresponse()
        assert resp.status == 200, resp.status
        length = int(resp.headers["X-git-annex-data-length"])
        try:
            body = resp.read()
        except http.client.IncompleteRead as e:
            body = e.partial
        return length, body
    finally:
        conn.close()


def test_a_rotten_replica_is_never_served(
    tmp_path: Path, pypi_client: Client, server: Server, gateway: tuple[Path, dict[str, Path]]
) -> None:
    """One of the two copies rots (the same size, one byte flipped), on either node.
    A small file is read and checked whole before its first byte goes out: the get
    succeeds at once with the right bytes, even for a client that checks nothing
    (annex.verify=false). A big one streams; a stream that proves wrong ends short of
    the announced length, which the spec makes invalid (git-annex fails that attempt),
    the copy is noted bad and read last, and the next get succeeds."""
    _config, dirs = gateway
    repo = http_repo(tmp_path, pypi_client, server, "archive", "rw")
    small = add_file(repo, "small.bin", 100_000)
    big = add_file(repo, "big.bin", 3_000_000)
    repo.annex("copy", "--to", "gw", ".")
    wanted = {name: (repo.path / name).read_bytes() for name in ("small.bin", "big.bin")}
    repo.annex("drop", ".")
    for node in ("n1", "n2"):  # whichever node the server reads first
        (copy,) = [p for p in objects(dirs[node]) if p.name == small]
        good = rot(copy)
        repo.run("git", "-c", "annex.verify=false", "annex", "get", "small.bin")  # checks nothing
        assert (repo.path / "small.bin").read_bytes() == wanted["small.bin"], node
        repo.annex("drop", "small.bin")
        copy.write_bytes(good)

        (copy,) = [p for p in objects(dirs[node]) if p.name == big]
        good = rot(copy)
        length, body = raw_get(server, "archive", big, "rw")
        assert body == wanted["big.bin"] or len(body) < length, f"wrong bytes, whole, {node}"
        for _ in range(2):
            if repo.annex("get", "big.bin", check=False).returncode == 0:
                break
        assert (repo.path / "big.bin").read_bytes() == wanted["big.bin"], node
        repo.annex("drop", "big.bin")
        copy.write_bytes(good)


def learn_from(source: Repo, repo: Repo) -> None:
    """``repo`` gets ``source``'s files and location log (no content)."""
    repo.run("git", "remote", "add", "source", str(source.path))
    repo.run("git", "fetch", "-q", "source")
    repo.run("git", "merge", "-q", "source/main")
    repo.annex("merge")


def post(srv: Server, target: str, op: str, query: str, user: str | None = None) -> int:
    """The HTTP status of a bodiless POST, with ``user``'s credentials."""
    url = f"{srv.scheme}://127.0.0.1:{srv.port}/git-annex/{srv.uuid(target)}/v4/{op}?{query}"
    req = urllib.request.Request(url, method="POST", data=b"")
    if user is not None:
        req.add_header("Authorization", api.basic_auth(user, f"pw-{user}"))
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        if e.code == 401:
            assert e.headers["WWW-Authenticate"] == api.challenge()
        return int(e.code)


def test_permissions(
    tmp_path: Path, pypi_client: Client, server: Server, gateway: tuple[Path, dict[str, Path]]
) -> None:
    _config, dirs = gateway
    rw = http_repo(tmp_path, pypi_client, server, "archive", "rw")
    key = add_file(rw, "a.bin", 100_000)
    rw.annex("copy", "--to", "gw", "a.bin")
    # Read-only: may get, may not store or remove.
    ro = http_repo(tmp_path, pypi_client, server, "archive", "ro")
    learn_from(rw, ro)
    ro.annex("get", "--from", "gw", "a.bin")
    add_file(ro, "b.bin", 1000)
    assert ro.annex("copy", "--to", "gw", "b.bin", check=False).returncode != 0
    assert ro.annex("drop", "--force", "--from", "gw", "a.bin", check=False).returncode != 0
    # Append-only: may store, may not remove.
    ao = http_repo(tmp_path, pypi_client, server, "archive", "ao")
    learn_from(rw, ao)
    key_c = add_file(ao, "c.bin", 1000)
    ao.annex("copy", "--to", "gw", "c.bin")
    assert ao.annex("drop", "--force", "--from", "gw", "a.bin", check=False).returncode != 0
    assert {p.name for p in objects(dirs["n1"])} == {key, key_c}
    # A user limited to "other" cannot reach "archive", but reaches "other".
    one = http_repo(tmp_path, pypi_client, server, "archive", "one")
    learn_from(rw, one)
    got_one = one.annex("get", "--from", "gw", "a.bin", check=False)
    assert got_one.returncode != 0, got_one.stdout + got_one.stderr
    q = f"key={key}&clientuuid=79a5a1f4-07e8-11ef-873d-97f93ca91925"
    assert post(server, "other", "checkpresent", q, "one") == 200
    # The statuses, exactly as the spec says.
    assert post(server, "archive", "checkpresent", q) == 401
    assert post(server, "archive", "checkpresent", q, "rw") == 200
    assert post(server, "archive", "checkpresent", q, "one") == 403
    assert post(server, "archive", "remove", q, "ro") == 403
    assert post(server, "archive", "remove", q, "ao") == 403
    assert post(server, "archive", "putoffset", q, "ro") == 403
    assert post(server, "archive", "putoffset", q, "ao") == 200
    bad = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/git-annex/{server.uuid('archive')}/v4/checkpresent?{q}",
        method="POST",
        data=b"",
        headers={"Authorization": api.basic_auth("rw", "wrong")},
    )
    with pytest.raises(urllib.error.HTTPError) as got:
        urllib.request.urlopen(bad, timeout=30)
    assert got.value.code == 401
    assert {p.name for p in objects(dirs["n1"])} == {key, key_c}
    assert "pw-" not in server.log.read_text() and "wrong" not in server.log.read_text()


def self_signed(where: Path) -> tuple[Path, Path]:
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_https_accepts_credentials_plain_http_does_not(
    tmp_path: Path, gateway: tuple[Path, dict[str, Path]]
) -> None:
    """Credentials count over HTTPS; over plain HTTP only with --auth-http."""
    import ssl

    config, _dirs = gateway
    cert, key = self_signed(tmp_path)
    tls = start_server(config, tmp_path / "tls.log", tls=(cert, key))
    plain = start_server(config, tmp_path / "plain.log")
    try:
        uuid = tls.uuid("archive")
        q = "key=SHA1--00&clientuuid=79a5a1f4-07e8-11ef-873d-97f93ca91925"
        ctx = ssl.create_default_context(cafile=str(cert))
        for srv, context, want in [(tls, ctx, 200), (plain, None, 401)]:
            req = urllib.request.Request(
                f"{srv.scheme}://127.0.0.1:{srv.port}/git-annex/{uuid}/v4/checkpresent?{q}",
                method="POST",
                data=b"",
                headers={"Authorization": api.basic_auth("rw", "pw-rw")},
            )
            try:
                with urllib.request.urlopen(req, timeout=30, context=context) as resp:
                    status, body = resp.status, resp.read()
                assert json.loads(body) == {"present": False}
            except urllib.error.HTTPError as e:
                status = e.code
            assert status == want, srv.scheme
    finally:
        tls.stop()
        plain.stop()
    assert tls.proc.returncode == 0 and plain.proc.returncode == 0  # clean shutdown


@pytest.mark.slow
def test_testremote_through_the_http_server(
    tmp_path: Path, pypi_client: Client, server: Server
) -> None:
    """git annex testremote --fast, a stock client through our server (native
    git annex p2phttp scores 122/125 on this setup)."""
    repo = http_repo(tmp_path, pypi_client, server, "archive", "rw")
    proc = repo.run("git", "annex", "testremote", "--fast", "gw", check=False, timeout=1500)
    passed, total = summary_of_testremote(proc.stdout + proc.stderr)
    print(f"testremote --fast through http: {passed}/{total}")
    assert passed >= 122, (proc.stdout + proc.stderr)[-4000:]


def run_in_all(repos: list[Repo], *args: str, timeout: float = 300) -> None:
    """``git annex ARGS`` in every repository at once; each must succeed."""
    procs = [
        subprocess.Popen(
            ["git", "annex", *args],
            cwd=r.path,
            env=r.client.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in repos
    ]
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs


@pytest.mark.slow
def test_sixteen_clients_at_once(
    tmp_path: Path, pypi_client: Client, server: Server, gateway: tuple[Path, dict[str, Path]]
) -> None:
    """16 stock clients copy at once through a server of 8 workers; each then gets its
    file back from the server."""
    _config, dirs = gateway
    repos = [http_repo(tmp_path / f"c{i}", pypi_client, server, "archive", "rw") for i in range(16)]
    keys = [add_file(r, f"f{i}.bin", 300_000) for i, r in enumerate(repos)]

    run_in_all(repos, "copy", "--to", "gw", ".")
    assert {p.name for p in objects(dirs["n1"])} == set(keys)
    run_in_all(repos, "drop", ".")
    run_in_all(repos, "get", ".")
