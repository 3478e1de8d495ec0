"""Taskcluster queue exchanges (seed 004), checked against the official taskcluster client.

Facts: taskcluster/taskcluster services/queue/src/exchanges.js (buildCommonRoutingKey,
buildTaskGroupRoutingKey, commonMessageBuilder, commonCCBuilder); the exchanges, their routing
key words and binding patterns from the `taskcluster` package's generated QueueEvents
(BaseClient._makeTopicExchange); lib-pulse's publisher (libraries/pulse/src/publisher.js,
PulsePublisher._send: persistent, application/json, content encoding utf-8, the CC header).
"""

from __future__ import annotations

import inspect
import uuid
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from taskcluster.generated.queueevents import QueueEvents

from tidings.errors import InvalidEvent, SchemaError, UnknownSchema
from tidings.formats.taskcluster import (
    EXCHANGES,
    PREFIX,
    TaskclusterFormat,
    binding_pattern,
    check_routes,
    routes_of,
    routing_key,
    task_event,
)
from tidings.schemas import SchemaRegistry
from tidings.transport import WireMessage

FIELDS = {
    "taskId": "fN1-8EVNQ9SJ52mSU0MsnQ",
    "runId": 0,
    "workerGroup": "us-east-1",
    "workerId": "i-0abc",
    "provisionerId": "proj-gecko",
    "workerType": "b-linux",
    "schedulerId": "gecko-level-3",
    "taskGroupId": "Xs9f-N3kQ2yJ1fG4x5aQ7w",
}
#: a task's status as the queue sends it (services/queue/schemas/v1/task-status.yml)
TASK_STATUS = {
    "taskId": FIELDS["taskId"],
    "provisionerId": FIELDS["provisionerId"],
    "workerType": FIELDS["workerType"],
    "taskQueueId": f"{FIELDS['provisionerId']}/{FIELDS['workerType']}",
    "schedulerId": FIELDS["schedulerId"],
    "projectId": "none",
    "taskGroupId": FIELDS["taskGroupId"],
    "priority": "lowest",
    "deadline": "2026-12-02T08:00:00.000Z",
    "expires": "2027-12-01T08:00:00.000Z",
    "retriesLeft": 5,
    "state": "completed",
    "runs": [
        {
            "runId": 0,
            "state": "completed",
            "reasonCreated": "scheduled",
            "reasonResolved": "completed",
            "workerGroup": FIELDS["workerGroup"],
            "workerId": FIELDS["workerId"],
            "takenUntil": "2026-12-01T08:20:00.000Z",
            "scheduled": "2026-12-01T08:00:00.000Z",
            "started": "2026-12-01T08:01:00.000Z",
            "resolved": "2026-12-01T08:10:00.000Z",
        }
    ],
}
RUN = {"runId": 0, "workerGroup": FIELDS["workerGroup"], "workerId": FIELDS["workerId"]}
#: a task-completed message (task-completed-message.yml)
STATUS = {"status": TASK_STATUS, **RUN}
GROUP = {"taskGroupId": FIELDS["taskGroupId"], "schedulerId": FIELDS["schedulerId"]}
#: a body of each exchange (the queue's message schemas, services/queue/schemas/v1/)
BODIES = {
    "task-defined": {"status": TASK_STATUS, "task": {"tags": {"kind": "build"}}},
    "task-pending": {"status": TASK_STATUS, "runId": 0, "task": {"tags": {}}},
    "task-running": {**STATUS, "takenUntil": "2026-12-01T08:20:00.000Z"},
    "artifact-created": {
        **STATUS,
        "artifact": {
            "storageType": "object",
            "name": "public/logs/live.log",
            "expires": "2027-12-01T08:00:00.000Z",
            "contentType": "text/plain",
        },
    },
    "task-exception": {"status": TASK_STATUS},  # deadline passed before a run: no run, no worker
    "task-group-resolved": {**GROUP, "expires": "2027-01-01T00:00:00.000Z"},
    "task-group-sealed": {
        **GROUP,
        "expires": "2027-01-01T00:00:00.000Z",
        "sealed": "2026-12-01T08:00:00.000Z",
    },
    "task-priority-changed": {"status": STATUS["status"], "oldPriority": "lowest", "newPriority": "high"},
    "task-group-priority-changed": {**GROUP, "newPriority": "very-high", "tasksAffected": 12},
}
QUEUE_EVENTS = QueueEvents({"rootUrl": "https://tc.example.com"})
METHODS = {
    "task-defined": "taskDefined",
    "task-pending": "taskPending",
    "task-running": "taskRunning",
    "artifact-created": "artifactCreated",
    "task-completed": "taskCompleted",
    "task-failed": "taskFailed",
    "task-exception": "taskException",
    "task-group-resolved": "taskGroupResolved",
    "task-group-sealed": "taskGroupSealed",
    "task-priority-changed": "taskPriorityChanged",
    "task-group-priority-changed": "taskGroupPriorityChanged",
}


