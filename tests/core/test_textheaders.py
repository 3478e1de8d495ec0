"""Headers as text (STOMP) and as bytes (Kafka) give back exactly what was sent."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.textheaders import JSON_HEADERS, from_text, to_bytes, to_text

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


# -- what other clients may put on a record or frame: never an exception, at worst plain text ------

HOSTILE_HEADERS = [
    {"x-tidings-json-headers": "[{}]"},
    {"x-tidings-json-headers": '[["a"]]', "a": "1"},
    {"x-tidings-json-headers": '["x-tidings-cc"]', "x-tidings-cc": "5"},
    {"x-tidings-json-headers": '["x-tidings-attempts"]', "x-tidings-attempts": '"²"'},
    {"x-tidings-attempts": "²"},
    {"x-delivery-count": "²"},
    {"x-delivery-count": "9" * 40},
    {"timestamp": "99999999999999"},
    {"timestamp": "9" * 40},
    {"priority": "²"},
    {"priority": "99999"},
]


@pytest.mark.parametrize("headers", HOSTILE_HEADERS)
def test_a_stomp_frame_with_odd_headers_is_still_a_message(headers: dict[str, str]) -> None:
    from tidings.transports.stomp.frames import received

    message, attempt, _ = received({"destination": "/queue/q", **headers}, b"{}", dead_letters=False)
    assert attempt >= 1 and message.body == b"{}"


@pytest.mark.parametrize("headers", HOSTILE_HEADERS)
@pytest.mark.parametrize("timestamp_ms", [0, 2**62, -(2**62)])
def test_a_kafka_record_with_odd_headers_is_still_a_message(
    headers: dict[str, str], timestamp_ms: int
) -> None:
    from tidings.transports.kafka.records import from_record

    message, _ = from_record([(k, v.encode()) for k, v in headers.items()], b"{}", timestamp_ms)
    assert message.body == b"{}" and all(isinstance(key, str) for key in message.cc)


SCALARS = (str, int, float, bool, type(None))


@given(st.dictionaries(st.text(min_size=1, max_size=12).filter(lambda n: n != "own-list"), json_values))
def test_kept_types_stay_and_the_rest_come_back_from_a_list_of_its_own(sent: dict[str, Any]) -> None:
    """As the fedora-messaging format keeps JSON scalars and lists structured headers under its
    own name: what is kept is untouched, what is written as JSON comes back as it was."""
    text = to_text(sent, kept=SCALARS, list_header="own-list")
    structured = [name for name, value in sent.items() if isinstance(value, list | dict)]
    assert {n: v for n, v in text.items() if n in sent and n not in structured} == {
        n: v for n, v in sent.items() if n not in structured
    }
    assert all(isinstance(text[name], str) for name in structured)
    assert ("own-list" in text) == bool(structured) and JSON_HEADERS not in text
    assert from_text(text, "own-list") == sent
