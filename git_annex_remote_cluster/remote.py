"""``externaltype=cluster``: the remote class lives in ``shared.cluster_remote``, which the
proxy remote builds on too."""

from shared.cluster_remote import CONFIGS, ClusterRemote

__all__ = ["CONFIGS", "ClusterRemote"]
