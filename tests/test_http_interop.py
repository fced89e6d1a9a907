"""Our remotes as clients of our own HTTP server: the proxy remote with
``gateway=annex+http://.../git-annex/ target=UUID`` and the cluster remote with an
``annex+http://.../git-annex/UUID`` node, both served by ``git-annex-remote-proxy
http`` (real process, real users, credentials from git's credential helper), through
the PyPI git-annex."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_http_server
from conftest import Client, Repo
from node_conformance import payload
from test_e2e_file_cluster import summary_of_testremote
from test_http_server import Server, http_repo, objects

# test_http_server's fixtures: its gateway (targets archive and other, users rw, ro,
# ao, one) and our server on it, plain HTTP with --auth-http.
gateway = test_http_server.gateway
server = test_http_server.server

pytestmark = pytest.mark.timeout(600)


def client_repo(tmp_path: Path, client: Client, srv: Server, user: str = "rw") -> Repo:
    """A client repository whose git credential helper knows ``user`` for the
    server's annexUrl (what our annex+http nodes ask for), without a git remote."""
    repo = http_repo(tmp_path, client, srv, "archive", user)
    repo.run("git", "remote", "remove", "gw")
    store = Path(client.env["HOME"]) / f"creds-{user}"
    with store.open("a") as f:
        # git keeps the path of a URL not http(s): the annexUrl's, /git-annex.
        f.write(f"annex+{srv.scheme}://{user}:pw-{user}@127.0.0.1:{srv.port}/git-annex\n")
    return repo


def proxy_config(srv: Server, target: str) -> list[str]:
    return ["externaltype=proxy", f"gateway={srv.url()}", f"target={srv.uuid(target)}"]


def cluster_config(srv: Server, target: str, *more: str) -> list[str]:
    node = f"web={srv.url()}{srv.uuid(target)}"
    return ["externaltype=cluster", "nodes=" + " ".join([node, *more])]


def names(d: Path) -> list[str]:
    return sorted(p.name for p in objects(d))


def test_proxy_remote_to_our_http_server(
    tmp_path: Path, pypi_client: Client, server: Server, gateway: tuple[Path, dict[str, Path]]
) -> None:
    _config, dirs = gateway
    repo = client_repo(tmp_path, pypi_client, server)
    repo.annex(
        "initremote", "px", "type=external", "encryption=none", *proxy_config(server, "archive")
    )
    data = payload(1_200_000, seed=7)
    repo.write("a.bin", data)
    repo.annex("add", "a.bin")
    key = repo.lookupkey("a.bin")
    repo.annex("copy", "--to", "px", "a.bin")
    assert names(dirs["n1"]) == [key] and names(dirs["n2"]) == [key]
    repo.annex("drop", "a.bin")  # numcopies 1: lockcontent through our server
    repo.annex("get", "--from", "px", "a.bin")
    assert (repo.path / "a.bin").read_bytes() == data
    assert "ok" in repo.annex("fsck", "--from", "px", "a.bin").stdout
    repo.annex("drop", "--from", "px", "a.bin")
    assert names(dirs["n1"]) == [] and names(dirs["n2"]) == []
    log = server.log.read_text()
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    stores = [r for r in records if r["method"] == "POST" and r["operation"] == "put"]
    assert stores and all(r["user"] == "rw" and r["status"] == 200 for r in stores), records
    assert "pw-rw" not in log  # the password never reaches the log
    # The target's name is not its UUID: the remote says to give the UUID.
    bad = repo.annex(
        "initremote", "px2", "type=external", "externaltype=proxy", "encryption=none",
        f"gateway={server.url()}", "target=archive", check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "the target is its UUID, not its name" in bad.stderr


def test_cluster_with_a_node_served_by_our_http_server(
    tmp_path: Path, pypi_client: Client, server: Server, gateway: tuple[Path, dict[str, Path]]
) -> None:
    _config, dirs = gateway
    repo = client_repo(tmp_path, pypi_client, server)
    disk = tmp_path / "disk"
    disk.mkdir()
    repo.annex(
        "initremote", "cl", "type=external", "encryption=none",
        *cluster_config(server, "other", f"disk=file://{disk}"),
    )  # fmt: skip
    data = payload(300_000, seed=8)
    repo.write("b.bin", data)
    repo.annex("add", "b.bin")
    key = repo.lookupkey("b.bin")
    repo.annex("copy", "--to", "cl", "b.bin")
    assert names(dirs["o"]) == [key] and names(disk) == [key]
    repo.annex("drop", "b.bin")
    repo.annex("get", "--from", "cl", "b.bin")
    assert (repo.path / "b.bin").read_bytes() == data
    assert "ok" in repo.annex("fsck", "--from", "cl", "b.bin").stdout
    repo.annex("drop", "--from", "cl", "b.bin")
    assert names(dirs["o"]) == [] and names(disk) == []
    # The server gone: presence is unknown, never "absent".
    repo.annex("copy", "--to", "cl", "b.bin")
    server.stop()
    proc = repo.annex("drop", "--from", "cl", "b.bin", check=False)
    assert proc.returncode != 0 and "cannot reach annex+http://127.0.0.1" in proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("kind", ["proxy", "cluster"])
def test_testremote_fast_over_our_http_server(
    tmp_path: Path,
    pypi_client: Client,
    server: Server,
    gateway: tuple[Path, dict[str, Path]],
    kind: str,
) -> None:
    _config, dirs = gateway
    repo = client_repo(tmp_path, pypi_client, server)
    if kind == "proxy":
        config = proxy_config(server, "archive")
    else:
        config = cluster_config(server, "archive")
    repo.annex("initremote", "r", "type=external", "encryption=none", *config)
    proc = repo.annex("testremote", "r", "--fast", check=False, timeout=1500)
    passed, total = summary_of_testremote(proc.stdout + proc.stderr)
    print(f"testremote --fast, {kind} over our http server: {passed}/{total}")
    assert proc.returncode == 0 and passed == total, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert names(dirs["n1"]) == [] and names(dirs["n2"]) == []
