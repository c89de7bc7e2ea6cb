"""API key protection on a real server: every /v1 route and /metrics need it, health does not."""
from __future__ import annotations

import httpx
import pytest

from test_api import png_bytes, tiny_service

KEY = "correct horse battery staple"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with tiny_service(tmp_path_factory.mktemp("auth-data"), api_key=KEY) as running:
        yield running


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/goals"), ("POST", "/v1/goals"), ("GET", "/v1/goals/x"), ("DELETE", "/v1/goals/x"),
    ("GET", "/v1/goals/x/image"), ("GET", "/v1/sessions"), ("POST", "/v1/sessions"), ("GET", "/v1/sessions/x"),
    ("POST", "/v1/sessions/x/act"), ("POST", "/v1/sessions/x/stop"), ("GET", "/v1/sessions/x/steps"),
    ("GET", "/v1/model"), ("GET", "/metrics"),
])
@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY[:-1]},
                                     {"Authorization": "Bearer wrong"}])
def test_protected_routes_refuse_a_missing_or_wrong_key(server, method, path, headers):
    response = httpx.request(method, server.url + path, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_health_and_readiness_are_open(server):
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200


def test_the_right_key_in_header_or_bearer_is_accepted(server):
    upload = httpx.post(server.url + "/v1/goals", headers={"X-API-Key": KEY},
                        files={"image": ("g.png", png_bytes(1), "image/png")})
    assert upload.status_code == 201
    goal_id = upload.json()["id"]
    assert httpx.get(f"{server.url}/v1/goals/{goal_id}", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    metrics = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert metrics.status_code == 200 and "jepa_http_requests_total" in metrics.text