SCHEMAS = Path(inspect.getfile(SchemaRegistry)).parent / "packs" / "taskcluster"
TASK_STATUS_REQUIRED = {
    "taskId",
    "provisionerId",
    "workerType",
    "taskQueueId",
    "schedulerId",
    "projectId",
    "taskGroupId",
    "deadline",
    "expires",
    "retriesLeft",
    "state",
    "runs",
}


def without(mapping: dict, name: str) -> dict:
    return {key: value for key, value in mapping.items() if key != name}


def body_of(exchange: str) -> dict:
    return BODIES.get(exchange, STATUS)


def official_exchanges() -> dict[str, dict]:
    """Every exchange the official client declares: its name → the client's own definition."""
    refs: dict[str, dict] = {}
    client = QueueEvents({"rootUrl": "https://tc.example.com"})
    client._makeTopicExchange = lambda ref, *args, **kwargs: refs.setdefault(ref["exchange"], ref)
    for name, member in vars(QueueEvents).items():  # the generated class declares only exchanges
        if inspect.isfunction(member):
            getattr(client, name)()
    return refs


def test_the_exchanges_and_their_prefix_are_the_official_clients() -> None:
    assert set(EXCHANGES) == set(METHODS) == set(official_exchanges())
    for exchange, method in METHODS.items():
        assert getattr(QUEUE_EVENTS, method)()["exchange"] == PREFIX + exchange


def test_routing_key_words_are_the_official_clients() -> None:
    for exchange, ref in official_exchanges().items():
        official = [(key["name"], key["multipleWords"]) for key in ref["routingKey"]]
        assert official[0] == ("routingKeyKind", False)  # the constant "primary"
        assert [(word.name, word.multiple) for word in EXCHANGES[exchange]] == official[1:]


def test_primary_routing_key_in_queue_order() -> None:
    key = routing_key("task-completed", FIELDS)
    assert key == (
        "primary.fN1-8EVNQ9SJ52mSU0MsnQ.0.us-east-1.i-0abc.proj-gecko.b-linux.gecko-level-3."
        "Xs9f-N3kQ2yJ1fG4x5aQ7w._"
    )
    assert routing_key("task-group-resolved", FIELDS) == "primary.Xs9f-N3kQ2yJ1fG4x5aQ7w.gecko-level-3._"


def test_missing_words_are_underscores_and_required_ones_refused() -> None:
    pending = {k: v for k, v in FIELDS.items() if k not in ("workerGroup", "workerId")}
    assert routing_key("task-pending", pending).split(".")[3:5] == ["_", "_"]
    with pytest.raises(InvalidEvent, match="runId is required"):
        routing_key("task-pending", {k: v for k, v in FIELDS.items() if k != "runId"})
    with pytest.raises(InvalidEvent, match="may not contain"):
        routing_key("task-defined", {**FIELDS, "workerType": "a.b"})
    with pytest.raises(InvalidEvent, match="longer than 22"):
        routing_key("task-defined", {**FIELDS, "taskId": "x" * 23})


@pytest.mark.parametrize("exchange", sorted(METHODS))
@pytest.mark.parametrize(
    "given_fields",
    [{}, {"taskId": "abc"}, {"schedulerId": "s", "taskGroupId": "g"}, {"workerType": "w", "reserved": "#"}],
)
def test_binding_patterns_match_the_official_client(exchange: str, given_fields: dict) -> None:
    ours_fields = {k: v for k, v in given_fields.items() if k in {w.name for w in EXCHANGES[exchange]}}
    official = getattr(QUEUE_EVENTS, METHODS[exchange])(ours_fields)["routingKeyPattern"]
    assert binding_pattern(exchange, **ours_fields) == official


