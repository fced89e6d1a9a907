"""Library shared by the cluster remote and the proxy: keys, protocols, nodes, placement."""
