"""Plugins shipped with nebula-xr; registered through the same entry points as any other."""
