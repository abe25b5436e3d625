"""Users as the plans see them: a user exists once it has a key or an assigned plan."""

from __future__ import annotations

from ollama_gate.domain.immutable import immutable


@immutable
class UserRecord:
    user_id: str
    plan: str  # the assigned plan, or the member plan when none is assigned
    keys: int  # active keys
