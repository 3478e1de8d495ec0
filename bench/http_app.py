"""The web service of the HTTP benchmark: one handler that publishes per request, one that does not.

uvicorn bench.http_app:app   (TIDINGS_BENCH_HOME names the bus's folder)
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tidings import Bus
from tidings.config import default_config

bus = Bus(default_config(Path(os.environ.get("TIDINGS_BENCH_HOME", "."))))
BODY = {"message": "x" * 1000}


async def publish(request: Request) -> JSONResponse:
    event = await bus.apublish("bench.http", BODY)  # durable when the response goes out
    return JSONResponse({"id": event.id})


async def noop(request: Request) -> JSONResponse:
    return JSONResponse({"id": None})


app = Starlette(routes=[Route("/publish", publish, methods=["POST"]), Route("/noop", noop, methods=["POST"])])
