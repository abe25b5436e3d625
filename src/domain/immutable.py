"""`immutable`: the decorator of the gateway's value types (a caller, its limits, a job, a usage row...).

`@dataclass(frozen=True)` enforces immutability at run time by setting every field in `__init__` through
`object.__setattr__`, the slowest way Python has to set an attribute, and a request on the hot path makes
a dozen such values: without them a gateway's `/chat` took about 82,000 of its 1,132,000 instructions
fewer (callgrind, the bench's section 12). An `immutable` class is frozen where that is checked, by
`mypy --strict` (which the test command runs): assigning to a field is a type error. At run time it is a
plain slotted dataclass, with the equality and the hash (by its fields) that a frozen one has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

_Record = TypeVar("_Record")


@dataclass_transform(frozen_default=True)
def immutable(cls: type[_Record]) -> type[_Record]:
    """A slotted dataclass that the type checker treats as frozen, hashed by its fields as a frozen one is."""
    return dataclass(slots=True, unsafe_hash=True)(cls)
