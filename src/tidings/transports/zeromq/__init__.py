"""Transport ``zeromq``: PUB/SUB multipart frames, as fedmsg and LAVA publish (best effort).

The transport itself is in :mod:`.transport` (it imports pyzmq); this module describes the
plug-in and its options.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta

from tidings.plugins import Plugin, Settings


class ZeroMQSettings(Settings):
    #: ``tcp://host:port`` (``tcp://*:port`` to bind every interface), or a list: a subscriber
    #: hears every publisher in it (fedmsg's endpoints); a socket binds or connects each
    endpoint: str | list[str]
    #: ``bind``: the publisher binds, subscribers connect; ``connect``: the other way round
    mode: Literal["bind", "connect"] = "bind"
    #: messages queued per peer before ZeroMQ drops (the high-water mark)
    hwm: Annotated[int, Meta(ge=0)] = 10_000
    #: seconds the publisher waits after opening its socket, for subscribers to join
    settle: Annotated[float, Meta(ge=0)] = 0.5


PLUGIN = Plugin(
    "zeromq", "tidings.transports.zeromq.transport:ZeroMQTransport", ZeroMQSettings, "zeromq", ("zmq",)
)


def __getattr__(name: str) -> Any:
    if name in ("ZeroMQTransport", "ZeroMQDelivery", "prefix_of", "to_frames", "to_wire"):
        from tidings.transports.zeromq import transport

        return getattr(transport, name)
    raise AttributeError(name)
