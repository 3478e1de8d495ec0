"""Headers as text (STOMP) and as bytes (Kafka) give back exactly what was sent."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tidings.transports.textheaders import JSON_HEADERS, from_text, to_bytes, to_text

names = st.one_of(st.text(min_size=1, max_size=12), st.just(JSON_HEADERS))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
headers = st.dictionaries(names, json_values | st.binary(max_size=8), max_size=8)


@given(headers)
def test_the_bytes_form_is_the_text_form_encoded(sent: dict[str, Any]) -> None:
    assert to_bytes(sent) == [(name, value.encode()) for name, value in to_text(sent).items()]


@given(st.dictionaries(st.text(min_size=1, max_size=12).filter(lambda n: n != JSON_HEADERS), json_values))
def test_typed_values_come_back_as_they_were_sent(sent: dict[str, Any]) -> None:
    received = {name: raw.decode() for name, raw in to_bytes(sent)}
    assert from_text(received) == sent


def test_a_string_that_looks_like_a_number_stays_a_string() -> None:
    received = dict(to_bytes({"n": 3, "s": "3"}))
    assert received["s"] == b"3" and from_text({k: v.decode() for k, v in received.items()}) == {
        "n": 3,
        "s": "3",
    }
