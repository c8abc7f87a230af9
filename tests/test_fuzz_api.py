"""Fuzzing the API of the real server: every route that takes a body (found in our OpenAPI schema) gets
random invalid bodies from hypothesis; none may answer a 5xx, and the server must stay up.

Bodies are built from the route's schema: a small valid-looking base (64x64, 1 step, so an accidentally
valid request is cheap) with some fields replaced by hostile values (wrong types, huge or non-finite
numbers, junk strings and images, deep nesting), plus bodies that are not JSON objects at all.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api_server import client, data_dir_with, server  # noqa: F401  (shared module fixtures)

EXAMPLES = 40
BASE = {"width": 64, "height": 64, "steps": 1, "n_iter": 1, "batch_size": 1, "prompt": "fuzz"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return data_dir_with(tmp_path_factory.mktemp("fuzz"), ("a", "sd1", 0))


class Raw(str):
    """A body sent verbatim (not JSON-encoded by the test)."""


hostile_numbers = st.sampled_from([-1, 0, 3, 7, -2**63, 2**63, 2**70, 10**400, 1e308, -1e308, 0.5, -0.0,
                                   float("nan"), float("inf"), float("-inf"), True, False])
hostile_strings = st.one_of(
    st.sampled_from(["", " ", "\x00", "../../etc/passwd", "/etc/passwd", "a" * 100_000, "☃" * 1000,
                     "data:image/png;base64,", "data:image/png;base64,AAAA", "iVBORw0KGgo=", "%s%s%n",
                     "http://127.0.0.1:1/x.png", "Euler a", "Automatic", "None", "task(1)", "{}", "null"]),
    st.text(max_size=40))
hostile_leaf = st.one_of(hostile_numbers, hostile_strings, st.none(), st.just([]), st.just({}))
hostile_values = st.recursive(hostile_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=10)

RAW_BODIES = [
    Raw(""), Raw("{"), Raw("not json"), Raw("[" * 100_000 + "]" * 100_000), Raw('{"a":' * 50_000 + "1" + "}" * 50_000),
    Raw('{"steps": ' + "9" * 5000 + "}"), Raw('{"width": 1e999}'), Raw('{"prompt": "\\ud800"}'), Raw("\xff\xfe"),
    Raw('{"prompt": "x", "prompt": 5}'), Raw("NaN"), Raw("[]"), Raw("null"), Raw('"a string"'), Raw("12"),
]


def _body_strategy(properties: list[str]) -> st.SearchStrategy:
    names = st.sampled_from(properties) if properties else st.text(max_size=12)
    mutated = st.dictionaries(st.one_of(names, st.text(max_size=12)), hostile_values, min_size=1, max_size=4)
    objects = mutated.map(lambda changes: {**BASE, **changes})
    # not `{}`: an empty body is a valid request (A1111's defaults: 512x512, 50 steps), not an invalid one
    not_objects = st.one_of(hostile_numbers, hostile_strings, st.none(), st.lists(hostile_values, max_size=3))
    return st.one_of(objects, objects, not_objects, st.sampled_from(RAW_BODIES))


def _schema_properties(spec: dict, schema: dict) -> list[str]:
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].split("/")[-1]]
    props = list(schema.get("properties", {}))
    for sub in schema.get("allOf", []) + schema.get("anyOf", []):
        props += _schema_properties(spec, sub)
    return props


def body_routes(spec: dict) -> list[tuple[str, str, list[str]]]:
    out = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            content = op.get("requestBody", {}).get("content", {}).get("application/json")
            if content is not None:
                out.append((method.upper(), path, _schema_properties(spec, content.get("schema", {}))))
    return out


def send(client: httpx.Client, method: str, path: str, body: Any) -> httpx.Response:
    if isinstance(body, Raw):
        data = body.encode("utf-8", "surrogatepass")
    else:
        data = json.dumps(body, allow_nan=True).encode()
    return client.request(method, path, content=data, headers={"content-type": "application/json"}, timeout=60)


def _reset(client: httpx.Client) -> None:
    """Undo settings a fuzzed /options call may have changed to something awkward."""
    client.post("/sdapi/v1/options", json={"samples_save": False, "queue_max_size": 32, "img_max_pixels": 64_000_000,
                                            "max_request_mb": 50})


def test_openapi_lists_the_body_routes(client):
    spec = client.get("/openapi.json").json()
    paths = {path for _, path, _ in body_routes(spec)}
    assert {"/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/options", "/sdapi/v1/png-info",
            "/sdapi/v1/extra-single-image", "/sdapi/v1/extra-batch-images", "/internal/progress"} <= paths


def test_random_invalid_bodies_never_answer_5xx(client):
    spec = client.get("/openapi.json").json()
    _reset(client)
    failures: list[str] = []
    for method, path, properties in body_routes(spec):

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(body=_body_strategy(properties))
        def fuzz(body):
            shown = body[:200] if isinstance(body, str) else json.dumps(body, allow_nan=True)[:300]
            try:
                response = send(client, method, path, body)
            except httpx.TimeoutException:
                failures.append(f"{method} {path} {shown} -> timed out")
                return
            if response.status_code >= 500:
                failures.append(f"{method} {path} {shown} -> {response.status_code} {response.text[:300]}")

        fuzz()
        _reset(client)
        assert client.get("/healthz").status_code == 200, f"server down after fuzzing {path}"
    assert not failures, "\n".join(failures[:20])


@given(job_id=st.text(min_size=1, max_size=60), flag=st.text(max_size=10))
@settings(max_examples=EXAMPLES, deadline=None, database=None)
def test_path_and_query_parameters(client, job_id, flag):
    quoted = "/sdapi/v1/jobs/" + quote(job_id, safe="")
    for method, path in (("GET", quoted), ("POST", quoted + "/cancel"), ("POST", quoted + "/interrupt")):
        assert client.request(method, path).status_code < 500
    assert client.get("/sdapi/v1/progress", params={"skip_current_image": flag}).status_code < 500
