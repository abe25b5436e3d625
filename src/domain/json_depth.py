"""How deeply a JSON document nests, checked before anything decodes it.

JSON decoders recurse once per level: about a thousand `[` (a 2 KB body) exhaust the interpreter's stack.
Tool schemas, message lists and options need a handful of levels; `MAX_JSON_DEPTH` is plenty for them.
"""

from __future__ import annotations

import re

from ollama_gate.domain.errors import InvalidRequest

MAX_JSON_DEPTH = 64

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
# An array or object with no array or object inside: one nesting level, removed per pass.
_INNERMOST = re.compile(rb"\[[^\[\]{}]*\]|\{[^\[\]{}]*\}")


def nesting_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays and objects in `body` nest deeper than `limit` (brackets inside strings do not
    count). Linear in the body per level, and most bodies are decided by counting brackets alone."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    structure = _STRING.sub(b'""', body)
    for _ in range(limit):
        structure, removed = _INNERMOST.subn(b"", structure)
        if not removed:
            break
    else:
        # `limit` levels are gone: anything still nested is one level too deep.
        if _INNERMOST.search(structure) is not None:
            return True
    # What is left never closes. A decoder still recurses into unclosed arrays before it finds the end of
    # the body, so many of them are too deep too; a few are plain malformed JSON, for the decoder to refuse.
    return structure.count(b"[") + structure.count(b"{") > limit


def check_nesting(body: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise InvalidRequest (400) for a body nested deeper than `limit`."""
    if nesting_depth_exceeds(body, limit):
        raise InvalidRequest(f"invalid request: JSON nested deeper than {limit} levels")