def test_bodies_carry_version_1_and_routes_become_cc() -> None:
    event = task_event(
        "task-completed", STATUS, routes=["index.gecko.v2.latest", "notify.email.a@b.c"], **FIELDS
    )
    message = TaskclusterFormat().encode(event)
    assert orjson.loads(message.body)["version"] == 1
    assert message.exchange == "exchange/taskcluster-queue/v1/task-completed"
    assert message.cc == ["route.index.gecko.v2.latest", "route.notify.email.a@b.c"]
    SchemaRegistry.default().validate(event.type, event.body)  # type: ignore[arg-type]


def test_route_permission_is_checked_before_anything_is_queued() -> None:
    scopes = ["queue:route:index.gecko.*", "queue:route:notify.email.a@b.c"]
    check_routes(["index.gecko.v2.latest", "notify.email.a@b.c"], scopes)
    with pytest.raises(InvalidEvent, match="tc-treeherder"):
        task_event("task-completed", STATUS, routes=["tc-treeherder.v2.x"], scopes=scopes, **FIELDS)


#: any string Taskcluster allows as a route: 1 to 249 characters, commas, wildcards and all
any_route = st.text(min_size=1, max_size=249)


@given(st.sampled_from(sorted(METHODS)), st.lists(any_route, max_size=5, unique=True))
def test_round_trip(exchange: str, routes: list[str]) -> None:
    fmt = TaskclusterFormat()
    event = task_event(exchange, body_of(exchange), routes=routes, **FIELDS)
    wire = fmt.encode(event)
    assert wire.cc == [f"route.{route}" for route in routes]
    back = fmt.decode(wire)
    assert (back.id, back.topic, back.body, back.type) == (event.id, event.topic, event.body, event.type)
    assert routes_of(back) == routes


@pytest.mark.parametrize("exchange", sorted(METHODS))
def test_a_message_as_lib_pulse_publishes_it_decodes(exchange: str) -> None:
    # publisher.js: no message id, the routes in the CC header, the body with version 1
    body = {**body_of(exchange), "version": 1}
    wire = WireMessage(
        routing_key(exchange, FIELDS),
        orjson.dumps(body),
        content_type="application/json",
        content_encoding="utf-8",
        exchange=PREFIX + exchange,
        cc=["route.index.gecko.v2.latest"],
        properties={"delivery_mode": 2},
    )
    event = TaskclusterFormat().decode(wire)
    assert (event.type, event.body, routes_of(event)) == (
        f"taskcluster.{exchange}.v1",
        body,
        ["index.gecko.v2.latest"],
    )
    SchemaRegistry.default().validate(event.type, event.body)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exchange", "body"),
    [
        ("task-group-sealed", GROUP),  # no expires
        ("task-group-resolved", GROUP),  # no expires: the same task-group-changed message
        ("task-priority-changed", {**BODIES["task-priority-changed"], "newPriority": "urgent"}),
        ("task-group-priority-changed", {**BODIES["task-group-priority-changed"], "tasksAffected": -1}),
        # the task messages (services/queue/schemas/v1/<exchange>-message.yml, task-status.yml)
        ("task-completed", {"status": {"taskId": FIELDS["taskId"]}, "runId": 0}),  # tidings 0.1 took it
        ("task-completed", {"status": TASK_STATUS, "runId": 0, "workerId": "w"}),  # no workerGroup
        ("task-failed", {**STATUS, "runId": 1001}),
        ("task-running", STATUS),  # no takenUntil
        ("task-pending", {"status": TASK_STATUS}),  # no runId
        ("artifact-created", STATUS),  # no artifact
        ("artifact-created", {**BODIES["artifact-created"], "artifact": {"name": "x"}}),
        ("task-defined", {"status": TASK_STATUS, "task": {"tags": {"a": 1}}}),
        ("task-exception", {"status": {**TASK_STATUS, "taskId": "not-a-slugid"}}),
        ("task-exception", {"status": {**TASK_STATUS, "state": "done"}}),
        ("task-exception", {"status": {**TASK_STATUS, "workerType": "B.Linux"}}),
        ("task-exception", {"status": {**TASK_STATUS, "runs": [{"runId": 0, "state": "pending"}]}}),
        (
            "task-priority-changed",
            {**BODIES["task-priority-changed"], "status": {"taskId": FIELDS["taskId"]}},
        ),
    ]
    + [("task-exception", {"status": without(TASK_STATUS, name)}) for name in sorted(TASK_STATUS_REQUIRED)],
)
def test_the_new_schemas_refuse_what_the_queue_never_sends(exchange: str, body: dict) -> None:
    with pytest.raises(SchemaError) as refused:
        SchemaRegistry.default().validate(f"taskcluster.{exchange}.v1", {**body, "version": 1})
    assert not isinstance(refused.value, UnknownSchema)  # known, and the body breaks it


