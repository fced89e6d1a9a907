"""``git-annex-remote-proxy serve`` as an ssh forced command, the way it is deployed: a
real sshd whose ``authorized_keys`` gives each client key a ``command="..."`` entry,
and clients that send what they send (the proxy remote, a stock git-annex, git, and
whoever tries something else).

Keys (one gateway account, one sshd, one ssh alias per key):

- ``gw-alice``: ``serve`` (read-write, every target);
- ``gw-reader``: ``serve --readonly``;
- ``gw-backup``: ``serve --appendonly --allow archive``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import VENV_BIN, Client, Repo, make_repo
from sshd import SSHD, SSHDFactory, keygen, ssh_config_for
from test_e2e_sftp_cluster import add_file
from test_proxy import Pipes

from git_annex_remote_proxy.__main__ import _parser
from git_annex_remote_proxy.access import git_dir
from git_annex_remote_proxy.config import GatewayConfig
from git_annex_remote_proxy.request import (
    CONFIGLIST,
    P2PSTDIO,
    RECEIVE_PACK,
    UPLOAD_PACK,
    Refused,
    Request,
    from_args,
    from_ssh_command,
)
from shared.annex.keys import Key
from shared.p2p.io import APPENDONLY_ERROR, READONLY_ERROR, PeerRefused
from shared.p2p.io import Client as P2PClient

pytestmark = pytest.mark.timeout(600)
PROXY = str(VENV_BIN / "git-annex-remote-proxy")
U1 = "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
U2 = "0b9c8a7e-1111-4222-8333-444455556666"
ONE_OF_THESE = "serves only git-annex and git clone/fetch/push"
# The forced commands, as an operator writes them (the gateway's PATH finds the program).
FORCED = {
    "alice": "git-annex-remote-proxy serve --config {config}",
    "reader": "git-annex-remote-proxy serve --readonly --config {config}",
    "backup": "git-annex-remote-proxy serve --appendonly --allow archive --config {config}",
}


# -- what the client sent, parsed (no I/O) ------------------------------------------


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        # The proxy remote (any gatewaycommand=: its options are read past).
        ("git-annex-remote-proxy serve archive", Request(P2PSTDIO, "archive")),
        ("git-annex-remote-proxy serve configlist /archive", Request(CONFIGLIST, "archive")),
        (
            f"git-annex-remote-proxy serve p2pstdio /archive {U1} --uuid {U2}",
            Request(P2PSTDIO, "archive", U2, U1),
        ),
        (
            f"env HOME=/x /opt/bin/git-annex-remote-proxy --debug serve --config /etc/gw.toml "
            f"p2pstdio /archive {U1} --uuid {U2}",
            Request(P2PSTDIO, "archive", U2, U1),
        ),
        ("git-annex-remote-proxy serve -- archive", Request(P2PSTDIO, "archive")),
        # A stock git-annex, as it quotes and appends.
        (
            "git-annex-shell 'configlist' '/~/archive' '--debug' '--' 'autoinit=1' '--'",
            Request(CONFIGLIST, "archive"),
        ),
        (
            f"git-annex-shell 'p2pstdio' '/~/archive' '--debug' '{U1}' --uuid {U2}",
            Request(P2PSTDIO, "archive", U2, U1),
        ),
        (
            f"/usr/bin/git-annex-shell 'p2pstdio' '/srv/git/archive.git' '{U1}' --uuid={U2} "
            "'--' 'remoteuuid=x' '--'",
            Request(P2PSTDIO, "archive", U2, U1),
        ),
        ("'configlist' 'archive.git'", Request(CONFIGLIST, "archive")),  # no command name
        (
            "git-annex-shell -c \"git-annex-shell 'configlist' '/~/archive'\"",
            Request(CONFIGLIST, "archive"),
        ),
        # git.
        ("git-upload-pack '/archive'", Request(UPLOAD_PACK, "archive")),
        ("git-receive-pack '~/archive.git'", Request(RECEIVE_PACK, "archive")),
        ("git upload-pack 'archive'", Request(UPLOAD_PACK, "archive")),
        ("git-annex-shell -c \"git-receive-pack '/archive'\"", Request(RECEIVE_PACK, "archive")),
        # The client's own options never count: the target is what they leave.
        ("git-annex-remote-proxy serve --allow other other", Request(P2PSTDIO, "other")),
        ("git-annex-remote-proxy serve --config /tmp/x archive", Request(P2PSTDIO, "archive")),
        ("git-annex-remote-proxy serve --allow=a --readonly archive", Request(P2PSTDIO, "archive")),
    ],
)
def test_every_form_a_client_sends_is_understood(command: str, expected: Request) -> None:
    assert from_ssh_command(command) == expected


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("", "nothing to serve: give a target"),
        ("bash", "refused 'bash': this ssh key " + ONE_OF_THESE),
        ("archive", "refused 'archive'"),  # a target alone only after "serve"
        ("scp -t /tmp", "refused 'scp -t /tmp'"),
        ("sh -c 'touch /tmp/x'", "refused \"sh -c 'touch /tmp/x'\""),
        ("internal-sftp", "refused 'internal-sftp'"),
        ("git-annex-remote-proxy gateway remove archive", "refused 'git-annex-remote-proxy gat"),
        ("git-annex-remote-proxy serve", "nothing to serve"),
        ("git-upload-pack --upload-pack=x '/archive'", "git-upload-pack takes one repository"),
        ("git-upload-archive '/archive'", "refused \"git-upload-archive '/archive'\""),
        ("git-annex-shell 'sendkey' '/archive' KEY", "git-annex-shell's sendkey is not served"),
        ("git-annex-shell 'p2pstdio' '/archive'", "p2pstdio takes DIR CLIENT-UUID"),
        ("git-annex-shell 'configlist' '/~/'", "'/~/' names no target"),
        ("git-annex-shell 'configlist' 'a' 'b'", "configlist takes DIR"),
        ("git-annex-remote-proxy serve 'unclosed", "which is not a command line"),
    ],
)
def test_anything_else_is_refused_in_one_line(command: str, message: str) -> None:
    with pytest.raises(Refused) as e:
        from_ssh_command(command)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_serve_arguments_take_the_same_forms() -> None:
    assert from_args(["--", "archive"]) == Request(P2PSTDIO, "archive")
    assert from_args(["configlist", "/x/archive.git", "--debug", "--", "autoinit=1", "--"]) == (
        Request(CONFIGLIST, "archive")
    )
    with pytest.raises(Refused, match="serve takes TARGET"):
        from_args(["archive", "extra"])


def test_allow_takes_one_target_and_repeats() -> None:
    """``serve --allow T T``: the second T is the request, not a second allowed target."""
    args = _parser().parse_args(["serve", "--allow", "archive", "archive"])
    assert args.allow == ["archive"] and args.request == ["archive"]
    args = _parser().parse_args(["serve", "--allow", "a", "--allow", "b", "--readonly"])
    assert args.allow == ["a", "b"] and args.request == [] and args.readonly


# -- through a real sshd -------------------------------------------------------------


@dataclasses.dataclass
class Gateway:
    """One gateway account behind one sshd, and the client side's keys for it."""

    server: SSHD
    config: Path
    disks: dict[str, Path]  # target -> its one file:// node
    keys: dict[str, Path]  # alice/reader/backup -> private key
    root: Path

    def uuid(self, target: str) -> str:
        return GatewayConfig.load(self.config).target(target).uuid

    def client_home(self, home: Path) -> None:
        """``home/.ssh/config``: gw-alice, gw-reader and gw-backup, each with its key."""
        aliases = {f"gw-{who}": self.server for who in self.keys}
        keys = {f"gw-{who}": key for who, key in self.keys.items()}
        ssh_config_for(home, aliases, self.keys["alice"], keys=keys)


