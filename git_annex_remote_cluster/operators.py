"""The operators' commands: ``nodes add|set|remove|list|import|export`` and ``status``.

They act on a cluster remote of the repository in the current directory. The node
list lives in the remote's configuration in the git-annex branch; changes go
through ``git annex enableremote REMOTE nodes=...``, which checks the new nodes
(the remote's own initremote step) before anything is written, and every clone
picks the change up on its next ``git annex sync``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.annex.remotelog import UsedConfig, describe_uuid, used_remote_config
from shared.cluster.remote import with_recorded
from shared.errors import ConfigError
from shared.nodes.owner import Ownership
from shared.nodes.url import NodeSpec, format_node_list, parse_node_list
from shared.ops import status
from shared.ops.nodecli import check_empty, check_owners, edit, report, takes_over

PROG = "git-annex-remote-cluster"


@dataclass
class ClusterConfig:
    """A cluster remote as git-annex uses it in this clone: the configuration the
    clone accepted (``git annex verifyremote``), which need not be the newest in the
    git-annex branch (``used`` says)."""

    name: str
    uuid: str
    config: dict[str, str]
    used: UsedConfig | None = None

    @classmethod
    def load(cls, name: str, cwd: Path | None = None) -> ClusterConfig:
        used = used_remote_config(name, cwd)
        config = used.config
        if config.get("type") != "external" or config.get("externaltype") != "cluster":
            raise ConfigError(
                f"remote {name} is not a cluster remote (type={config.get('type')}, "
                f"externaltype={config.get('externaltype', '-')})"
            )
        return cls(name, used.uuid, config, used)

    # -- a configuration this clone has not accepted --------------------------------

    def pending_note(self) -> str | None:
        """One line for a clone whose accepted configuration is not the newest, or that
        accepted none; None when git-annex uses the newest."""
        used = self.used
        if used is None or not used.pending:
            return None
        how = (
            f"check it with git annex verifyremote {self.name}, and accept it with the "
            "--safe ID that command shows"
        )
        if used.newer is not None:
            return (
                f"{self.name}: this clone uses the configuration it accepted; a newer one "
                f"({describe_change(used.config, used.newer)}) is not accepted here yet: {how}"
            )
        return (
            f"{self.name}: this clone has not accepted the remote's configuration, so "
            f"git-annex sends nothing to it (shown: the newest): {how}"
        )

    def say_pending(self) -> None:
        """The note on stderr (stdout may be a --json document)."""
        note = self.pending_note()
        if note is not None:
            print(f"{PROG}: {note}", file=sys.stderr)

    def refuse_pending(self, doing: str, consequence: str | None = None) -> None:
        """Refuse ``doing`` while the clone has a configuration to accept: what writes
        the node list, or moves content by it, must not act on an old one (saying
        ``consequence``). Without ``consequence``, refuse only while the clone accepted
        none: git-annex itself sends nothing to such a remote."""
        used = self.used
        if used is None or not used.pending or (consequence is None and used.accepted):
            return
        then = (
            f"check it with git annex verifyremote {self.name}, accept it with the --safe ID "
            "that command shows, then run this again"
        )
        if used.newer is not None:
            raise ConfigError(
                f"cannot {doing}: this clone has not accepted the newer configuration of "
                f"{self.name} ({describe_change(used.config, used.newer)}), and {consequence}; "
                f"{then}"
            )
        raise ConfigError(
            f"cannot {doing}: this clone has not accepted the configuration of {self.name} "
            f"yet (git-annex sends nothing to it until then); {then}"
        )

    @property
    def specs(self) -> list[NodeSpec]:
        return parse_node_list(self.config.get("nodes", ""))

    def open_specs(self) -> list[NodeSpec]:
        """The nodes as the remote opens them: with recorded UUIDs and ciphers."""
        return with_recorded(
            self.specs, self.config.get("nodeuuids", ""), self.config.get("nodeciphers", "")
        )

    def ownership(self) -> Ownership:
        """The remote as the owner of its nodes, as the commands name it to operators."""
        return Ownership(
            self.uuid,
            describe=describe_uuid,
            remedy=f"give {self.name} storage of its own, or take the node over with --force "
            "on a command that writes the node list (nodes add|set|import), or with git annex "
            f"enableremote {self.name} force=yes (that remote can then no longer write or "
            "remove there)",
        )

    def write_nodes(
        self, specs: list[NodeSpec], cwd: Path | None = None, take_over: bool = False
    ) -> None:
        """``git annex enableremote``: the remote checks every node before it is written
        (``take_over``: with ``force=yes``, taking over nodes another remote owns)."""
        force = ["force=yes"] if take_over else []
        proc = subprocess.run(
            ["git", "annex", "enableremote", self.name, f"nodes={format_node_list(specs)}", *force],
            cwd=cwd,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            why = refusal_reason(proc.stderr, proc.stdout, proc.returncode)
            raise ConfigError(f"git annex enableremote {self.name} refused the change: {why}")


# What git-annex prints around a failure, which says nothing of its reason: the
# command's own line, its verdict, and the summary ("enableremote: 1 failed").
_NOISE = re.compile(
    r"(enableremote\b.*|failed|ok|\(recording state in git\.\.\.\)|\w+: \d+ failed)"
)


def refusal_reason(stderr: str, stdout: str, code: int) -> str:
    """git-annex's reason for a failed command, on one line: its messages on stderr
    (``git-annex: REASON``, the remote's or its own, such as ``Unexpected
    parameters``), else what it said between the command's line and ``failed``."""
    for text in (stderr, stdout):
        lines = [ln.strip() for ln in text.splitlines()]
        reasons = [
            ln.removeprefix("git-annex: ") for ln in lines if ln and not _NOISE.fullmatch(ln)
        ]
        if reasons:
            return "; ".join(dict.fromkeys(reasons))
    return f"git-annex gave no reason (exit status {code})"


