"""What speaks git-annex: the external special remote protocol, keys, and the git-annex
branch's logs (location log, remote.log). Below everything but ``shared.errors`` and
``shared.streams``."""
