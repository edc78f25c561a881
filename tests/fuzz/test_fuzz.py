"""Fuzzing the two doors of the bus (issue 17, item 8), on a real broker.

- HTTP: hypothesis-drawn bad CloudEvents (structured, batch, binary, not JSON, wrong media
  type, too large, rules broken) posted to a running bus: every one a 4xx with a code, none
  a 5xx, none accepted. The schemathesis run over the whole API is in
  tests/streams/http/test_openapi.py (`GEMEENTEBUS_SCHEMATHESIS_EXAMPLES` sizes it).
- Kafka: hypothesis-drawn bad records into ingress (null, non-UTF-8 and missing headers,
  unknown types, truncated, trailing and random Avro, tombstones, oversize values, broken
  rules): every one in the invalid topic with its reason, none in an events topic, and the
  worker alive after them.

Each test prints one JSON line with its counts (inputs, answers or reasons by code). The
suite draws a few hundred; the closing note's run draws 10,000 a side:
`GEMEENTEBUS_FUZZ_INPUTS=10000 pytest tests/fuzz -s -p no:cacheprovider`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections import Counter
from typing import Any

import aiohttp
import pytest
from strategies import HttpInput, KafkaInput, collect, http_inputs, kafka_inputs

from streams.config import ClientConfig, Settings
from streams.contract.headers import ERROR_HEADER
from streams.contract.schemas import registry
from streams.kafka.clients import make_producer
from streams.kafka.topics import Topics
from streams.runner import running_bus

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

INPUTS = int(os.environ.get("GEMEENTEBUS_FUZZ_INPUTS", "300"))
TOKEN = "fuzz-publisher-token"
CONCURRENCY = 8


def publishing(settings: Settings) -> Settings:
    client = ClientConfig(
        id="fuzzer",
        token_sha256=hashlib.sha256(TOKEN.encode()).hexdigest(),
        publish={"types": ["*"], "sources": ["*"]},  # type: ignore[arg-type]
    )
    return settings.model_copy(
        update={"http": settings.http.model_copy(update={"port": 0}), "clients": (client,)}
    )


async def post(session: aiohttp.ClientSession, url: str, item: HttpInput) -> tuple[int, str]:
    headers = {"Content-Type": item.content_type, **dict(item.headers)}
    async with session.post(url, data=item.body, headers=headers) as response:
        text = await response.text()
    try:
        code = json.loads(text).get("code", "?")
    except (ValueError, AttributeError):
        code = "(not JSON)"
    return response.status, code


async def test_bad_cloudevents_over_http_are_each_a_4xx_with_a_code(settings: Settings) -> None:
    settings = publishing(settings)
    inputs = collect(http_inputs(settings.http.max_event_bytes), INPUTS)
    answers: Counter[tuple[int, str]] = Counter()
    kinds: Counter[str] = Counter()
    accepted: list[str] = []
    async with running_bus(settings, role="api") as bus:
        url = f"{bus.url}/events"
        gate = asyncio.Semaphore(CONCURRENCY)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:

            async def one(item: HttpInput) -> None:
                async with gate:
                    status, code = await post(session, url, item)
                answers[(status, code)] += 1
                kinds[item.kind] += 1
                if status < 400:
                    accepted.append(item.kind)

            await asyncio.gather(*(one(item) for item in inputs))
    by_status = Counter(status for status, _ in answers.elements())
    report = {
        "side": "http",
        "inputs": len(inputs),
        "answers": {f"{s} {c}": n for (s, c), n in sorted(answers.items())},
        "kinds": dict(sorted(kinds.items())),
        "5xx": sum(n for s, n in by_status.items() if s >= 500),
    }
    print("\n" + json.dumps(report))
    assert len(inputs) >= INPUTS * 0.9
    assert accepted == [], f"bad input accepted: {Counter(accepted)}"
    assert report["5xx"] == 0
    assert all(400 <= s < 500 for s in by_status)
    assert all(code not in ("?", "(not JSON)") for _, code in answers)


def _readable_id(item: KafkaInput) -> bool:
    value = dict(item.headers).get("ce_id")
    if value is None:
        return False
    try:
        return value.decode() != ""  # an empty id is what the input breaks: keep it
    except UnicodeDecodeError:
        return False


def tracked(item: KafkaInput, n: int) -> list[tuple[str, bytes | None]]:
    """The input's headers with `ce_id` saying which input it is (the bus drops publishers'
    keys and redacts other headers of a dead letter), unless the fuzz broke `ce_id` itself."""
    if not _readable_id(item):
        return list(item.headers)
    return [(k, f"fuzz-{n}".encode() if k == "ce_id" else v) for k, v in item.headers]


async def test_bad_records_into_ingress_each_land_in_the_invalid_topic_with_a_reason(
    settings: Settings, bus_topics: Topics, read_topic: Any
) -> None:
    inputs = collect(kafka_inputs(settings.http.max_event_bytes), INPUTS)
    topics = Topics(settings.kafka.topic_prefix)
    producer = make_producer(settings, "fuzz", max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        for n, item in enumerate(inputs):
            await producer.send(topics.ingress, item.value, key=b"fuzz", headers=tracked(item, n))
        await producer.flush()
    finally:
        await producer.stop()
    async with running_bus(settings, role="worker"):
        rejected = await read_topic(topics.invalid, count=len(inputs), within=180)
        leaked = {
            t: await read_topic(topics.events(t), count=1, within=1) for t in registry().types()
        }
    reasons = Counter(
        (dict(r.headers).get(ERROR_HEADER) or b"(none)").decode(errors="replace") for r in rejected
    )
    seen = Counter(dict(r.headers).get("ce_id") for r in rejected)
    kinds = Counter(item.kind for item in inputs)
    missing = [
        inputs[n].kind
        for n in range(len(inputs))
        if _readable_id(inputs[n]) and f"fuzz-{n}".encode() not in seen
    ]
    report = {
        "side": "kafka",
        "inputs": len(inputs),
        "invalid_topic_records": len(rejected),
        "reasons": dict(sorted(reasons.items())),
        "kinds": dict(sorted(kinds.items())),
        "in_events_topics": sum(len(rs) for rs in leaked.values()),
        "missing": dict(Counter(missing)),
    }
    print("\n" + json.dumps(report))
    assert len(inputs) >= INPUTS * 0.9
    assert report["in_events_topics"] == 0, "a bad record was routed"
    assert missing == [], "a bad record is not in the invalid topic"
    assert len(rejected) == len(inputs), "duplicates in a fault-free run"
    assert "(none)" not in reasons
