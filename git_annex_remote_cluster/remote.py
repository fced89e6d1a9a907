"""``externaltype=cluster``: the remote class lives in ``shared.cluster.remote``, which the
proxy remote builds on too. This program's class adds what to do when a node is
down, in the words of its own commands."""

from __future__ import annotations

from annexremote import RemoteError

from shared.cluster.core import PresenceUnknown, StoreFailed
from shared.cluster.remote import CONFIGS
from shared.cluster.remote import ClusterRemote as _ClusterRemote

__all__ = ["CONFIGS", "ClusterRemote"]


class ClusterRemote(_ClusterRemote):
    def checkpresent(self, key: str) -> bool:
        try:
            return super().checkpresent(key)
        except RemoteError as e:
            if not isinstance(e.__cause__, PresenceUnknown):
                raise
            raise RemoteError(f"{e}; {self._down_hint(e.__cause__.unreachable)}") from e.__cause__

    def transfer_store(self, key: str, local_file: str) -> None:
        try:
            super().transfer_store(key, local_file)
        except RemoteError as e:
            if not isinstance(e.__cause__, StoreFailed) or not e.__cause__.outcome.failed:
                raise
            raise RemoteError(f"{e}; {self._short_hint(e.__cause__)}") from e.__cause__

    def _down_hint(self, down: list[str]) -> str:
        """What to do when a key is on none of the reachable nodes and some node could
        not be asked: git-annex must not be told "absent" (it would store again where
        the key may be) nor "present". ``copy --fast`` skips the question and stores
        on the reachable nodes, which succeeds only when ``mincopies`` of them take it."""
        cluster, name = self.cluster, self._remote_name()
        takers = [
            n
            for n in cluster.nodes
            if n.name not in down and n.spec.state.takes_new_data and n.spec.weight > 0
        ]
        which = f"node{'s' if len(down) > 1 else ''} {', '.join(down) or 'it could not check'}"
        if len(takers) >= cluster.mincopies:
            return (
                f"bring {which} back and run this again, or store on the reachable nodes "
                f"now with git annex copy --fast --to {name} (it needs mincopies="
                f"{cluster.mincopies} of them; git-annex-remote-cluster repair {name} gives "
                f"{which} its copies once it is back)"
            )
        lower = (
            f"; git annex enableremote {name} mincopies={len(takers)} lowers it" if takers else ""
        )
        return (
            f"bring {which} back and run this again (git annex copy --fast would fail too: "
            f"a store needs mincopies={cluster.mincopies} nodes that take new data, and "
            f"{len(takers)} can be reached{lower})"
        )

    def _short_hint(self, failed: StoreFailed) -> str:
        """What to do when fewer than ``mincopies`` nodes took a key."""
        name, outcome = self._remote_name(), failed.outcome
        nodes = list(outcome.failed)
        which = f"node{'s' if len(nodes) > 1 else ''} {', '.join(nodes)}"
        lower = (
            f", or lower mincopies with git annex enableremote {name} mincopies="
            f"{outcome.copies} (git-annex-remote-cluster repair {name} gives {which} "
            "its copies later)"
            if outcome.copies
            else ""
        )
        return f"fix {which} and run this again{lower}"
