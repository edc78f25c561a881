"""`GET /openapi.json` describes the whole HTTP API (issue 17, item 8), and stays true:
every route the app serves is in it and nothing else, and schemathesis, driven by the
document against the running API on a real broker, finds every answer as documented
(no 5xx, status codes and bodies as described). The large fuzz run is `gemeentebus fuzz`."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from test_api_subscriptions import TOKENS, with_clients

from streams.config import Settings
from streams.http.api import make_api
from streams.http.openapi import OPENAPI_PATH, document
from streams.kafka.clients import make_producer
from streams.routing.store import SubscriptionStore

HERE = Path(__file__).parent
# per operation and phase; the closing note's run: GEMEENTEBUS_SCHEMATHESIS_EXAMPLES=200
EXAMPLES = int(os.environ.get("GEMEENTEBUS_SCHEMATHESIS_EXAMPLES", "15"))
METHODS = {"get", "put", "post", "delete", "patch"}


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    found = set()
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method in ("HEAD", "*"):
            continue
        found.add((route.method.lower(), resource.canonical))
    return found


def described_routes() -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in document()["paths"].items()
        for method in item
        if method in METHODS
    }


@pytest.fixture
async def app(settings: Settings, store: SubscriptionStore) -> AsyncIterator[web.Application]:
    producer = make_producer(settings, "openapi-test")
    await producer.start()
    try:
        yield make_api(with_clients(settings), producer=producer, store=store)
    finally:
        await producer.stop()


@pytest.mark.kafka
def test_every_served_route_is_described_and_nothing_else(
    app: web.Application, api_url: str
) -> None:
    served, described = served_routes(app), described_routes()
    assert served - described == set(), "served but not in /openapi.json"
    assert described - served == set(), "in /openapi.json but not served"


def test_the_document_is_openapi_3_1_that_schemathesis_loads() -> None:
    import schemathesis

    doc = document()
    assert doc["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_dict(doc)
    assert len(list(schema.get_all_operations())) == len(described_routes())
    json.dumps(doc)  # plain JSON


@pytest.fixture
async def api_url(app: web.Application) -> AsyncIterator[str]:
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield str(server.make_url(""))
    finally:
        await server.close()


@pytest.fixture
async def sink() -> AsyncIterator[str]:
    """A loopback webhook receiver that accepts everything (the callback check's too)."""

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", accept)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield str(server.make_url("/hook"))
    finally:
        await server.close()


async def schemathesis_run(
    url: str, sink: str, token: str, examples: int, out: Path, *extra: str
) -> tuple[int, str]:
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "fuzz_hooks",
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "GEMEENTEBUS_FUZZ_SINK": sink,
    }
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        url.rstrip("/") + OPENAPI_PATH,
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance",
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        str(examples),
        "--workers",
        "1",
        "--seed",
        "17",
        "--request-timeout",
        "30",
        "--no-color",
        *extra,
    ]
    proc = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        cwd=out,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    return await proc.wait(), output.decode(errors="replace")


@pytest.mark.kafka
@pytest.mark.parametrize("caller", ["beheer", "gemeente", "publisher"])
async def test_schemathesis_finds_every_answer_as_documented(
    api_url: str, sink: str, caller: str, tmp_path: Path
) -> None:
    code, output = await schemathesis_run(api_url, sink, TOKENS[caller], EXAMPLES, tmp_path)
    counts = [line.strip() for line in output.splitlines() if " generated" in line]
    print(f"\nschemathesis as {caller}: {counts[-1] if counts else '?'}")
    assert code == 0, output[-6000:]
