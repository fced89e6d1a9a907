"""The proxy remote and its gateway server (not yet implemented)."""
