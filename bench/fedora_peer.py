"""fedora-messaging as a peer in the benchmarks, in its own process (it runs Twisted via crochet).

python -m bench.fedora_peer publish N EXCHANGE      -> prints messages/s of api.publish
python -m bench.fedora_peer consume N QUEUE EXCHANGE -> fills QUEUE with N messages, prints consume rate
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

BODY = {"message": "x" * 1000}


def configure(exchange: str) -> None:
    conf = Path(tempfile.mkdtemp()) / "fedora-messaging.toml"
    conf.write_text(
        f'amqp_url = "amqp://guest:guest@127.0.0.1:5672/%2F"\npublish_exchange = "{exchange}"\n'
        'passive_declares = false\n[client_properties]\napp = "tidings-bench"\n'
    )
    os.environ["FEDORA_MESSAGING_CONF"] = str(conf)


def publish(n: int, exchange: str) -> float:
    from fedora_messaging import api, message

    msgs = [message.Message(topic="bench.fedora", body=BODY) for _ in range(n + 1)]
    api.publish(msgs[0])  # connect outside the clock
    start = time.perf_counter()
    for msg in msgs[1:]:
        api.publish(msg)
    return n / (time.perf_counter() - start)


def consume(n: int, queue: str, exchange: str) -> float:
    from fedora_messaging import api, exceptions, message

    for _ in range(n):
        api.publish(message.Message(topic=f"{queue}.fill", body=BODY))
    seen = {"count": 0, "start": 0.0}

    def callback(msg: message.Message) -> None:
        if seen["count"] == 0:
            seen["start"] = time.perf_counter()
        seen["count"] += 1
        if seen["count"] >= n:
            raise exceptions.HaltConsumer(exit_code=0)

    bindings = [{"exchange": exchange, "queue": queue, "routing_keys": [f"{queue}.#"]}]
    queues = {queue: {"durable": False, "auto_delete": True, "exclusive": False, "arguments": {}}}
    try:
        api.consume(callback, bindings=bindings, queues=queues)
    except exceptions.HaltConsumer:
        pass
    return (n - 1) / (time.perf_counter() - seen["start"])


if __name__ == "__main__":
    role, count, *rest = sys.argv[1:]
    configure(rest[-1])
    if role == "publish":
        print(publish(int(count), rest[0]))
    else:
        print(consume(int(count), rest[0], rest[1]))
