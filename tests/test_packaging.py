"""The project installs as a package with working git-annex-remote-cluster and -proxy programs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pip_install_gives_working_program(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    for pkg in ("shared", "git_annex_remote_cluster", "git_annex_remote_proxy"):
        assert (target / pkg / "__init__.py").exists(), pkg
    program = target / "bin" / "git-annex-remote-cluster"
    env = {**os.environ, "PYTHONPATH": str(target)}
    version = subprocess.run(
        [sys.executable, str(program), "--version"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert version.stdout.startswith("git-annex-remote-cluster ")
    # Run by git-annex: each program speaks the protocol and lists every parameter it accepts.
    expected = {
        "git-annex-remote-cluster": {
            "nodes",
            "copies",
            "mincopies",
            "nodeuuids",
            "nodeciphers",
            "force",
        },
        "git-annex-remote-proxy": {"gateway", "target", "gatewaycommand", "nodeuuids"},
    }
    for name, configs in expected.items():
        proto = subprocess.run(
            [sys.executable, str(target / "bin" / name)],
            input="EXTENSIONS INFO\nLISTCONFIGS\n",
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
        )
        lines = proto.stdout.splitlines()
        assert lines[0] == "VERSION 2", name
        assert {ln.split()[1] for ln in lines if ln.startswith("CONFIG ")} == configs, name
        assert lines[-1] == "CONFIGEND", name
    proxy = target / "bin" / "git-annex-remote-proxy"
    usage = subprocess.run(
        [sys.executable, str(proxy), "gateway", "--help"], env=env, capture_output=True, text=True
    )
    assert usage.returncode == 0 and "add" in usage.stdout
