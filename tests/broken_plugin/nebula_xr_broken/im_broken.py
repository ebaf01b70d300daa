"""Fails on import, as a plugin whose dependency is missing does."""

raise RuntimeError("im_broken cannot be imported:\nits dependency is missing")
