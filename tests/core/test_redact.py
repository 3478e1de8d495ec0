"""The one masking function: a password in a URL, or a secret query value, never survives it."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.redact import RedactingFilter, mask_url, redact

SAFE = st.text(alphabet=st.characters(codec="ascii", categories=("L", "N")), min_size=1, max_size=12)
#: what a password may hold unencoded in a URL (the path, query and fragment marks cannot)
UNSAFE_IN_URL = "/?#@\"' <>"
PASSWORDS = st.text(
    alphabet=st.characters(
        codec="utf-8", exclude_characters=UNSAFE_IN_URL, exclude_categories=("Cs", "Cc", "Z")
    ),
    min_size=8,
    max_size=24,
)
SCHEMES = st.sampled_from(["amqp", "amqps", "http", "https", "kafka", "stomp", "postgresql"])


@given(SCHEMES, SAFE, PASSWORDS, SAFE)
def test_a_url_password_never_survives(scheme: str, user: str, password: str, host: str) -> None:
    url = f"{scheme}://{user}:{password}@{host}.example.org:1234/vhost"
    shown = redact(f"cannot connect to {url}: refused")
    assert f":{password}@" not in shown  # (the password may also be spelt like the host: not that)
    assert f"{scheme}://{user}:***@{host}.example.org:1234/vhost" in shown


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("amqp://guest:s3cret@h/", "amqp://guest:***@h/"),
        ("http://guest:p@ss@h:15672", "http://guest:***@h:15672"),  # an unencoded '@' in the password
        ("https://ghp_token@github.com/x", "https://***@github.com/x"),  # a token as the user
        ("amqp://h:5672/ and amqp://u:v@w/", "amqp://h:5672/ and amqp://u:***@w/"),
        ("http://h/?user=a&password=hunter2&x=1", "http://h/?user=a&password=***&x=1"),
        ("http://h/?TOKEN=abc#frag", "http://h/?TOKEN=***#frag"),
        ("plain words, no secret", "plain words, no secret"),
        ("host=localhost user=u password=PgPW7 dbname=x", "host=localhost user=u password=*** dbname=x"),
        ("password='a b\\' c' dbname=x", "password=*** dbname=x"),  # libpq's quoting
        ("compass=north", "compass=north"),
        ("host=db password = spaced dbname=x", "host=db password = *** dbname=x"),
        # a URL typed without its scheme://, as a library quotes it back
        ("not 'guest:S3cret@localhost'", "not 'guest:***@localhost'"),
        ('missing "=" after "postgres:/tid:Pw9@db/x"', 'missing "=" after "postgres:/tid:***@db/x"'),
        ("mail someone@example.org at 12:30", "mail someone@example.org at 12:30"),
    ],
)
def test_examples(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_a_url_that_is_not_one_shows_no_more_than_its_host() -> None:
    assert mask_url("amqps//advcuser:SecretA2@127.0.0.1/") == "***@127.0.0.1/"  # a typo'd scheme
    assert "Tail77" not in mask_url("host=db password=Hunter2@Tail77 dbname=x")  # no URL at all
    assert mask_url("amqp://u:Pa ss'w\"d@h:5672/") == "amqp://u:***@h:5672/"


def test_mask_url_takes_any_object() -> None:
    class Url:
        def __str__(self) -> str:
            return "amqps://fedora:key@rabbit/%2Fpub"

    assert mask_url(Url()) == "amqps://fedora:***@rabbit/%2Fpub"


def test_log_records_are_masked_with_their_arguments_and_exceptions() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "lost %s", ("amqp://u:pw@h/",), None)
    try:
        raise OSError("amqp://u:pw2@h/ refused")
    except OSError:
        import sys

        record.exc_info = sys.exc_info()
    RedactingFilter().filter(record)
    assert record.getMessage() == "lost amqp://u:***@h/"
    assert "pw2" not in (record.exc_text or "") and "u:***@h" in (record.exc_text or "")


def test_a_stomp_passcode_in_a_logged_frame_is_masked() -> None:
    logged = "sending frame: [b'STOMP', b'login:guest\\n', b'passcode:s3cret-Value\\n', b'\\n', b'\\x00']"
    masked = redact(logged)
    assert "s3cret-Value" not in masked and "passcode:***" in masked and "login:guest" in masked


@pytest.mark.parametrize(
    "url",
    [
        "kafka://user:CANARY#1@127.0.0.1:9092",
        "kafka://user:CAN?ARY1@127.0.0.1:9092",
        "stomp://guest:CAN/ARY1@127.0.0.1:61613/",
        "stomp://guest:CAN'ARY1@127.0.0.1:61613/",
        "stomp://guest:CAN ARY1@127.0.0.1:61613/",
        "stomp://guest:CAN<ARY1@127.0.0.1:61613/",
    ],
)
def test_a_password_typed_with_url_punctuation_is_masked(url: str) -> None:
    assert "ARY1" not in mask_url(url)
    assert mask_url(url).endswith("@127.0.0.1:9092") or "@127.0.0.1:61613" in mask_url(url)
    if not any(c in url for c in "' <"):  # in running text a quote or a space ends a URL
        assert "ARY1" not in redact(f"cannot connect to {url}: refused")


@pytest.mark.parametrize("passcode", ["CANA RYX1", "CAN'RYX1", 'CAN"RYX1', "CAN\\\\RYX1"])
def test_a_stomp_passcode_with_spaces_quotes_or_backslashes_is_masked(passcode: str) -> None:
    logged = repr(["CONNECT", "\n", f"passcode:{passcode}\n", "login:guest\n"])
    assert "RYX1" not in redact(f"Sending frame: {logged}")
    assert "login:guest" in redact(f"Sending frame: {logged}")


def test_an_at_sign_in_a_path_or_query_is_no_password() -> None:
    for text in ("https://host/path?x=a@b", "see https://example.org/a@b now"):
        assert redact(text) == text


@given(SAFE, PASSWORDS, SAFE)
def test_a_url_typed_without_its_scheme_shows_no_password(user: str, password: str, host: str) -> None:
    typed = f"{user}:{password}@{host}"
    assert password not in mask_url(typed).removesuffix(host)  # a configured URL: the host only
    assert f":{password}@" not in redact(f"url {typed!r} is not a URL")
