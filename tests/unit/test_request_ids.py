"""Request ids: what a client may choose, and what the gateway makes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ollama_gate.entrypoints.request_ids import MAX_LENGTH, RequestIds, sane_request_id


def test_a_sane_id_is_kept_and_the_first_header_counts() -> None:
    ids = RequestIds("abc")
    headers = [(b"host", b"x"), (b"x-request-id", b"trace-1"), (b"x-request-id", b"trace-2")]
    assert ids.of(headers) == "trace-1"


def test_made_ids_are_a_prefix_per_process_and_a_counter() -> None:
    ids = RequestIds("feed")
    assert [ids.of([]) for _ in range(3)] == ["feed-1", "feed-2", "feed-3"]
    first, second = RequestIds(), RequestIds()
    assert first.make().rsplit("-", 1)[0] != second.make().rsplit("-", 1)[0]


def test_an_unusable_first_id_is_replaced_not_looked_past() -> None:
    ids = RequestIds("p")
    assert ids.of([(b"x-request-id", b"bad id"), (b"x-request-id", b"good")]) == "p-1"


@given(st.binary(max_size=300))
def test_whatever_a_client_sends_the_id_is_sane(sent: bytes) -> None:
    request_id = RequestIds("p").of([(b"x-request-id", sent)])

    assert sane_request_id(request_id.encode())
    assert 1 <= len(request_id) <= MAX_LENGTH
    assert (request_id == sent.decode("latin-1")) == sane_request_id(sent)
