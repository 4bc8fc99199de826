"""Operators orchestrate: they read what earlier tasks recorded, call a hook and the
core, and keep ``execute()`` short. Waits are deferred to triggers."""
