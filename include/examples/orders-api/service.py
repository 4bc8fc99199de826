"""The orders API (example): reads the ``note`` column, no longer ``legacy_note``."""

QUERY = "SELECT id, note, status FROM orders WHERE id = %s"
