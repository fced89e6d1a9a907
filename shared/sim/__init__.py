"""The placement simulator (what a node-list change would move) and its plot."""
