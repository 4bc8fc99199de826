"""Hooks own connections and all I/O."""
