"""What operators run, above the cluster: node-list editing and its CLI, inventories of
what nodes hold, plans and moves (rebalance, repair, fsck), status, progress."""
