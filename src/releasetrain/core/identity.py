"""Who is who: identity by user id, names for display only.

Airflow's auth managers identify users by id (``user.get_id()``: the name in the
SimpleAuthManager, a number in FAB, a UUID in Keycloak) and HITL requests are assigned and
answered by id. A DAG run, though, only knows its triggering user's *name*. The people
directory (``users:`` in the groups file, ``<id>: <name>``) links the two; without an entry,
a user's id is taken to be its name (the SimpleAuthManager's rule).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Directory:
    """``names``: user id -> display name."""

    names: Mapping[str, str] = field(default_factory=dict)

    def name_of(self, user_id: str) -> str:
        return self.names.get(user_id, user_id)

    def id_of(self, name: str | None) -> str | None:
        """The id of the user called ``name`` (``name`` itself when the directory does not know it)."""
        if not name:
            return None
        matches = [uid for uid, known in self.names.items() if known == name]
        return matches[0] if len(matches) == 1 else name

    def assigned(self, user_ids: Iterable[str]) -> list[dict[str, str]]:
        """HITL ``assigned_users``: by id, with the name for display."""
        return [{"id": uid, "name": self.name_of(uid)} for uid in user_ids]
