"""Property test of the HTTP API from its own OpenAPI schema: no generated request, valid or not,
may produce a 5xx (or a non-JSON error) from a real server."""
from __future__ import annotations

import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from server.local_server import LocalServer
from server.serve_command import build_service
from server.settings import ServerSettings
from test_api import FAST_PLANNER, png_bytes

KEY = "fuzz-key"
EXAMPLES_PER_OPERATION = 20  # x 15 operations x 2 modes: a bounded run of some seconds


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    service_settings = ServerSettings(model="tiny", device="cpu", bridge="", planner=FAST_PLANNER, api_key=KEY,
                                      data_dir=tmp_path_factory.mktemp("fuzz-data"), max_upload_bytes=512 * 1024)
    with LocalServer(build_service(service_settings)) as running:
        running.wait_ready()
        yield running


def test_no_generated_request_gets_a_server_error(server):
    http = httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=60)
    # Real resources too, so that generated ids sometimes exist and deeper code paths run.
    goal = http.post("/v1/goals", files={"image": ("g.png", png_bytes(1), "image/png")}).json()
    http.post("/v1/sessions", json={"robot_id": "fuzz-arm", "goal_id": goal["id"]})
    schema = schemathesis.openapi.from_dict(http.get("/openapi.json").json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    failures: list[str] = []
    started = time.perf_counter()
    requests = 0
    timings: list[tuple[float, str]] = []

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode), with_key=st.booleans())
            def check(case, with_key):
                nonlocal requests
                response = case.call(base_url=server.url, headers={"X-API-Key": KEY} if with_key else {})
                requests += 1
                problem = None
                if response.status_code >= 500:
                    problem = f"{response.status_code}"
                elif response.status_code >= 400 and "error" not in (response.json() or {}):
                    problem = f"{response.status_code} without the JSON error body"
                if problem:
                    failures.append(f"{operation.label} [{mode}]: {problem}: {response.text[:200]}\n  {case.as_curl_command()}")

            op_started = time.perf_counter()
            try:
                check()
            except Unsatisfiable:  # no invalid input exists for an operation without parameters
                assert mode is GenerationMode.NEGATIVE
            timings.append((time.perf_counter() - op_started, f"{operation.label} [{mode}]"))

    print(f"\nschemathesis: {requests} requests over {len(operations)} operations in {time.perf_counter() - started:.1f} s")
    print("slowest:", ", ".join(f"{label} {seconds:.1f} s" for seconds, label in sorted(timings)[-3:]))
    assert http.get("/healthz").status_code == 200
    assert not failures, "\n".join(failures[:10])
