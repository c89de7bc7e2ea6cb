"""Settings precedence (flags > env > config file > defaults) and the refusal to serve openly without a key."""
from __future__ import annotations

import json

import pytest

from server.engine import effective_planner_config
from server.settings import SettingsError, is_loopback_host, load_settings


@pytest.fixture(autouse=True)
def no_jepa_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("JEPA_"):
            monkeypatch.delenv(name)


def test_defaults_serve_the_demo_model_on_loopback():
    settings = load_settings()
    assert (settings.model, settings.host, settings.port, settings.device) == ("demo", "127.0.0.1", 8000, "auto")
    assert settings.api_key is None and settings.bridge.startswith("tcp://127.0.0.1")
    settings.check_safe_to_serve()


@pytest.mark.parametrize("suffix, text", [
    (".toml", 'model = "small"\nport = 9001\n[planner]\nsamples = 64\n'),
    (".yaml", "model: small\nport: 9001\nplanner:\n  samples: 64\n"),
    (".json", json.dumps({"model": "small", "port": 9001, "planner": {"samples": 64}})),
])
def test_config_file_in_each_format(tmp_path, monkeypatch, suffix, text):
    config = tmp_path / f"jepa{suffix}"
    config.write_text(text)
    monkeypatch.setenv("JEPA_CONFIG", str(config))
    settings = load_settings()
    assert (settings.model, settings.port, settings.planner) == ("small", 9001, {"samples": 64})


def test_flags_beat_environment_beat_file(tmp_path, monkeypatch):
    config = tmp_path / "jepa.toml"
    config.write_text('model = "small"\nport = 9001\ndevice = "cpu"\n')
    monkeypatch.setenv("JEPA_CONFIG", str(config))
    monkeypatch.setenv("JEPA_PORT", "9002")
    monkeypatch.setenv("JEPA_PLANNER__SAMPLES", "32")
    settings = load_settings(model="tiny", port=None)
    assert (settings.model, settings.port, settings.device) == ("tiny", 9002, "cpu")
    assert effective_planner_config(settings.planner, {})["samples"] == 32  # env strings are coerced when validated


@pytest.mark.parametrize("name, text, words", [
    ("jepa.ini", "x", "toml"),
    ("absent.toml", None, "no such file"),
    ("jepa.toml", 'port = "eighty"', "port"),
    ("jepa.toml", "unknown_setting = 1", "unknown_setting"),
    ("jepa.yaml", "port: [1, 2", "invalid settings"),
])
def test_bad_config_is_a_clear_error(tmp_path, monkeypatch, name, text, words):
    config = tmp_path / name
    if text is not None:
        config.write_text(text)
    monkeypatch.setenv("JEPA_CONFIG", str(config))
    with pytest.raises(SettingsError, match=words):
        load_settings()


def test_network_bind_needs_an_api_key(monkeypatch):
    with pytest.raises(SettingsError, match="API key"):
        load_settings(host="0.0.0.0").check_safe_to_serve()
    load_settings(host="0.0.0.0", api_key="k" * 16).check_safe_to_serve()
    monkeypatch.setenv("JEPA_API_KEY", "")  # an empty key is no key
    with pytest.raises(SettingsError):
        load_settings(host="::").check_safe_to_serve()


def test_network_bind_refuses_a_short_api_key_and_names_the_minimum():
    with pytest.raises(SettingsError, match="shorter than 16 characters"):
        load_settings(host="0.0.0.0", api_key="k" * 15).check_safe_to_serve()
    load_settings(host="127.0.0.1", api_key="k").check_safe_to_serve()  # loopback: any key is the operator's choice


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.5", False), ("robot-server.lan", False)])
def test_loopback_detection(host, loopback):
    assert is_loopback_host(host) is loopback
