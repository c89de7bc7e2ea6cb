"""Keys and docs on real servers: weak keys refused for a network bind, the API docs behind the key,
and OPTIONS naming every method of a path."""
from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from test_api import tiny_service
from test_server_cli import clean_env

KEY = "correct horse battery staple"
DOCS = ["/docs", "/redoc", "/openapi.json"]


def test_a_network_bind_refuses_a_short_api_key_and_names_the_minimum(tmp_path):
    result = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--host", "0.0.0.0", "--data-dir",
                             str(tmp_path)], env=clean_env(JEPA_API_KEY="x"), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "shorter than 16 characters" in result.stdout and "Traceback" not in result.stdout + result.stderr


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    with tiny_service(tmp_path_factory.mktemp("docs-data"), api_key=KEY) as running:
        yield running


@pytest.mark.parametrize("path", DOCS)
def test_docs_need_the_key_when_one_is_set(keyed, path):
    refused = httpx.get(keyed.url + path)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    assert refused.headers["www-authenticate"].startswith("Basic")  # a browser asks for it
    assert httpx.get(keyed.url + path, headers={"X-API-Key": "wrong"}).status_code == 401
    assert httpx.get(keyed.url + path, headers={"X-API-Key": KEY}).status_code == 200
    assert httpx.get(keyed.url + path, auth=("any user", KEY)).status_code == 200


def test_the_schema_behind_the_key_is_the_whole_api(keyed):
    schema = httpx.get(keyed.url + "/openapi.json", headers={"X-API-Key": KEY}).json()
    assert "/v1/goals" in schema["paths"] and "/openapi.json" not in schema["paths"]


def test_public_docs_setting_opens_them(tmp_path):
    with tiny_service(tmp_path, api_key=KEY, public_docs=True) as server:
        for path in DOCS:
            assert httpx.get(server.url + path).status_code == 200
        assert httpx.get(server.url + "/v1/goals").status_code == 401


def test_options_allow_lists_every_method_of_the_path(keyed):
    response = httpx.options(keyed.url + "/v1/goals/0123")
    assert response.status_code == 204
    assert set(response.headers["allow"].split(", ")) == {"GET", "DELETE", "OPTIONS"}
    assert set(httpx.options(keyed.url + "/v1/goals").headers["allow"].split(", ")) == {"GET", "POST", "OPTIONS"}
    assert httpx.options(keyed.url + "/no/such/path").status_code == 404
    wrong = httpx.put(keyed.url + "/v1/goals/0123", headers={"X-API-Key": KEY})
    assert wrong.status_code == 405 and {"GET", "DELETE"} <= set(wrong.headers["allow"].split(", "))
