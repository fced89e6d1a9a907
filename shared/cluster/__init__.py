"""One remote over many nodes: the external special remote class, the ``Cluster`` (fan-out
of stores, verified reads, presence, removal), placement, and the journal of bad copies."""
