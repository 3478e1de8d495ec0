"""The JSON API: datagrepper's /raw and /id, /v2/search's cursors, access, headers, escaping."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from tests.web.conftest import ADMIN_TOKEN, READ_TOKEN
from tests.web.events import HOSTILE_BODY, HOSTILE_TOPIC, dead_letter, event
from tidings.archive import Archive, Query
from tidings.bus import Bus

NOW = time.time()
BODHI = "org.fedoraproject.prod.bodhi.update.comment"
KOJI = "org.fedoraproject.prod.buildsys.build.state.change"
WIKI = "org.fedoraproject.prod.wiki.article.edit"


@pytest.fixture
def client(app: Any) -> TestClient:
    return TestClient(app)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def topics(response: Any) -> list[str]:
    return [m["topic"] for m in response.json()["raw_messages"]]


# -- /raw ----------------------------------------------------------------------------------


def test_raw_has_datagrepper_shape_and_defaults(client: TestClient, archive: Archive) -> None:
    archive.ingest([event(BODHI, {"n": n}, at=NOW - 100 + n) for n in range(30)])
    got = client.get("/raw").json()
    assert set(got) == {"raw_messages", "count", "pages", "total", "arguments"}
    assert (got["count"], got["pages"], got["total"]) == (25, 2, 30)
    assert got["arguments"]["page"] == 1
    assert got["arguments"]["rows_per_page"] == 25
    assert got["arguments"]["order"] == "desc"
    first = got["raw_messages"][0]
    assert first["msg"] == {"n": 29} == first["body"]  # newest first
    assert first["topic"] == BODHI
    assert first["timestamp"] == pytest.approx(NOW - 71, abs=1e-3)
    assert first["msg_id"] == first["id"]
    assert "sent-at" in first["headers"]
    assert client.get("/raw/").json()["total"] == 30  # the trailing slash is optional


def test_raw_pages_rows_and_order(client: TestClient, archive: Archive) -> None:
    archive.ingest([event(BODHI, {"n": n}, at=NOW - 100 + n) for n in range(30)])
    got = client.get("/raw", params={"page": 2, "rows_per_page": 10, "order": "asc"}).json()
    assert [m["msg"]["n"] for m in got["raw_messages"]] == list(range(10, 20))
    assert (got["count"], got["pages"], got["total"]) == (10, 3, 30)
    last = client.get("/raw", params={"page": 3, "rows_per_page": 10, "order": "desc"}).json()
    assert [m["msg"]["n"] for m in last["raw_messages"]] == list(range(9, -1, -1))


def test_raw_filters_combine_as_datagrepper_does(client: TestClient, archive: Archive) -> None:
    archive.ingest(
        [
            event(BODHI, {"text": "needle"}, users=("toshio",), packages=("nethack",)),
            event(KOJI, {"text": "hay"}, users=("pingou",), packages=("kernel",)),
            event(WIKI, {"text": "needle too"}, users=("ralph",)),
        ]
    )
    assert topics(client.get("/raw", params={"topic": BODHI})) == [BODHI]
    assert sorted(topics(client.get("/raw", params=[("topic", BODHI), ("topic", WIKI)]))) == [BODHI, WIKI]
    assert topics(client.get("/raw", params={"topic": "org.fedoraproject.*.bodhi.#"})) == [BODHI]
    assert BODHI not in topics(client.get("/raw", params={"not_topic": BODHI}))
    assert topics(client.get("/raw", params={"category": "buildsys"})) == [KOJI]
    assert topics(client.get("/raw", params={"user": "toshio"})) == [BODHI]
    assert topics(client.get("/raw", params={"package": "kernel"})) == [KOJI]
    assert sorted(topics(client.get("/raw", params={"contains": "needle"}))) == [BODHI, WIKI]
    # (category bodhi OR wiki) AND (user toshio OR pingou): CNF
    cnf = [("category", "bodhi"), ("category", "wiki"), ("user", "toshio"), ("user", "pingou")]
    assert topics(client.get("/raw", params=cnf)) == [BODHI]
    arguments = client.get("/raw", params=cnf).json()["arguments"]
    assert arguments["categories"] == ["bodhi", "wiki"]
    assert arguments["users"] == ["toshio", "pingou"]


def test_raw_time_arguments_follow_datagrepper_table(client: TestClient, archive: Archive) -> None:
    now = time.time()  # not the module's now: a window relative to the present needs the present
    archive.ingest([event(BODHI, {"age": age}, at=now - age) for age in (3600, 1200, 500, 60)])

    def ages(**params: float) -> list[int]:
        got = client.get("/raw", params={**params, "order": "asc"}).json()
        return [m["msg"]["age"] for m in got["raw_messages"]]

    assert ages() == [3600, 1200, 500, 60]  # no time argument: no window
    assert ages(delta=300) == [60]
    assert ages(start=now - 1300) == [1200, 500, 60]
    assert ages(start=now - 1300, delta=1000) == [1200, 500]
    assert ages(end=now - 400) == [500]  # the 600 seconds before end
    assert ages(end=now - 400, delta=1000) == [1200, 500]
    assert ages(start=now - 4000, end=now - 1000, delta=5) == [3600, 1200]  # delta ignored
    arguments = client.get("/raw", params={"delta": 300}).json()["arguments"]
    assert arguments["delta"] == 300
    assert arguments["end"] - arguments["start"] == pytest.approx(300)


def test_a_window_holds_the_events_at_both_its_ends(client: TestClient, archive: Archive) -> None:
    # datanommer's grep: between(timestamp, start, end), both ends included
    archive.ingest([event(BODHI, {"n": n}, at=1577836800) for n in range(3)])
    for params in ({"start": 1577836700, "end": 1577836800}, {"end": 1577836800}, {"start": 1577836800}):
        assert client.get("/raw", params=params).json()["total"] == 3, params
    assert client.get("/raw", params={"start": 1577836800.001}).json()["total"] == 0
    assert client.get("/raw", params={"end": 1577836799.999}).json()["total"] == 0


def test_the_search_page_searches_by_delta_alone(client: TestClient, archive: Archive) -> None:
    archive.ingest(
        [event(BODHI, {"n": 1}, at=time.time() - 60), event(KOJI, {"n": 2}, at=time.time() - 7200)]
    )
    page = client.get("/search", params={"delta": 3600}).text
    assert BODHI in page and KOJI not in page


@pytest.mark.parametrize("path", ["/raw", "/id"])
def test_a_post_with_a_form_body_is_refused_not_read_as_no_filter(
    client: TestClient, archive: Archive, path: str
) -> None:
    archive.ingest([event(BODHI, {"n": 1})])
    refused = client.post(path, data={"category": "nope", "rows_per_page": "1"})
    assert refused.status_code == 400
    assert "query string" in refused.json()["error"]
    assert client.post("/raw", params={"category": "nope"}).json()["total"] == 0  # POST as GET


def test_a_store_that_cannot_answer_is_503_with_why(
    client: TestClient, archive: Archive, monkeypatch
) -> None:
    from tidings.errors import StorageError

    def away(*args: Any, **kwargs: Any) -> Any:
        raise StorageError("archive (PostgreSQL): the connection is closed")

    for method in ("numbered", "get", "search", "last_seq", "since"):
        monkeypatch.setattr(archive, method, away)
    for path, params in (("/raw", {}), ("/id", {"id": "x"}), ("/v2/search", {}), ("/stream", {})):
        response = client.get(path, params=params)
        if path == "/stream":  # the stream ends: a browser comes back with its Last-Event-ID
            assert response.status_code == 200 and response.text == "retry: 1000\n\n"
            continue
        assert response.status_code == 503, path
        assert response.json() == {
            "error": "the archive cannot answer now: archive (PostgreSQL): the connection is closed"
        }


@pytest.mark.parametrize(
    "params",
    [
        {"rows_per_page": 101},
        {"rows_per_page": 0},
        {"page": 0},
        {"order": "sideways"},
        {"delta": "soon"},
        {"topic": "a.b#"},
        {"not_user": "x"},
        {"callback": "f"},
    ],
)
def test_raw_refuses_what_it_cannot_mean(client: TestClient, params: dict[str, Any]) -> None:
    response = client.get("/raw", params=params)
    assert response.status_code == 400
    assert response.json()["error"]


def test_a_refusal_echoes_every_value_of_a_repeated_parameter(client: TestClient) -> None:
    got = client.get("/raw", params=[("topic", "a.b"), ("topic", "c.d"), ("rows_per_page", "0")]).json()
    assert got["arguments"] == {"topic": ["a.b", "c.d"], "rows_per_page": "0"}


# -- /id -----------------------------------------------------------------------------------


def test_id_returns_one_message(client: TestClient, archive: Archive) -> None:
    item = event(BODHI, {"hello": "world"})
    archive.ingest([item])
    got = client.get("/id", params={"id": item.event.id}).json()
    assert (got["msg_id"], got["msg"], got["topic"]) == (item.event.id, {"hello": "world"}, BODHI)
    assert client.get("/id", params={"id": "nope"}).status_code == 404
    assert client.get("/id").status_code == 400


# -- /v2/search ----------------------------------------------------------------------------


def test_search_walks_keyset_cursors_without_gap_or_repeat(client: TestClient, archive: Archive) -> None:
    archive.ingest([event(BODHI, {"n": n}, at=NOW - 1000 + n // 3) for n in range(120)])  # ties in time
    archive.ingest([event(KOJI, {"n": -1})])
    seen: list[int] = []
    keys: list[tuple[str, int]] = []
    params: dict[str, Any] = {"topic": "org.fedoraproject.*.bodhi.#", "limit": 50}
    sizes = []
    while True:
        got = client.get("/v2/search", params=params).json()
        sizes.append(len(got["items"]))
        seen += [item["seq"] for item in got["items"]]
        keys += [(item["time"], item["seq"]) for item in got["items"]]
        assert got["estimated_total"] is None or got["estimated_total"] >= 0
        if got["next_cursor"] is None:
            assert got["next"] is None
            break
        assert "cursor=" in got["next"]
        params["cursor"] = got["next_cursor"]
    assert sizes == [50, 50, 20]
    assert len(seen) == len(set(seen)) == 120
    assert keys == sorted(keys, reverse=True)  # newest first, seq breaking ties


def test_search_order_and_envelope(client: TestClient, archive: Archive) -> None:
    archive.ingest([event(BODHI, {"n": n}, at=NOW - 10 + n, users=("toshio",)) for n in range(3)])
    got = client.get("/v2/search", params={"order": "asc", "user": "toshio"}).json()
    assert [i["body"]["n"] for i in got["items"]] == [0, 1, 2]
    first = got["items"][0]
    assert {"seq", "id", "topic", "time", "source", "type", "headers", "visibility", "body"} <= set(first)
    assert first["category"] == "bodhi"
    assert first["users"] == ["toshio"]
    assert client.get("/v2/search", params={"limit": 501}).status_code == 400


# -- access --------------------------------------------------------------------------------


def test_private_events_need_the_read_token(client: TestClient, archive: Archive) -> None:
    secret = event("bugzilla.bug.update", {"secret": True}, private=True)
    archive.ingest([event("bugzilla.bug.update", {"secret": False}), secret])

    def bodies(path: str, key: str, headers: dict[str, str] | None = None) -> list[Any]:
        return [m.get("msg", m.get("body")) for m in client.get(path, headers=headers).json()[key]]

    assert bodies("/raw", "raw_messages") == [{"secret": False}]
    assert bodies("/v2/search", "items") == [{"secret": False}]
    for path in ("/raw", "/v2/search", "/stream", "/"):
        refused = client.get(path, headers=bearer("wrong"))  # a mistyped token fails loudly
        assert refused.status_code == 401, path
        assert refused.json() == {"error": "the Bearer token is not one of this server's tokens"}
        assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    client.cookies.set("tidings_token", "rotated")  # a stale cookie: the page offers its login
    stale = client.get("/raw")
    client.cookies.clear()
    assert [m["msg"] for m in stale.json()["raw_messages"]] == [{"secret": False}]
    assert client.get("/id", params={"id": secret.event.id}).status_code == 404
    for token in (READ_TOKEN, ADMIN_TOKEN):
        assert {"secret": True} in bodies("/raw", "raw_messages", bearer(token))
        assert {"secret": True} in bodies("/v2/search", "items", bearer(token))
        assert client.get("/id", params={"id": secret.event.id}, headers=bearer(token)).status_code == 200
    assert client.get(f"/event/{secret.event.id}").status_code == 404
    assert "secret" in client.get(f"/event/{secret.event.id}", headers=bearer(READ_TOKEN)).text


def test_login_sets_the_token_cookie_behind_a_csrf_check(client: TestClient, archive: Archive) -> None:
    secret = event("bugzilla.bug.update", {"secret": True}, private=True)
    archive.ingest([secret])
    client.get("/login")
    csrf = client.cookies["tidings_csrf"]
    refused = client.post("/login", data={"csrf": "forged", "token": READ_TOKEN})
    assert refused.status_code == 403
    wrong = client.post("/login", data={"csrf": csrf, "token": "guess"})
    assert wrong.status_code == 403
    assert client.post("/login", data={"csrf": csrf, "token": READ_TOKEN}).status_code == 200  # → /
    assert client.get("/id", params={"id": secret.event.id}).status_code == 200


def test_retry_needs_the_admin_token_and_from_a_browser_the_csrf_token(
    client: TestClient, web_bus: Bus
) -> None:
    seq = dead_letter(web_bus)
    client.get("/connectors")
    csrf = client.cookies["tidings_csrf"]
    url = "/connectors/local/retry"
    assert client.post(url, data={"csrf": csrf, "seq": str(seq)}).status_code == 403
    assert client.post(url, data={"csrf": csrf}, headers=bearer(READ_TOKEN)).status_code == 403
    # logged in (the token in the cookie a browser sends to any site's form): CSRF token or 403
    assert client.post("/login", data={"csrf": csrf, "token": ADMIN_TOKEN}).status_code == 200
    assert client.post(url, data={"seq": str(seq)}).status_code == 403
    assert client.post(url, data={"csrf": "x" + csrf, "seq": str(seq)}).status_code == 403
    assert web_bus.outbox.status(["local"])[0].dead == 1
    done = client.post(url, data={"csrf": csrf, "seq": str(seq)}, follow_redirects=False)
    assert done.status_code == 303
    status = web_bus.outbox.status(["local"])[0]
    assert (status.dead, status.backlog) == (0, 1)
    client.cookies.clear()  # a program: the admin token as a Bearer header, no cookie, no CSRF token
    drop = client.post(
        "/connectors/local/drop",
        data={"table": "backlog"},
        headers=bearer(ADMIN_TOKEN),
        follow_redirects=False,
    )
    assert drop.status_code == 303
    assert web_bus.outbox.status(["local"])[0].backlog == 0


def test_a_form_with_a_seq_that_is_none_acts_on_nothing(client: TestClient, web_bus: Bus) -> None:
    dead_letter(web_bus)
    dead_letter(web_bus)
    client.get("/connectors")
    csrf = client.cookies["tidings_csrf"]
    for bad in ("301x", "-1", "abc", "99999999999999999999999", "²"):
        for action in ("retry", "drop"):
            done = client.post(
                f"/connectors/local/{action}",
                data={"csrf": csrf, "table": "dead", "seq": bad},
                headers=bearer(ADMIN_TOKEN),
            )
            assert done.status_code == 400, (bad, action)
    assert web_bus.outbox.status(["local"])[0].dead == 2  # neither retried nor dropped


def test_private_entries_are_listed_to_readers_only(client: TestClient, web_bus: Bus) -> None:
    dead_letter(web_bus, topic="public.refused")
    dead_letter(web_bus, topic="secret.refused", private=True)
    anonymous = client.get("/connectors").text
    assert "public.refused" in anonymous and "secret.refused" not in anonymous
    assert "secret.refused" in client.get("/connectors", headers=bearer(READ_TOKEN)).text


def test_every_response_has_a_csp(client: TestClient) -> None:
    for path in ("/", "/raw", "/search", "/connectors", "/consumers", "/login", "/static/app.js"):
        response = client.get(path)
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"


def test_hostile_values_are_escaped_everywhere(client: TestClient, archive: Archive) -> None:
    item = event(HOSTILE_TOPIC, HOSTILE_BODY)
    archive.ingest([item])
    pages = [
        client.get(f"/event/{item.event.id}").text,
        client.get("/search", params={"contains": "script"}).text,
    ]
    for html in pages:
        assert "<script>alert" not in html
        assert "<img" not in html
        assert "&lt;script&gt;alert" in html
    assert "script" in client.get("/search", params={"contains": "script"}).text
    raw = client.get("/raw")
    assert raw.headers["content-type"].startswith("application/json")
    assert raw.json()["raw_messages"][0]["topic"] == HOSTILE_TOPIC


def test_pages_render(client: TestClient, archive: Archive, web_bus: Bus) -> None:
    item = event(BODHI, {"hello": "world"})
    archive.ingest([item])
    dead_letter(web_bus)
    assert 'id="events"' in client.get("/").text
    page = client.get(f"/event/{item.event.id}").text
    assert "connector local" in page and "ce_id" in page  # the native format's wire headers
    assert "refused" in client.get("/connectors").text
    for bad_input in ({"cursor": "garbage"}, {"topic": "a..b"}, {"start": "abc"}):
        shown = client.get("/search", params=bad_input)  # the form again, with the problem, as a 400
        assert shown.status_code == 400 and 'name="topic"' in shown.text, bad_input
        assert client.get("/v2/search", params=bad_input).status_code == 400
    assert "\x00" not in client.get("/search", params={"contains": "a\x00b"}).text
    assert client.head("/login").status_code == 200  # not a form post without its CSRF token


def test_an_id_with_slashes_opens_its_page_and_its_replay(
    client: TestClient, archive: Archive, web_bus: Bus
) -> None:
    """Ids come from other systems (a LAVA job URL, a path): a '/' in one is part of the id."""
    import dataclasses

    item = event(BODHI, {"n": 7})
    item = dataclasses.replace(item, event=dataclasses.replace(item.event, id="lava/jobs/42"))
    archive.ingest([item])
    assert "lava/jobs/42" in client.get("/event/lava/jobs/42").text
    assert "lava/jobs/42" in client.get("/event/lava%2Fjobs%2F42").text  # as the live page links it
    assert client.get("/event/lava/jobs/43").status_code == 404
    client.get("/event/lava/jobs/42")
    csrf = {"csrf": client.cookies["tidings_csrf"]}
    replay = client.post("/event/lava/jobs/42/replay", data=csrf, headers=bearer(ADMIN_TOKEN))
    assert replay.status_code == 200 and "Replayed lava/jobs/42 (id kept)" in replay.text


async def test_replay_from_the_event_page_needs_the_admin_token(
    client: TestClient, web_bus: Bus, archive: Archive
) -> None:
    from tidings.transport import Binding, ExchangeSpec, QueueSpec, Topology

    item = event("datawarehouse.checkout.new", {"n": 1})
    archive.ingest([item])
    transport = web_bus.make_transport("local")
    await transport.connect()
    await transport.declare(
        Topology([ExchangeSpec("tidings")], [QueueSpec("watch", [Binding("tidings", "#")])])
    )
    client.get(f"/event/{item.event.id}")
    csrf = client.cookies["tidings_csrf"]
    url = f"/event/{item.event.id}/replay"
    assert client.post(url, data={"csrf": csrf}).status_code == 403
    assert client.post(url, data={"csrf": csrf}, headers=bearer(READ_TOKEN)).status_code == 403
    assert await transport.queue_depth("watch") == 0  # type: ignore[attr-defined]
    done = client.post(url, data={}, headers=bearer(ADMIN_TOKEN))  # a program: no CSRF token needed
    assert done.status_code == 200 and "local: sent 1 of 1" in done.text
    assert await transport.queue_depth("watch") == 1  # type: ignore[attr-defined]
    await transport.close()


def _cursor(text: str) -> str:
    import base64

    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


BAD_PARAMETERS = [
    *({name: value} for name in ("start", "end") for value in ("nan", "inf", "-inf", "1e400", "1e20")),
    {"start": "253402300800"},
    {"end": "-99999999999"},
    {"start": "0001-01-01T00:00:00+14:00"},
    *({"delta": value} for value in ("nan", "inf")),
    {"page": "99999999999999999"},
    {"user": "a\x00b"},
    {"contains": "a\x00b"},
    {"topic": [f"t{n}.*" for n in range(101)]},
    {"contains": [f"v{n}" for n in range(101)]},
]


@pytest.mark.parametrize("params", BAD_PARAMETERS)
@pytest.mark.parametrize("path", ["/raw", "/v2/search", "/stream"])
def test_parameters_out_of_range_are_400_never_500(client: TestClient, path: str, params: dict) -> None:
    if "page" in params and path != "/raw":  # each path's own way to name a place too far
        far = "99999999999999999999"
        params = {"cursor": _cursor(f"1:{far}")} if path == "/v2/search" else {"last_event_id": far}
    response = client.get(path, params=params)
    assert response.status_code == 400, (path, params, response.text[:200])
    assert "error" in response.json()


@pytest.mark.parametrize("value", ["\uff15", "\u0661", "1" * 5000, "5.0", " 5"])
@pytest.mark.parametrize(
    ("path", "name"), [("/raw", "rows_per_page"), ("/v2/search", "limit"), ("/stream", "backlog")]
)
def test_a_count_is_ascii_digits_and_a_long_one_is_not_echoed_whole(
    client: TestClient, path: str, name: str, value: str
) -> None:
    """int() takes a fullwidth or an Arabic-Indic digit (and Last-Event-ID did not): every
    number of the API is ASCII digits; one of 5,000 digits is named, not written back whole."""
    response = client.get(path, params={name: value})
    assert response.status_code == 400 and f"{name} must be a whole number" in response.json()["error"]
    assert len(response.json()["error"]) < 200  # (/raw echoes its arguments, as datagrepper does)


def test_a_cursor_whose_time_no_datetime_holds_is_400(client: TestClient, archive: Archive) -> None:
    """A tampered cursor: a time past year 9999 (or before year 1) was a 500 with a traceback on
    PostgreSQL, an empty page on SQLite; the last moment a datetime holds is still a cursor."""
    archive.ingest([event(BODHI, {"n": 1}, at=NOW - 10)])
    last = 253402300799999999  # 9999-12-31T23:59:59.999999Z in microseconds
    for time_us in (last + 1, -62135596800000001, 2**62, -(2**62)):
        response = client.get("/v2/search", params={"cursor": _cursor(f"{time_us}:1")})
        assert response.status_code == 400, (time_us, response.text[:200])
        assert "is not one this archive gave out" in response.json()["error"]
        page = client.get("/search", params={"cursor": _cursor(f"{time_us}:1")})  # the page says so too
        assert page.status_code == 400 and "is not one this archive gave out" in page.text
    edge = client.get("/v2/search", params={"cursor": _cursor(f"{last}:1")})
    assert edge.status_code == 200 and len(edge.json()["items"]) == 1


@pytest.mark.parametrize("path", ["/v2/search", "/stream"])
def test_a_mistyped_parameter_of_our_own_api_is_400_not_a_wider_search(client: TestClient, path: str) -> None:
    response = client.get(path, params={"topics": "bodhi.#"})
    assert response.status_code == 400
    assert response.json()["error"].startswith("unknown parameter 'topics'; known: ")
    assert "topic" in response.json()["error"]


def test_windows_reaching_past_what_a_time_can_be_are_cut_there(client: TestClient, archive: Archive) -> None:
    archive.ingest([event(BODHI, {"n": 1}, at=NOW - 10)])
    for params in ({"delta": "99999999999"}, {"delta": "1e300"}, {"end": "1000", "delta": "1e15"}):
        response = client.get("/v2/search", params=params)
        assert response.status_code == 200, (params, response.text[:200])
    assert len(client.get("/v2/search", params={"delta": "99999999999"}).json()["items"]) == 1


@pytest.mark.parametrize("value", ["²", "99999999999999999999999"])
def test_a_last_event_id_that_is_no_seq_is_400(client: TestClient, value: str) -> None:
    assert client.get("/stream", params={"last_event_id": value}).status_code == 400
    if value.isascii():
        assert client.get("/stream", headers={"Last-Event-ID": value}).status_code == 400


def test_an_id_with_a_nul_is_not_found(client: TestClient) -> None:
    assert client.get("/id", params={"id": "a\x00b"}).status_code == 404


def test_a_form_past_its_limit_is_refused_before_it_is_read_whole(client: TestClient) -> None:
    client.get("/login")
    big = b"csrf=x&token=" + b"a" * (200 * 1024)
    form = {"content-type": "application/x-www-form-urlencoded"}
    response = client.post("/login", content=big, headers=form)
    assert response.status_code == 413


async def test_large_events_make_shorter_pages_and_streams_never_more_bytes_than_the_budget(
    client: TestClient, archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What one request holds is bounded by bytes: 40 events of 20 KB against a 100 KB budget
    come in pages of four or five, every one exactly once and in order, by their cursors."""
    from tidings.web import query, stream

    monkeypatch.setattr(query, "PAGE_BYTES", 100_000)
    archive.ingest([event(BODHI, {"n": n, "pad": "x" * 20_000}, at=NOW - 100 + n) for n in range(40)])
    seen: list[int] = []
    url: str | None = "/v2/search?limit=500&order=asc"
    while url:
        response = client.get(url)
        assert response.status_code == 200 and len(response.content) <= 100_000 + 21_000
        page = response.json()
        assert 1 <= len(page["items"]) <= 5
        seen += [item["body"]["n"] for item in page["items"]]
        url = page["next"]
    assert seen == list(range(40))
    _, frames = await stream.backlog(archive, Query(), 40)  # the newest that fit, oldest first
    assert 1 <= len(frames) <= 5 and sum(map(len, frames)) <= 100_000 + 21_000
    assert [orjson.loads(f.split(b"data: ", 1)[1])["body"]["n"] for f in frames] == list(
        range(40 - len(frames), 40)
    )


