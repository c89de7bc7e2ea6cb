"""Service settings: defaults < config file (`JEPA_CONFIG`) < `JEPA_*` environment < command-line flags.

The config file may be TOML, YAML or JSON (chosen by its extension) and uses the same field names,
e.g. `model = "/weights/vitg-384-ac.pt"` or a `[planner]` table of planner overrides. Nested values
can also come from the environment with a double underscore: `JEPA_PLANNER__SAMPLES=256`.
"""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

CONFIG_ENV_VAR = "JEPA_CONFIG"
MIN_NETWORK_API_KEY_LENGTH = 16  # a network-reachable key must resist guessing
_CONFIG_SOURCES = {
    ".toml": TomlConfigSettingsSource,
    ".yaml": YamlConfigSettingsSource,
    ".yml": YamlConfigSettingsSource,
    ".json": JsonConfigSettingsSource,
}
_FILE_KEYWORD = {TomlConfigSettingsSource: "toml_file", YamlConfigSettingsSource: "yaml_file",
                 JsonConfigSettingsSource: "json_file"}


# The compute budget of one plan, in token-rollouts: samples x iterations x horizon x tokens per frame of the
# loaded model. The rule: what the device rolls out in about 3 s. The default, 256 x 10 x 4 x 16 (the demo
# model has 16 tokens per frame), is ~3.2 s of one thread of the 2-core dev CPU (`bench plan --threads 1`
# does 40,960 in 0.80 s). Raise it for a faster device (README "Compute budget").
DEFAULT_PLAN_BUDGET = 256 * 10 * 4 * 16