@pytest.mark.parametrize("exchange", sorted(METHODS))
def test_properties_a_newer_queue_may_add_are_let_through(exchange: str) -> None:
    # the queue's schemas say additionalProperties: false, and grew a property now and then
    # (taskQueueId, projectId, the message's task): a consumer of a newer queue keeps working
    body = {**body_of(exchange), "version": 1, "futureProperty": {"x": 1}}
    if "status" in body:
        body["status"] = {**body["status"], "futureField": 2}
    SchemaRegistry.default().validate(f"taskcluster.{exchange}.v1", body)


def test_every_task_message_schema_has_the_same_task_status() -> None:
    schemas = {
        path.name: orjson.loads(path.read_bytes())
        for path in SCHEMAS.glob("taskcluster.*.json")
        if "status" in orjson.loads(path.read_bytes())["properties"]
    }
    assert len(schemas) == 8  # seven task messages and task-priority-changed
    first = next(iter(schemas.values()))["$defs"]
    assert set(first["status"]["required"]) == TASK_STATUS_REQUIRED
    assert all(schema["$defs"] == first for schema in schemas.values())


def test_the_routing_key_words_come_from_the_message_as_the_queue_takes_them() -> None:
    # exchanges.js commonRoutingKeyBuilder: the status' words and the message's run words
    derived = task_event("task-completed", STATUS)
    assert (
        derived.topic
        == task_event("task-completed", STATUS, **FIELDS).topic
        == routing_key("task-completed", FIELDS)
    )
    group = task_event("task-group-resolved", BODIES["task-group-resolved"])
    assert group.topic == f"primary.{FIELDS['taskGroupId']}.{FIELDS['schedulerId']}._"
    # the queue's priority-changed message has no run words
    assert task_event("task-priority-changed", BODIES["task-priority-changed"]).topic.split(".")[2:5] == [
        "_",
        "_",
        "_",
    ]
    with pytest.raises(InvalidEvent, match="workerId 'other' is not the message's 'i-0abc'"):
        task_event("task-completed", STATUS, **{**FIELDS, "workerId": "other"})


def test_properties_are_lib_pulses() -> None:
    message = TaskclusterFormat().encode(task_event("task-completed", STATUS, **FIELDS))
    assert (message.content_type, message.content_encoding) == ("application/json", "utf-8")
    assert message.properties["delivery_mode"] == 2