def nested(depth: int) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for _ in range(depth - 1):
        body = {"a": body}
    return body


async def test_a_body_as_deep_as_a_bus_may_allow_is_served_everywhere(
    client: TestClient, archive: Archive
) -> None:
    """The API wraps a body in levels of its own: 500 levels (the most [bus] max_depth allows)
    must still be written out by /raw, /id, /v2/search and the stream (orjson stops at 254)."""
    from tidings.web import stream

    deep = event(BODHI, nested(500))
    archive.ingest([event(BODHI, {"n": 1}), deep, event(BODHI, {"n": 2})])
    assert client.get("/raw").json()["total"] == 3
    assert client.get("/id", params={"id": deep.event.id}).json()["msg"] == deep.event.body
    assert len(client.get("/v2/search").json()["items"]) == 3
    _, frames = await stream.backlog(archive, Query(), 10)
    assert len(frames) == 3  # neither the deep one nor those beside it left out


def test_a_public_readers_estimate_says_nothing_of_private_events(
    client: TestClient, archive: Archive
) -> None:
    """PostgreSQL's estimate comes from statistics over every row: given to a public reader, it
    would tell how many private events a topic holds, and that they exist at all."""
    archive.ingest([event("hr.layoffs.planned", {"n": n}, private=True) for n in range(300)])
    archive.ingest([event(BODHI, {"n": n}) for n in range(30)])
    if hasattr(archive, "analyze"):
        archive.analyze()  # statistics as a busy server's autovacuum would have gathered them
    public = client.get("/v2/search", params={"topic": "hr.layoffs.planned"}).json()
    assert public["items"] == [] and public["estimated_total"] in (None, 0)
    reader = client.get("/v2/search", params={"topic": "hr.layoffs.planned"}, headers=bearer(READ_TOKEN))
    assert len(reader.json()["items"]) == 50  # the default page; a reader of all may have the estimate


def test_a_raw_page_larger_than_the_budget_is_refused_with_what_would_fit(
    client: TestClient, archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """datagrepper's numbered pages cannot end early: one past the byte budget is a 400 that says
    how many rows would fit (each event is written twice in /raw: msg and body)."""
    from tidings.web import query

    monkeypatch.setattr(query, "PAGE_BYTES", 100_000)
    archive.ingest([event(BODHI, {"n": n, "pad": "x" * 20_000}, at=NOW - 100 + n) for n in range(10)])
    refused = client.get("/raw", params={"rows_per_page": 10})
    assert refused.status_code == 400
    assert "ask for fewer rows_per_page (at most 2 of these fit)" in refused.json()["error"]
    fits = client.get("/raw", params={"rows_per_page": 2, "page": 5, "order": "asc"})
    assert fits.status_code == 200 and [m["msg"]["n"] for m in fits.json()["raw_messages"]] == [8, 9]
    alone = client.get("/raw", params={"rows_per_page": 1, "page": 1})  # one event always goes
    monkeypatch.setattr(query, "PAGE_BYTES", 1_000)
    assert alone.status_code == 200 and client.get("/raw", params={"rows_per_page": 1}).status_code == 200