class SettingsError(ValueError):
    """The configuration cannot be used; the message says what to change."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "jepa-planner"


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="JEPA_", env_nested_delimiter="__", extra="forbid", validate_default=True,
    )

    model: str = Field("demo", description="preset name (demo, tiny, small, ac_vit_giant) or a .pt/.safetensors checkpoint")
    device: str = Field("auto", description="auto (cuda if available), cpu, cuda, cuda:1, ...")
    random_init_seed: int | None = Field(
        None, description="the control for 'does training matter': the model's architecture with random weights (this seed)")
    dtype: Literal["float32", "bfloat16", "float64"] = Field(
        "float32", description="bfloat16 keeps float32 weights and runs under autocast (CUDA)")
    host: str = Field("127.0.0.1", description="HTTP bind address; non-loopback needs an API key")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0 picks a free one)")
    bridge: str = Field("tcp://127.0.0.1:5555", description="ZeroMQ bridge endpoint; empty disables the bridge")
    bridge_secret_key: Path | None = Field(None, description="the service's CURVE .key_secret (needed off loopback)")
    bridge_authorized_keys: Path | None = Field(None, description="folder of admitted arm public keys, one ROBOT_ID.key per arm; a key may claim only that robot id")
    bridge_plan_timeout_s: float = Field(60.0, gt=0, description="longest a bridge observation waits for its plan")
    act_timeout_s: float = Field(30.0, gt=0, allow_inf_nan=False,
                                 description="longest an HTTP act may take from arrival; a later plan is discarded")
    plan_budget: int = Field(DEFAULT_PLAN_BUDGET, gt=0, description="most one plan may cost: samples x iterations x horizon x "
                                                        "tokens per frame of the loaded model (more is refused, 422)")
    plan_batch_max: int = Field(32, ge=1, description="most sessions planned in one scheduler round (1: one at a time)")
    # Scale-out on Ray Serve (server/ray_backend.py; needs the [ray] extra). 0 replicas and no address: plan locally.
    replicas: int = Field(0, ge=0, description="model replicas on Ray Serve that plan the rounds (0: plan in this "
                          "process); with ray_address, 0 means one per GPU of the cluster (at least one)")
    ray_address: str | None = Field(None, description="an existing Ray cluster (ray://head:10001 or auto); without it, "
                                    "replicas > 0 starts a local Ray on loopback")
    replica_cpus: float = Field(1.0, gt=0, description="CPUs per replica when the cluster has no GPU (one GPU each otherwise)")
    data_dir: Path = Field(default_factory=default_data_dir, description="goals, latents and session history")
    api_key: SecretStr | None = Field(None, description="required in X-API-Key (or Authorization: Bearer) when set")
    max_upload_bytes: int = Field(8 * 1024 * 1024, gt=0, description="largest accepted request body")
    max_image_pixels: int = Field(2048 * 2048, gt=0, description="largest accepted width*height, checked before "
                                  "decoding (4 MP: one decode stays within tens of MB)")
    planner: dict[str, Any] = Field(default_factory=dict, description="PlannerConfig overrides for every session")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # Hostile clients and broken disks (see server/API.md, "Limits").
    max_connections: int = Field(1000, ge=8, description="open HTTP connections at most (lowered to fit the "
                                 "descriptor limit); at the cap a new connection evicts the longest-idle one")
    http_header_timeout_s: float = Field(10.0, gt=0, allow_inf_nan=False, description="a connection must send a "
                                         "request's headers within this long of opening or of its last answer")
    http_body_timeout_s: float = Field(30.0, gt=0, allow_inf_nan=False,
                                       description="a request's whole body must arrive within this long (else 408)")
    http_keep_alive_s: float = Field(5.0, gt=0, allow_inf_nan=False, description="idle keep-alive connections close after this")
    max_concurrent_decodes: int = Field(2, ge=1, description="images decoded at once; more wait, then get 503")
    decode_wait_s: float = Field(10.0, ge=0, allow_inf_nan=False, description="longest a decode waits for a slot")
    public_docs: bool = Field(False, description="serve /docs, /redoc and /openapi.json without the API key")

    @field_validator("api_key")
    @classmethod
    def _empty_key_means_none(cls, key: SecretStr | None) -> SecretStr | None:
        return key if key is not None and key.get_secret_value() else None

    @property
    def scale_out(self) -> bool:
        """Plans run on Ray Serve replicas (`replicas` or `ray_address` set)."""
        return self.replicas > 0 or bool(self.ray_address)

    @field_validator("data_dir")
    @classmethod
    def _expand_user(cls, path: Path) -> Path:
        return path.expanduser()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_path = os.environ.get(CONFIG_ENV_VAR)
        if config_path:
            sources.append(_config_file_source(settings_cls, Path(config_path).expanduser()))
        return tuple(sources)

    def bind_is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    def check_safe_to_serve(self) -> None:
        """Refuse an open network bind without an API key: anyone on the network could drive the robot."""
        if not self.bind_is_loopback() and self.api_key is None:
            raise SettingsError(
                f"refusing to listen on {self.host!r} without an API key: set --api-key or JEPA_API_KEY, "
                "or bind 127.0.0.1"
            )
        if not self.bind_is_loopback() and len(self.api_key.get_secret_value()) < MIN_NETWORK_API_KEY_LENGTH:
            raise SettingsError(
                f"refusing to listen on {self.host!r} with an API key shorter than {MIN_NETWORK_API_KEY_LENGTH} "
                "characters: use a random one, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def _config_file_source(settings_cls: type[BaseSettings], path: Path) -> PydanticBaseSettingsSource:
    source_cls = _CONFIG_SOURCES.get(path.suffix.lower())
    if source_cls is None:
        raise SettingsError(f"{CONFIG_ENV_VAR}={path}: use a .toml, .yaml, .yml or .json file")
    if not path.is_file():
        raise SettingsError(f"{CONFIG_ENV_VAR}={path}: no such file")
    return source_cls(settings_cls, **{_FILE_KEYWORD[source_cls]: path})


def load_settings(**overrides: Any) -> ServerSettings:
    """Settings from every source; `overrides` (command-line flags) win. None values are ignored."""
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return ServerSettings(**given)
    except SettingsError:
        raise
    except Exception as error:  # pydantic.ValidationError and each file format's own parse error
        raise SettingsError(f"invalid settings: {error}") from error