def describe_change(old: dict[str, str], new: dict[str, str]) -> str:
    """What a newer configuration changes, in a few words: ``node n4 added, copies 2 -> 3``."""
    try:
        before = {s.name: s for s in parse_node_list(old.get("nodes", ""))}
        after = {s.name: s for s in parse_node_list(new.get("nodes", ""))}
    except ConfigError:
        before = after = {}
    parts = []
    for what, names in (
        ("added", [n for n in after if n not in before]),
        ("removed", [n for n in before if n not in after]),
        ("changed", [n for n in after if n in before and after[n] != before[n]]),
    ):
        if names:
            parts.append(f"node{'s' if len(names) > 1 else ''} {', '.join(names)} {what}")
    quiet = {"nodes", "nodeuuids", "nodeciphers", "cipher", "cipherkeys", "pubkeys", "timestamp"}
    for k in sorted((set(old) | set(new)) - quiet):
        if old.get(k) != new.get(k):
            parts.append(f"{k} {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}")
    return ", ".join(parts) or "recorded node details changed"


_EDITS = ("add", "set", "remove", "import")


def cmd_nodes(args: Any) -> int:
    config = ClusterConfig.load(args.remote)
    if args.action in _EDITS:
        config.refuse_pending(
            f"change the node list of {config.name}",
            "the change would be made to the old one, undoing the newer",
        )
    else:
        config.say_pending()

    def empty(name: str) -> None:
        spec = next(s for s in config.open_specs() if s.name == name)
        check_empty(spec, config.uuid, f"nodes set {config.name} {name} state=drain")

    result = edit(args, config.specs, empty)
    if result is None:
        return 0
    new, what = result
    take_over = takes_over(args)
    if not take_over:  # (enableremote refuses them too, but would suggest force=yes)
        check_owners(new, config.ownership())
    config.write_nodes(new, take_over=take_over)
    report(args, config.name, f"{what}; other clones get the change with git annex sync", new)
    return 0


# -- status ---------------------------------------------------------------------


def cmd_status(args: Any) -> int:
    """Each node's health and the keys' (``shared.ops.status``); 1 unless all is well."""
    config = ClusterConfig.load(args.remote)
    config.say_pending()
    specs = config.open_specs()
    shown = status.Shown(
        kind="remote",
        name=config.name,
        specs=specs,
        uuid=config.uuid,
        copies=int(config.config.get("copies") or len(specs)),
        command="git-annex-remote-cluster",
        describe=describe_uuid,
    )
    from git_annex_remote_cluster.maintain import key_health  # (it builds on this module)

    ok, data = status.report(shown, lambda: key_health(config), args.json)
    if args.json:
        status.print_json(data)
    return 0 if ok else 1