def test_a_route_with_a_comma_is_one_cc_key() -> None:
    event = task_event("task-completed", STATUS, routes=["index.project.a,b", "x.*.#", "a..b"], **FIELDS)
    assert TaskclusterFormat().encode(event).cc == ["route.index.project.a,b", "route.x.*.#", "route.a..b"]


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ([""], "1 to 249 characters"),
        (["r" * 250], "1 to 249 characters"),
        ([f"r{n}" for n in range(65)], "at most 64 routes"),
        (["a", "a"], "unique"),
        ([5], "1 to 249 characters"),
    ],
)
def test_routes_taskcluster_refuses_are_refused(routes: list, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        task_event("task-completed", STATUS, routes=routes, **FIELDS)


def test_routes_written_by_an_earlier_tidings_still_read() -> None:
    event = task_event("task-completed", STATUS, **FIELDS)
    event.headers["taskcluster_routes"] = "index.a,notify.b"  # comma-joined, as 0.1 stored them
    assert TaskclusterFormat().encode(event).cc == ["route.index.a", "route.notify.b"]


@pytest.mark.parametrize(
    ("exchange", "body"),
    [
        ("exchange/other", b"{}"),
        (PREFIX + "task-failed", b"[]"),
        (PREFIX + "task-failed", b"\xff"),
        (PREFIX + "nope", b"{}"),
    ],
)
def test_garbage_gives_our_error(exchange: str, body: bytes) -> None:
    with pytest.raises(InvalidEvent):
        TaskclusterFormat().decode(WireMessage("primary.x", body, exchange=exchange))


@pytest.mark.rabbitmq
async def test_a_queue_bound_by_two_routes_gets_one_copy(rabbitmq: str) -> None:
    from tests.conftest import delete_amqp_topology
    from tidings.transport import Binding, ExchangeSpec, QueueSpec, Topology
    from tidings.transports.amqp import AmqpTransport

    prefix = f"exchange/test-{uuid.uuid4().hex[:6]}/v1/"
    fmt = TaskclusterFormat(prefix=prefix)
    queue = QueueSpec(
        f"queue/test/{uuid.uuid4().hex[:6]}",
        [
            Binding(prefix + "task-completed", "route.index.gecko.#"),
            Binding(prefix + "task-completed", "route.notify.#"),
        ],
    )
    transport = AmqpTransport(url=rabbitmq)
    await transport.connect()
    try:
        await transport.declare(Topology([ExchangeSpec(prefix + e) for e in EXCHANGES], [queue]))
        event = task_event(
            "task-completed", STATUS, routes=["index.gecko.v2.latest", "notify.email.x"], **FIELDS
        )
        (result,) = await transport.send("", [fmt.encode(event)])
        assert result.outcome.value == "delivered"
        stream = transport.consume(queue, prefetch=10)
        delivery = await anext(stream)  # type: ignore[arg-type]
        await delivery.ack()
        got = fmt.decode(delivery.message)
        assert (got.id, got.topic, got.body) == (event.id, event.topic, event.body)
        await stream.aclose()  # type: ignore[attr-defined]
        channel = await transport.channel()
        depth = await channel.queue_declare(queue.name, passive=True)
        assert depth.message_count == 0  # one copy, not two
    finally:
        await transport.close()
        await delete_amqp_topology(rabbitmq, [queue.name], [prefix + e for e in EXCHANGES])


@pytest.mark.rabbitmq
async def test_a_consumer_subscribed_to_a_route_gets_the_tasks_routed_by_it(
    tmp_path: Path, rabbitmq: str
) -> None:
    """Taskcluster's index, notify and Treeherder listen by route: RabbitMQ delivers the message
    by its CC key, but its topic is the primary key, which no handler's pattern matched, so it
    was acked without a call ("unhandled") — gone for the service that bound it."""
    import asyncio

    from tests.conftest import delete_amqp_topology
    from tests.faults.rig import write_config
    from tests.waiting import until
    from tidings import App, Bus, Event
    from tidings.config import load_config
    from tidings.transports.amqp import AmqpTransport

    prefix = f"exchange/test-{uuid.uuid4().hex[:6]}/v1/"
    config, _ = write_config(tmp_path)
    bus = Bus(load_config(config))
    app = App(
        f"queue/test/{uuid.uuid4().hex[:6]}",
        transport="rabbit",
        exchange=prefix + "task-completed",
        format="taskcluster",
        format_options={"prefix": prefix},
    )
    got: list[Event] = []
    app.subscribe("route.index.#")(got.append)
    await app.declare(bus)
    event = task_event("task-completed", STATUS, routes=["index.gecko.v2.latest"], **FIELDS)
    transport = AmqpTransport(url=rabbitmq)
    await transport.connect()
    stop = asyncio.Event()
    running = asyncio.create_task(app.run(bus, stop))
    try:
        (result,) = await transport.send("", [TaskclusterFormat(prefix=prefix).encode(event)])
        assert result.outcome.value == "delivered"
        await until(lambda: bool(got) or running.done(), 30)
    finally:
        stop.set()
        await asyncio.gather(running, return_exceptions=True)
        await transport.close()
        bus.close()
        await delete_amqp_topology(rabbitmq, [app.settings.queue], [prefix + "task-completed"])
    assert [e.id for e in got] == [event.id]
    assert (app.counters.handled, app.counters.unhandled) == (1, 0)


def test_the_docs_example_publishes_a_message_the_schema_takes(capsys: pytest.CaptureFixture[str]) -> None:
    page = Path(__file__).resolve().parents[2] / "docs" / "systems" / "taskcluster.md"
    code = page.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(code, scope)  # our own docs page
    event = scope["event"]
    SchemaRegistry.default().validate(event.type, event.body)
    assert event.topic == routing_key("task-completed", FIELDS)
    assert capsys.readouterr().out.splitlines()[-1] == "primary.*.*.*.*.*.b-linux.*.*.#"