def gateway_account(
    root: Path, sshd_factory: SSHDFactory, name: str, forced: dict[str, str] | None
) -> tuple[SSHD, Path, dict[str, Path]]:
    """An sshd standing for a gateway account (HOME ``root/gw-home``, ``PATH`` with our
    programs) and client keys; with ``forced``, ``authorized_keys`` gives each key its
    forced command, else the test (or a script) writes ``~/.ssh/authorized_keys``."""
    home = root / "gw-home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    keys = {}
    for who in forced or ("alice", "reader", "backup"):
        keys[who] = root / "keys" / f"id_{who}"
        keys[who].parent.mkdir(exist_ok=True)
        keygen(keys[who], f"{who}@client")
    env = {"HOME": str(home)}
    if os.environ.get("PYTHONPATH"):  # the code under test, wherever the run takes it from
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    server = sshd_factory(
        name,
        path=[str(VENV_BIN), "/usr/local/bin", "/usr/bin", "/bin"],
        env=env,
        authorized_keys=home / ".ssh" / "authorized_keys",
    )
    if forced is not None:
        server.authorize([(f'command="{c}",restrict', keys[w]) for w, c in forced.items()])
    return server, home, keys


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, sshd_factory: SSHDFactory) -> Gateway:
    root = tmp_path_factory.mktemp("forced")
    config = root / "gw" / "gateway.toml"
    disks = {t: root / f"disk-{t}" for t in ("archive", "other")}
    for target, disk in disks.items():
        disk.mkdir()
        subprocess.run(
            [PROXY, "gateway", "--config", str(config), "add", target, f"d=file://{disk}"],
            check=True,
            capture_output=True,
        )
        subprocess.run(["git", "init", "-q", "--bare", str(git_dir(config, target))], check=True)
    forced = {who: c.format(config=config) for who, c in FORCED.items()}
    server, _home, keys = gateway_account(root, sshd_factory, "forced-gw", forced)
    return Gateway(server, config, disks, keys, root)


