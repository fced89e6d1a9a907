"""``rebalance``, ``repair`` and ``fsck``: keeping a cluster healthy over time.

The same commands serve a cluster remote (``git-annex-remote-cluster rebalance
REMOTE``) and a gateway's target (``git-annex-remote-proxy gateway rebalance
TARGET``); each program says what its subject is (``Subject``). All three start
from an inventory of what every node holds (``shared.ops.inventory``) and act on the
nodes directly; the git-annex branch does not change, since the cluster as a whole
holds the same keys before and after.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.annex.keys import Key
from shared.cluster.badcopies import BadCopies
from shared.cluster.core import error_line
from shared.errors import ClusterError, ConfigError, NotOwner
from shared.nodes import Node
from shared.nodes.base import KnownKeys
from shared.nodes.owner import plain
from shared.nodes.url import NodeSpec, NodeState
from shared.ops.inventory import Inventory, take_inventory
from shared.ops.mover import CheckResult, Mover, MoveResult, check_copy
from shared.ops.nodecli import human_size, table
from shared.ops.plan import Plan, make_plan
from shared.ops.progress import Progress

DEFAULT_JOBS = 2


def add_parsers(sub: Any, subject: str) -> None:
    """The three commands, each taking ``subject`` (remote or target) as argument."""
    r = sub.add_parser(
        "rebalance",
        help="move keys to the nodes placement picks today (shows the plan; --apply moves)",
        description="Compute where every key should be under the current node list "
        "(weights, zones, states, maxsize) and show the moves. With --apply, copy each key "
        "to its new nodes, verify it, and only then remove it from the nodes that should no "
        "longer hold it; never fewer than copies= copies at any moment. Safe to interrupt; "
        "run it again to continue.",
    )
    r.add_argument(subject)
    r.add_argument("--apply", action="store_true", help="carry out the plan")
    r.add_argument("--dry-run", action="store_true", help="only show the plan (the default)")
    _common(r)

    p = sub.add_parser(
        "repair",
        help="give keys with fewer than copies= copies their missing copies",
        description="Find keys held by fewer than copies= reachable nodes (a node was lost, "
        "emptied, or is unreachable) and copy them, verified, to the nodes placement picks.",
    )
    p.add_argument(subject)
    p.add_argument("--dry-run", action="store_true", help="only show what would be copied")
    _common(p)

    f = sub.add_parser(
        "fsck",
        help="check the content on the nodes against the keys' hashes",
        description="Read every copy (or a --sample of keys) from every node holding it and "
        "check it against the key's hash and size. --repair replaces bad copies with a good one.",
    )
    f.add_argument(subject)
    f.add_argument(
        "--sample", metavar="N|P%", help="check N keys (or P percent of them), picked at random"
    )
    f.add_argument("--seed", type=int, help="random seed for --sample (repeatable picks)")
    f.add_argument("--repair", action="store_true", help="replace corrupt or missing copies")
    _common(f)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument(
        "--jobs",
        "-J",
        type=int,
        default=DEFAULT_JOBS,
        help=f"keys at once (default {DEFAULT_JOBS})",
    )


Logged = Callable[[], Iterable[tuple[Key, list[Key]]]]
Sized = Callable[[], Iterable[tuple[Key, int]]]


@dataclass
class Subject:
    """What the commands act on, as a program opened it.

    ``known``: the keys of the repository (encrypted nodes are listed by matching
    them), None where there is no repository (a gateway: such nodes stay unlisted).
    ``logged``: the keys git-annex believes the subject holds, each with the keys it
    was stored as (chunks, HMAC names), for fsck's lost keys.
    ``sized``: (stored name, size) for names that do not say their size (HMAC names),
    from the repository's keys; None where there is none (sizes are then learned
    from the nodes as keys are copied).
    ``command``: how users run the commands (``git-annex-remote-cluster``)."""

    name: str
    specs: list[NodeSpec]
    nodes: dict[str, Node]
    copies: int
    command: str
    known: KnownKeys | None = None
    logged: Logged | None = None
    sized: Sized | None = None
    mincopies: int | None = None
    bad: BadCopies | None = None  # the bad copies reads found (shared.cluster.badcopies)
    claiming: bool = False  # the command writes: unowned nodes are claimed first
    owner: str | None = None  # the subject's UUID: nodes another owns are left alone
    describe: Callable[[str], str] = plain  # how to name another owner (its remote)
    _foreign: dict[str, str] | None = field(default=None, init=False, repr=False)

    def foreign(self) -> dict[str, str]:
        """Nodes whose storage records another owner (``shared.nodes.owner``): name ->
        why. The commands list nothing there and move nothing to, from or on them:
        their objects are another remote's. Asked once; a node that cannot be asked is
        left to the listing, which reports it."""
        if self._foreign is None:
            self._foreign = {}
            if self.owner is not None:
                marked = [n for n in self.nodes.values() if n.records_owner]
                with ThreadPoolExecutor(max_workers=max(1, len(marked))) as pool:
                    for node, why in zip(marked, pool.map(self._stranger, marked), strict=True):
                        if why is not None:
                            self._foreign[node.name] = why
        return self._foreign

    def _stranger(self, node: Node) -> str | None:
        try:
            owner = node.owner()
            if owner is None and self.claiming and self.owner is not None:
                # Storage from before markers, about to be written: claimed before it
                # is listed, so that a remote sharing it by mistake that claims it
                # first keeps its objects (this command then leaves the node alone).
                owner = node.claim(self.owner)
        except NotOwner as e:
            return error_line(e).removeprefix(f"node {node.name}: ")
        except ClusterError:
            return None
        if owner is None or owner == self.owner:
            return None  # ours, or claimed by the first write (storage from before markers)
        return f"belongs to {self.describe(owner)}, not to {self.name}"

    def inventory(self, without_bad: bool = False) -> Inventory:
        """What every node holds. ``without_bad``: copies a read noted as bad are not
        holders (``rebalance`` and ``repair`` must neither count them as copies nor
        copy from them; ``fsck`` checks them)."""

        def listed(name: str, count: int) -> None:
            if count and count % 100000 == 0:
                print(f"listing {name}: {count} keys so far", file=sys.stderr)

        foreign = self.foreign()
        nodes = [n for n in self.nodes.values() if n.name not in foreign]
        inv = take_inventory(nodes, self.known, listed=listed)
        inv.unlisted.update(foreign)  # never empty, never a holder, never a target
        if self.sized is not None:
            inv.fill_sizes(self.sized())
        if without_bad and self.bad is not None:
            for (node, key), _why in self.bad.entries().items():
                if key in inv.holders and node in inv.names:
                    inv.holders[key] &= ~inv.bit(node)
        return inv


def writes(command: str, args: Any) -> bool:
    """Whether the command, as asked, writes to the nodes (not only reads them)."""
    return bool(
        (command == "rebalance" and args.apply and not args.dry_run)
        or (command == "repair" and not args.dry_run)
        or (command == "fsck" and args.repair)
    )


def run(command: str, args: Any, subject: Subject) -> int:
    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: give at least 1")
    subject.claiming = writes(command, args)
    if command == "rebalance":
        return _rebalance(args, subject)
    if command == "repair":
        return _repair(args, subject)
    return _fsck(args, subject)


def _emit(args: Any, data: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(data, indent=2))


# -- rebalance and repair ---------------------------------------------------------


def _rebalance(args: Any, c: Subject) -> int:
    inv = c.inventory(without_bad=True)
    foreign = c.foreign()
    if foreign:
        which = "; ".join(f"node {name} {why}" for name, why in foreign.items())
        first = next(iter(foreign))
        raise ClusterError(
            f"cannot rebalance {c.name}: {which}. Nothing is moved to, from or on another "
            f"remote's node (its objects are not {c.name}'s): remove the node from the list "
            f"({c.command} nodes remove {c.name} {first}), or take it over (see 'One owner "
            "per node' in docs/operators.md)"
        )
    if inv.unlisted:
        which = "; ".join(f"node {n}: {why}" for n, why in inv.unlisted.items())
        raise ClusterError(
            f"cannot rebalance {c.name}: not every node could be listed ({which}). Bring it "
            f"back, or run '{c.command} repair {c.name}' to copy its keys "
            "elsewhere first"
        )
    plan = make_plan(c.specs, c.copies, inv)
    apply = args.apply and not args.dry_run
    return _report_and_apply(args, c, inv, plan, "rebalance", apply)


def _repair(args: Any, c: Subject) -> int:
    inv = c.inventory(without_bad=True)
    plan = make_plan(c.specs, c.copies, inv, repair_only=True, unusable=inv.unlisted)
    return _report_and_apply(args, c, inv, plan, "repair", not args.dry_run)


def _report_and_apply(
    args: Any, c: Subject, inv: Inventory, plan: Plan, what: str, apply: bool
) -> int:
    out: dict[str, Any] = {
        "name": c.name,
        "command": what,
        "copies": c.copies,
        "keys": plan.keys,
        "unlisted": inv.unlisted,
        "asked_key_by_key": inv.asked,
        "plan": _plan_json(plan),
        "applied": apply,
    }
    if not args.json:
        _print_plan(c, inv, plan, what)
    if not apply or not plan.moves:
        if not args.json and plan.moves:
            flag = " --apply" if what == "rebalance" else ""
            print(f"nothing moved; run '{c.command} {what} {c.name}{flag}' to do it")
        _emit(args, out)
        return 0 if not plan.short else 1
    progress = Progress(what, len(plan.moves), plan.bytes_to_copy)
    mover = Mover(c.nodes, c.copies, progress, bad=c.bad)
    results, finished = mover.run(plan.moves, jobs=args.jobs)
    progress.finish()
    summary = _summarise(results)
    out["result"] = {**summary, "finished": finished}
    left = {s.name: n for s in c.specs if s.state is NodeState.DRAIN if (n := _left_on(c, s))}
    out["result"]["left_on_draining_nodes"] = left
    if not args.json:
        _print_result(c, plan, summary, finished, left, what)
    _emit(args, out)
    if not finished:
        return 130
    return 1 if summary["failed"] or plan.short else 0


def _left_on(c: Subject, spec: NodeSpec) -> int:
    """Keys still on a draining node after the run (asked again, not assumed)."""
    try:
        return sum(1 for _ in c.nodes[spec.name].list_keys(c.known))
    except ClusterError:
        return 0


def _plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "keys_to_move": len(plan.moves),
        "copies_to_add": plan.copies_to_add,
        "bytes_to_copy": plan.bytes_to_copy,
        "copies_of_unknown_size": plan.copies_of_unknown_size,
        "copies_to_remove": plan.copies_to_remove,
        "keys_short_of_copies": len(plan.short),
        "nodes": {name: asdict(t) for name, t in plan.nodes.items()},
    }


def _print_plan(c: Subject, inv: Inventory, plan: Plan, what: str) -> None:
    for name, why in inv.unlisted.items():
        if name in c.foreign():
            print(f"node {name} is left alone: it {why}")
        else:
            print(f"node {name} could not be listed: {why}")
    for name in inv.asked:
        print(f"node {name} cannot list its keys: each known key was asked for instead")
    rows = [("NODE", "STATE", "KEYS", "+KEYS", "+BYTES", "-KEYS", "-BYTES", "KEYS AFTER")]
    for spec in c.specs:
        t = plan.nodes[spec.name]
        listed = spec.name not in inv.unlisted
        rows.append(
            (
                spec.name,
                spec.state.value if listed else "unlisted",
                str(t.held) if listed else "?",
                str(t.keys_in),
                human_size(t.bytes_in),
                str(t.keys_out),
                human_size(t.bytes_out),
                str(t.held_after) if listed else "?",
            )
        )
    table(rows)
    unknown = plan.copies_of_unknown_size
    sized = f", {unknown} of them of a size only their node can tell" if unknown else ""
    print(
        f"{what} {c.name}: {plan.keys} keys, copies={c.copies}; {len(plan.moves)} to move: "
        f"{plan.copies_to_add} copies to add ({human_size(plan.bytes_to_copy)}{sized}), "
        f"{plan.copies_to_remove} to remove"
    )
    for spec in c.specs:
        left = plan.nodes[spec.name].held_after
        if spec.state is NodeState.DRAIN and left and spec.name not in inv.unlisted:
            print(
                f"node {spec.name} (drain) will still hold {left} key(s): the other nodes "
                f"cannot take copies={c.copies} copies of them (add nodes, or lower copies)"
            )
    if plan.short:
        print(f"{len(plan.short)} key(s) will stay short of copies={c.copies}, e.g.:")
        for key, why in list(plan.short.items())[:5]:
            print(f"  {key}: {why}")


def _summarise(results: list[MoveResult]) -> dict[str, Any]:
    failed = {r.key: r.failed for r in results if r.failed}
    kept = {r.key: r.kept for r in results if r.kept}
    return {
        "keys_done": len(results),
        "copies_added": sum(len(r.added) for r in results),
        "copies_removed": sum(len(r.removed) for r in results),
        "failed": failed,
        "kept": kept,
    }


def _print_result(
    c: Subject,
    plan: Plan,
    summary: dict[str, Any],
    finished: bool,
    left: dict[str, int],
    what: str,
) -> None:
    for key, failures in list(summary["failed"].items())[:20]:
        for node, why in failures.items():
            print(f"{key}: node {node}: {why}")
    for key, kept in list(summary["kept"].items())[:20]:
        for node, why in kept.items():
            print(f"{key}: kept on {node}: {why}")
    print(
        f"{what} {c.name}: {summary['keys_done']} of {len(plan.moves)} keys done, "
        f"{summary['copies_added']} copies added, {summary['copies_removed']} removed, "
        f"{len(summary['failed'])} key(s) with failures"
    )
    for name, count in left.items():
        print(f"node {name} (drain) still holds {count} key(s); run {what} again once it can")
    if not finished:
        print(
            "interrupted: no copy was lost, and nothing half-written is visible; run the "
            "same command again to continue",
            file=sys.stderr,
        )


# -- fsck -------------------------------------------------------------------------


def _sample(keys: list[str], spec: str | None, seed: int | None) -> list[str]:
    if not spec:
        return keys
    try:
        pct = spec.endswith("%")
        count = round(len(keys) * float(spec[:-1]) / 100) if pct else int(spec)
    except ValueError as e:
        raise ConfigError(f"--sample {spec}: give a number of keys or a percentage (5%)") from e
    if count < 0:
        raise ConfigError(f"--sample {spec}: must not be negative")
    return sorted(random.Random(seed).sample(keys, min(count, len(keys))))


def _fsck(args: Any, c: Subject) -> int:
    inv = c.inventory()
    keys = _sample(sorted(inv.key_texts()), args.sample, args.seed)
    pairs = [(k, n) for k in keys for n in inv.holders_of(k)]
    sizes = {k: inv.size_of(k) for k in keys}
    total = sum(sizes[k] or 0 for k, _ in pairs)
    progress = Progress("fsck", len(pairs), total, unit="copies")

    def check(pair: tuple[str, str]) -> CheckResult:
        key, node = pair
        result = check_copy(Key.parse(key), c.nodes[node], progress, counted=sizes[key] or 0)
        progress.key_done()
        return result

    with ThreadPoolExecutor(max_workers=args.jobs, thread_name_prefix="fsck") as pool:
        results = list(pool.map(check, pairs))
    progress.finish()
    bad = [r for r in results if r.status != "ok"]
    repaired: dict[str, dict[str, str]] = {}
    if args.repair and bad:
        repaired = _fsck_repair(c, results)
    short = {k: n for k, mask in inv.holders.items() if (n := mask.bit_count()) < c.copies}
    noted = _settle_bad_copies(c, results, repaired)
    lost = _lost(c, inv)
    counts = {s: sum(1 for r in results if r.status == s) for s in _STATUSES}
    out = {
        "name": c.name,
        "keys": len(keys),
        "sampled": bool(args.sample),
        "copies_checked": len(results),
        "size_only": sum(1 for r in results if r.status == "ok" and not r.hash_checked),
        "counts": counts,
        "problems": [asdict(r) for r in bad],
        "repaired": repaired,
        "unlisted": inv.unlisted,
        "short_of_copies": short,
        "bad_copies_noted": noted,
        "lost": lost,
    }
    if args.json:
        _emit(args, out)
    else:
        for name, why in inv.unlisted.items():
            if name in c.foreign():
                print(f"node {name} not checked: it {why}")
            else:
                print(f"node {name} could not be listed (not checked): {why}")
        for r in bad:
            fix = repaired.get(r.key, {}).get(r.node)
            print(f"{r.key} on {r.node}: {r.status}: {r.detail}" + (f"; {fix}" if fix else ""))
        for key, n in list(short.items())[:20]:
            print(f"{key}: {n} of {c.copies} copies (run {c.command} repair {c.name})")
        for entry in noted[:20]:
            print(
                f"{entry['key']} on {entry['node']}: a read found a bad copy ({entry['why']}); "
                f"not checked this time (run {c.command} fsck {c.name} --repair)"
            )
        for key in lost[:20]:
            print(
                f"{key}: the git-annex branch says {c.name} has it, but no node does "
                f"(git annex fsck --from {c.name} --fast corrects the branch)"
            )
        print(
            f"fsck {c.name}: {len(keys)} keys, {len(results)} copies checked: "
            + ", ".join(f"{n} {s}" for s, n in counts.items())
            + (f" ({out['size_only']} by size only: no hash to check)" if out["size_only"] else "")
        )
    unresolved = [
        r for r in bad if not repaired.get(r.key, {}).get(r.node, "").startswith("repaired")
    ]
    return 1 if unresolved or short or lost or inv.unlisted or noted else 0


def _settle_bad_copies(
    c: Subject, results: list[CheckResult], repaired: dict[str, dict[str, str]]
) -> list[dict[str, str]]:
    """Bring the bad copies reads noted up to date with what fsck found (good or
    repaired copies are no longer bad; corrupt ones are noted); return those fsck did
    not check (a --sample, an unlisted node) for the report."""
    if c.bad is None:
        return []
    for r in results:
        key = Key.parse(r.key)
        fixed = repaired.get(r.key, {}).get(r.node, "").startswith("repaired")
        if r.status == "ok" or fixed:
            c.bad.forget(key, [r.node])
        elif r.status == "corrupt":
            c.bad.note(key, r.node, r.detail)
    checked = {(r.node, r.key) for r in results}
    return [
        {"key": k, "node": n, "why": why}
        for (n, k), why in sorted(c.bad.entries().items())
        if (n, k) not in checked and n in c.nodes
    ]


def key_health(c: Subject) -> dict[str, Any]:
    """What ``status`` says of the keys: how many, how many short of ``copies`` or of
    ``mincopies`` (from one listing of every node; a bad copy is no copy), and the bad
    copies reads noted."""
    inv = c.inventory(without_bad=True)
    mincopies = c.mincopies or c.copies
    copies = Counter(mask.bit_count() for mask in inv.holders.values())  # copies -> keys
    noted = c.bad.entries() if c.bad is not None else {}
    return {
        "keys": len(inv.holders),
        "short_of_copies": sum(k for n, k in copies.items() if n < c.copies),
        "short_of_mincopies": sum(k for n, k in copies.items() if n < mincopies),
        "bad_copies_noted": [
            {"key": k, "node": n, "why": why} for (n, k), why in sorted(noted.items())
        ],
        "unlisted": inv.unlisted,
    }


_STATUSES = ("ok", "corrupt", "missing", "unreadable")


def _fsck_repair(c: Subject, results: list[CheckResult]) -> dict[str, dict[str, str]]:
    """Replace each bad copy with one copied (verified) from a good one: the bad copy
    is removed first (it is no copy), so a failed replacement loses nothing good."""
    good: dict[str, list[str]] = {}
    for r in results:
        if r.status == "ok":
            good.setdefault(r.key, []).append(r.node)
    states = {s.name: s.state for s in c.specs}
    mover = Mover(c.nodes, c.copies, bad=c.bad)
    out: dict[str, dict[str, str]] = {}
    for r in results:
        if r.status not in ("corrupt", "missing"):
            continue
        note = out.setdefault(r.key, {})
        sources = good.get(r.key, [])
        if not sources:
            note[r.node] = "not repaired: no good copy on any node"
            continue
        if states[r.node] is NodeState.READONLY:
            note[r.node] = "not repaired: the node is readonly"
            continue
        key = Key.parse(r.key)
        try:
            c.nodes[r.node].remove(key)
            mover.copy(key, sources, r.node)
            note[r.node] = f"repaired from {sources[0]}"
        except ClusterError as e:
            note[r.node] = f"repair failed: {' '.join(str(e).split())}"
    return out


def _lost(c: Subject, inv: Inventory) -> list[str]:
    """Keys the branch says the remote has that no node holds; only when every node
    was listed (otherwise they may be on the missing node)."""
    if inv.unlisted or c.logged is None:
        return []
    return sorted(
        str(key)
        for key, stored in c.logged()
        if stored and any(str(s) not in inv.holders for s in stored)
    )
