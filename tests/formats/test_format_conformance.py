"""Every registered format runs the format suite (tests/formats/conformance.py).

Each class says how to make the events its format carries; where a format changes what it
carries on purpose (fedmsg's whole-second timestamps and year-prefixed ids, fedora-messaging's
application as the source), ``same`` says so, and nothing else is allowed to differ.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from tests.formats.conformance import FormatConformance
from tests.formats.test_taskcluster import FIELDS as TASK_FIELDS
from tidings.event import Event
from tidings.format import format_names
from tidings.formats.bugzilla import ACTIONS, TARGETS, bugzilla_event
from tidings.formats.cki.format import CHECKOUT_ONLY, OBJECT_TYPES, STATUSES, cki_event
from tidings.formats.lava import KINDS, lava_event
from tidings.formats.taskcluster import task_event

Bodies = st.SearchStrategy[dict[str, Any]]

words = st.from_regex(r"[a-z][a-z0-9_-]{0,7}", fullmatch=True)
topics = st.lists(words, min_size=1, max_size=5).map(".".join)
times = st.datetimes(timezones=st.just(UTC))
sources = st.from_regex(r"[a-z][a-z0-9-]{0,11}", fullmatch=True)
types = st.none() | st.from_regex(r"[a-z]+(\.[a-z]+){1,2}\.v[0-9]", fullmatch=True)
EPOCH_START = datetime(1970, 1, 2)  # fedmsg timestamps are whole seconds since the epoch
header_text = st.dictionaries(
    st.from_regex(r"x_[a-z]{1,8}", fullmatch=True), st.text(max_size=12), max_size=3
)


def plain_events(body: Bodies) -> st.SearchStrategy[Event]:
    return st.builds(
        lambda topic, body, source, type_, time, headers: Event.create(
            topic, body, source=source, type=type_, time=time, headers=headers
        ),
        topics,
        body,
        sources,
        types,
        times,
        header_text,
    )


class TestNativeFormat(FormatConformance):
    name = "tidings"

    @classmethod
    def events(cls, body: Bodies) -> st.SearchStrategy[Event]:
        return plain_events(body)

    def same(self, sent: Event, back: Event) -> None:
        super().same(sent, back)
        assert (back.source, back.headers, back.visibility) == (sent.source, sent.headers, sent.visibility)


class TestCloudEventsStructured(TestNativeFormat):
    name = "cloudevents-structured"


class TestCKI(FormatConformance):
    name = "cki"
    pairs = [(o, s) for o in OBJECT_TYPES for s in STATUSES if o == "checkout" or s not in CHECKOUT_ONLY]

    @classmethod
    def events(cls, body: Bodies) -> st.SearchStrategy[Event]:
        return st.builds(
            lambda pair, obj, time: cki_event(*pair, {"id": "redhat:1", **obj}, timestamp=time),
            st.sampled_from(cls.pairs),
            body,
            times,
        )

    def same(self, sent: Event, back: Event) -> None:
        super().same(sent, back)
        assert back.source == sent.source


class TestFedoraMessaging(FormatConformance):
    name = "fedora-messaging"
    options = {"topic_prefix": "org.fedoraproject.prod"}
    time_precision = timedelta(seconds=1)  # header sent-at: whole seconds, as fedora-messaging writes it

    @classmethod
    def events(cls, body: Bodies) -> st.SearchStrategy[Event]:
        return st.builds(
            lambda topic, body, time: Event.create(topic, body, source="x", type="base.message", time=time),
            topics,
            body,
            times,
        )

    def same(self, sent: Event, back: Event) -> None:
        super().same(sent, back)
        assert back.source == sent.topic.split(".")[0]  # the application, as Message.app_name says


FEDMSG_TYPE = "fedmsg.message.v1"


class TestFedmsg(FormatConformance):
    name = "fedmsg"
    time_precision = timedelta(seconds=1)  # fedmsg's timestamp is an integer

    @classmethod
    def events(cls, body: Bodies) -> st.SearchStrategy[Event]:
        return st.builds(
            lambda topic, body, time: Event.create(
                topic, body, source="x", type="fedmsg.message.v1", time=time
            ),
            topics,
            body,
            st.datetimes(min_value=EPOCH_START, timezones=st.just(UTC)),
        )

    def same(self, sent: Event, back: Event) -> None:
        assert back.id == f"{sent.time.year}-{sent.id}"  # fedmsg's "<year>-<uuid>" msg_id
        assert (back.topic, back.body, back.type) == (sent.topic, sent.body, sent.type)
        assert timedelta(0) <= sent.time - back.time < self.time_precision
        assert back.source == sent.topic.split(".")[0]


class TestLava(FormatConformance):
    name = "lava"

    @classmethod
    def events(cls, body: Bodies) -> st.SearchStrategy[Event]:
        return st.builds(
            lambda kind, data, user: lava_event(kind, data, username=user),
            st.sampled_from(KINDS),
            body,
            sources,
        )

    def same(self, sent: Event, back: Event) -> None:
        super().same(sent, back)
        assert back.headers == sent.headers  # the username frame


class TestBugzilla(FormatConformance):
    name = "bugzilla"
    time_precision = timedelta(seconds=1)  # Bugzilla's event time: YYYY-MM-DDTHH:MM:SS

    @classmethod
    def events(cls, body: Bodies) -> st.SearchStrategy[Event]:
        return st.builds(
            lambda target, action, obj, bug_id, time: bugzilla_event(
                target, action, obj, user={"login": "a@example.com"}, bug_id=bug_id, when=time
            ),
            st.sampled_from(TARGETS),
            st.sampled_from(ACTIONS),
            body,
            st.integers(1, 10**9),
            times,
        )

    def same(self, sent: Event, back: Event) -> None:
        super().same(sent, back)
        assert back.visibility == sent.visibility


class TestTaskcluster(FormatConformance):
    name = "taskcluster"

    @classmethod
    def events(cls, body: Bodies) -> st.SearchStrategy[Event]:
        routes = st.lists(st.text(min_size=1, max_size=30), max_size=4, unique=True)
        return st.builds(
            lambda body, routes: task_event("task-completed", body, routes=routes, **TASK_FIELDS),
            body,
            routes,
        )

    def same(self, sent: Event, back: Event) -> None:
        super().same(sent, back)
        assert back.headers == sent.headers  # the exchange and every route


SUBCLASSES = {
    cls.name
    for cls in (
        TestNativeFormat,
        TestCloudEventsStructured,
        TestCKI,
        TestFedoraMessaging,
        TestFedmsg,
        TestLava,
        TestBugzilla,
        TestTaskcluster,
    )
}


def test_every_registered_format_runs_the_suite() -> None:
    assert set(format_names()) <= SUBCLASSES, f"formats without a suite: {set(format_names()) - SUBCLASSES}"