def ssh(home: Path, alias: str, *command: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """OpenSSH as a client runs it (``-F``: OpenSSH reads the passwd home, not $HOME)."""
    return subprocess.run(
        ["ssh", "-F", str(home / ".ssh" / "config"), "-T", alias, *command],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


class SshStream(Pipes):
    """``ssh ALIAS COMMAND`` as a byte stream for our P2P client: a session as a client
    opens it, under the key's forced command."""

    def __init__(self, home: Path, alias: str, command: str) -> None:
        super().__init__(["ssh", "-F", str(home / ".ssh" / "config"), "-T", alias, command])

    def close(self) -> None:
        super().close()
        for pipe in (self.proc.stderr, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def p2p(home: Path, alias: str, command: str, expect: str) -> P2PClient:
    client = P2PClient(SshStream(home, alias, command))
    client.handshake(expect_uuid=expect)
    return client


def key_for(data: bytes) -> Key:
    return Key("SHA256E", hashlib.sha256(data).hexdigest() + ".bin", size=len(data))


def objects(d: Path) -> list[str]:
    """Names of the objects in a node directory (not tmp/, not the owner marker)."""
    return sorted(
        p.name
        for p in d.rglob("*")
        if p.is_file() and p.parent != d and "tmp" not in p.relative_to(d).parts
    )


def test_forced_commands_answer_each_form_and_refuse_the_rest(
    gateway: Gateway, tmp_path: Path
) -> None:
    """Raw ssh sessions under each key: what git-annex sends is answered, the forced
    command's options hold whatever the client writes, and anything else gets one line
    on stderr and a nonzero exit. (Every form is in the tables above; these are the
    ones that matter for access, through sshd.)"""
    home = tmp_path / "home"
    gateway.client_home(home)
    archive, other = gateway.uuid("archive"), gateway.uuid("other")
    evil = tmp_path / "evil.toml"  # a configuration the client would like served
    evil.write_text(f'[targets.evil]\nuuid = "{U2}"\nnodes = ["e=file://{tmp_path}"]\n')
    before = gateway.config.read_text()
    answered = {
        ("alice", f"git-annex-remote-proxy serve --config {evil} configlist /other"): other,
        ("alice", "git-annex-shell 'configlist' '/~/archive' '--debug' '--' 'autoinit=1' '--'"): (
            archive
        ),
    }
    refused = {
        ("alice", ""): "nothing to serve: give a target",  # an interactive login
        ("alice", f"sh -c 'touch {tmp_path}/pwned'"): "refused",
        ("alice", "git-annex-remote-proxy gateway remove archive"): "refused",
        ("reader", "git-receive-pack '/archive'"): "git push to target archive refused",
        ("backup", "git-annex-remote-proxy serve --allow other other"): "target other is not",
        ("backup", f"git-annex-shell 'p2pstdio' '/archive' '{U1}' --uuid {other}"): "not allowed",
    }

    def run(who_command: tuple[str, str]) -> subprocess.CompletedProcess[str]:
        who, command = who_command
        return ssh(home, f"gw-{who}", *([command] if command else []))

    asked = [*answered, *refused]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = dict(zip(asked, pool.map(run, asked), strict=True))
    for which, uuid in answered.items():
        proc = results[which]
        assert proc.returncode == 0, (which, proc.stderr)
        assert f"annex.uuid={uuid}" in proc.stdout.splitlines(), which
    for which, message in refused.items():
        proc = results[which]
        assert proc.returncode != 0 and proc.stdout == "", (which, proc.stdout)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (which, proc.stderr)
        assert lines[0].startswith("git-annex-remote-proxy: "), (which, proc.stderr)
    assert not (tmp_path / "pwned").exists()
    assert gateway.config.read_text() == before

    # P2P sessions: the forced command's --readonly/--appendonly hold, whatever the
    # client's words say (GIT_ANNEX_SHELL_* or options of its own are never applied).
    data = os.urandom(10_000)
    key = key_for(data)
    reader = p2p(home, "gw-reader", "env GIT_ANNEX_SHELL_READONLY= git-annex-remote-proxy "
                 "serve --config /dev/null archive", archive)  # fmt: skip
    with pytest.raises(PeerRefused, match=READONLY_ERROR):
        reader.put(key, io.BytesIO(data), len(data))
    reader.close()
    backup = p2p(home, "gw-backup", f"git-annex-shell 'p2pstdio' '/~/archive' '{U1}' "
                 f"--uuid {archive}", archive)  # fmt: skip
    assert backup.put(key, io.BytesIO(data), len(data)).stored
    with pytest.raises(PeerRefused, match=APPENDONLY_ERROR):
        backup.remove(key)
    backup.close()
    assert str(key) in objects(gateway.disks["archive"])
    alice = p2p(home, "gw-alice", "git-annex-remote-proxy serve --readonly archive", archive)
    assert alice.remove(key)[0]  # the client's --readonly is not alice's to set either
    alice.close()
    assert str(key) not in objects(gateway.disks["archive"])
    # Subsystems run the forced command too: no sftp under these keys.
    sftp = subprocess.run(
        ["sftp", "-F", str(home / ".ssh" / "config"), "-b", "-", "gw-alice"],
        input="ls\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sftp.returncode != 0


def client_with_home(client: Client, home: Path) -> Client:
    """``client`` with its own HOME (its git identity copied) and an ``ssh`` that reads
    ``$HOME/.ssh/config`` as a user's ssh reads their ``~/.ssh/config``."""
    old_home = Path(client.env["HOME"])
    (home / ".gnupg").mkdir(parents=True, exist_ok=True)
    os.chmod(home / ".gnupg", 0o700)
    shutil.copy(old_home / ".gitconfig", home / ".gitconfig")
    shim = home / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "ssh").write_text('#!/bin/sh\nexec /usr/bin/ssh -F "$HOME/.ssh/config" "$@"\n')
    (shim / "ssh").chmod(0o755)
    env = {
        **client.env,
        "HOME": str(home),
        "GNUPGHOME": str(home / ".gnupg"),
        "PATH": f"{shim}:{client.env['PATH']}",
    }
    return dataclasses.replace(client, env=env)


@pytest.fixture
def user(gateway: Gateway, client: Client, tmp_path: Path) -> Iterator[Client]:
    """The client, at home with the three keys."""
    home = tmp_path / "user"
    c = client_with_home(client, home)
    gateway.client_home(home)
    yield c
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=c.env, capture_output=True)


def fails_with(proc: subprocess.CompletedProcess[str], text: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and text in out, out


# Both git-annex versions through every kind of key: slow (make test-full). The fast
# suite runs the same paths through the docs' scripts (test_docs_gateway.py).
EACH_CLIENT = pytest.mark.parametrize(
    "client",
    [
        pytest.param("pypi", marks=pytest.mark.slow),
        pytest.param("debian", marks=[pytest.mark.oldannex, pytest.mark.slow]),
    ],
    indirect=True,
)


@EACH_CLIENT
def test_proxy_remote_under_each_forced_command(
    gateway: Gateway, user: Client, tmp_path: Path
) -> None:
    """initremote/copy/get/drop through the proxy remote; --readonly refuses the copy,
    --appendonly the drop, --allow another target, each saying so."""
    repo = make_repo(tmp_path / "repo", user)

    def initremote(name: str, who: str, target: str = "archive") -> None:
        repo.annex(
            "initremote", name, "type=external", "externaltype=proxy", "encryption=none",
            f"gateway=ssh://gw-{who}", f"target={target}",
        )  # fmt: skip

    initremote("gw", "alice")
    initremote("ro", "reader")
    initremote("ao", "backup")
    key = add_file(repo, "a.bin", 300_000)
    repo.annex("copy", "--to", "gw", "a.bin")
    assert key in objects(gateway.disks["archive"])
    repo.annex("fsck", "--fast", "--from", "ro", "a.bin")  # ro: the same storage, has it
    repo.annex("drop", "a.bin")
    repo.annex("get", "--from", "ro", "a.bin")  # reading is what --readonly allows
    assert (repo.path / "a.bin").read_bytes()
    repo.annex("drop", "--from", "gw", "a.bin")
    assert key not in objects(gateway.disks["archive"])

    fails_with(repo.annex("copy", "--to", "ro", "a.bin", check=False), "read-only")
    assert key not in objects(gateway.disks["archive"])
    repo.annex("copy", "--to", "ao", "a.bin")  # --appendonly takes uploads...
    assert key in objects(gateway.disks["archive"])
    proc = repo.annex("drop", "--from", "ao", "a.bin", check=False)  # ...and no removals
    fails_with(proc, "append-only; removal denied")
    assert key in objects(gateway.disks["archive"])
    repo.annex("drop", "--from", "gw", "a.bin")
    # --allow archive: another target is refused at initremote, naming the reason.
    proc = repo.annex(
        "initremote", "no", "type=external", "externaltype=proxy", "encryption=none",
        "gateway=ssh://gw-backup", "target=other", check=False,
    )  # fmt: skip
    fails_with(proc, "target other is not allowed for this key")


def clone(user: Client, url: str, path: Path) -> Repo:
    subprocess.run(
        ["git", "clone", "-q", url, str(path)], env=user.env, check=True, capture_output=True
    )
    repo = Repo(path, user)
    repo.annex("init", "-q", path.name)
    return repo


@EACH_CLIENT
def test_stock_git_annex_needs_one_forced_key_for_git_and_annex(
    gateway: Gateway, user: Client, tmp_path: Path
) -> None:
    """git clone over ssh, git annex sync, copy and get: git-upload-pack/receive-pack and
    git-annex-shell's configlist/p2pstdio under one forced-command key, no annex-shell
    setting. A read-only key fetches and gets, and its push and copy are refused."""
    branch = f"stock-{user.name}"  # the module's tests share the gateway's repository
    a = clone(user, "gw-alice:archive", tmp_path / "a")
    a.run("git", "checkout", "-q", "-b", branch)
    key = add_file(a, "s.bin", 200_000)
    a.annex("copy", "--to", "origin", "s.bin")
    assert key in objects(gateway.disks["archive"])
    assert "origin" in a.annex("whereis", "s.bin").stdout
    a.annex("sync", "--quiet", "--no-content", "origin")  # git push, through the same key

    b = clone(user, "ssh://gw-reader/~/archive.git", tmp_path / "b")
    b.run("git", "checkout", "-q", branch)
    b.annex("get", "s.bin")
    b.annex("fsck", "-q", "s.bin")
    fails_with(b.run("git", "push", "origin", f"HEAD:refs/heads/{branch}-b", check=False),
               "git push to target archive refused: this key is read-only")  # fmt: skip
    b.write("r.bin", b"written by a reader\n" * 1000)
    b.annex("add", "r.bin")
    # git-annex drops the reason a P2P server gives for refusing a PUT ("Transfer
    # failed"), as with git-annex-shell under GIT_ANNEX_SHELL_READONLY.
    fails_with(b.annex("copy", "--to", "origin", "r.bin", check=False), "failed")
    assert b.lookupkey("r.bin") not in objects(gateway.disks["archive"])

    # The append-only key: uploads and pushes, no drop, no deleted or rewritten branches.
    c = clone(user, "gw-backup:/srv/git/archive.git", tmp_path / "c")
    c.run("git", "checkout", "-q", branch)
    proc = c.annex("drop", "--from", "origin", "--force", "s.bin", check=False)
    fails_with(proc, "append-only" if user.name == "pypi" else "failed")  # old: no reason
    assert key in objects(gateway.disks["archive"])
    fails_with(c.run("git", "push", "origin", f":refs/heads/{branch}", check=False),
               "deletion prohibited")  # fmt: skip
    a.annex("drop", "--from", "origin", "--force", "s.bin")
    assert key not in objects(gateway.disks["archive"])


def test_a_target_without_a_git_repository_says_how_to_make_one(
    gateway: Gateway, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    gateway.client_home(home)
    missing = git_dir(gateway.config, "other").with_name("other-moved.git")
    git_dir(gateway.config, "other").rename(missing)
    try:
        proc = ssh(home, "gw-alice", "git-upload-pack '/other'")
    finally:
        missing.rename(git_dir(gateway.config, "other"))
    assert proc.returncode != 0 and proc.stderr.strip() == (
        "git-annex-remote-proxy: target other has no git repository on this gateway: its "
        f"operator creates it with 'git init --bare {git_dir(gateway.config, 'other')}'"
    )
