"""`jepa-planner serve`: the HTTP API and the ZeroMQ bridge in one process, sharing one model.

Every flag can also come from the environment (`JEPA_HOST`, `JEPA_PORT`, `JEPA_BRIDGE`,
`JEPA_DATA_DIR`, `JEPA_API_KEY`, `JEPA_MODEL`, `JEPA_DEVICE`, `JEPA_DTYPE`, ...) or from a config
file named by `JEPA_CONFIG` (or `--config`); flags win over the environment, which wins over the file.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sqlite3
import sys
import threading

import uvicorn

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("server.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 2)[2]
    parser.add_argument("--config", help="TOML, YAML or JSON settings file (env JEPA_CONFIG)")
    parser.add_argument("--host", help="HTTP bind address (default 127.0.0.1; others need an API key)")
    parser.add_argument("--port", type=int, help="HTTP port (default 8000; 0 picks a free one)")
    parser.add_argument("--bridge", help="ZeroMQ endpoint for arms (default tcp://127.0.0.1:5555; '' disables)")
    parser.add_argument("--bridge-secret-key", help="service CURVE .key_secret file (required off loopback)")
    parser.add_argument("--bridge-authorized-keys", help="folder of admitted arm public keys, one ROBOT_ID.key per arm (a key may claim only that robot id)")
    parser.add_argument("--data-dir", help="goals, latents and session history (default ~/.local/share/jepa-planner)")
    parser.add_argument("--api-key", help="API key clients send in X-API-Key (prefer env JEPA_API_KEY: "
                                          "command lines are visible to other users)")
    parser.add_argument("--model", help="preset name (demo, tiny, small, ac_vit_giant) or a .pt/.safetensors file "
                                        "(default: the embedded demo model)")
    parser.add_argument("--random-init", type=int, metavar="SEED", dest="random_init_seed",
                        help="the model's architecture with random weights from SEED (the untrained control)")
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float64"], help="compute dtype (default float32)")
    parser.add_argument("--replicas", type=int, help="plan on K model replicas on Ray Serve (a local Ray on loopback "
                        "unless --ray-address; one GPU each when there are GPUs, else --replica-cpus CPUs); needs the "
                        "[ray] extra")
    parser.add_argument("--ray-address", help="plan on replicas in this Ray cluster (ray://head:10001, or auto)")
    parser.add_argument("--replica-cpus", type=float, help="CPUs per replica on a cluster without GPUs (default 1)")
    parser.add_argument("--max-upload-bytes", type=int, help="largest request body (default 8 MiB)")
    parser.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])


def settings_from_args(args: argparse.Namespace):
    from .settings import CONFIG_ENV_VAR, load_settings

    if args.config:
        os.environ[CONFIG_ENV_VAR] = args.config
    return load_settings(
        host=args.host, port=args.port, bridge=args.bridge, bridge_secret_key=args.bridge_secret_key,
        bridge_authorized_keys=args.bridge_authorized_keys, data_dir=args.data_dir, api_key=args.api_key,
        model=args.model, random_init_seed=args.random_init_seed, device=args.device, dtype=args.dtype, max_upload_bytes=args.max_upload_bytes,
        log_level=args.log_level, replicas=args.replicas, ray_address=args.ray_address, replica_cpus=args.replica_cpus,
    )


def build_service(settings):
    """The service with the real world model and planner (loaded on the worker at app startup)."""
    from .engine import effective_planner_config, load_engine
    from .service import PlanningService

    effective_planner_config(settings.planner, {})  # a bad config file fails now, not at the first session
    loader = load_engine
    if settings.scale_out:  # ray is imported only here: without --replicas / --ray-address nothing changes
        from .ray_backend import connect_ray, load_ray_engine

        connection = connect_ray(settings)
        loader = lambda settings: load_ray_engine(settings, connection)  # noqa: E731
    return PlanningService(settings, loader, lambda overrides: effective_planner_config(settings.planner, overrides))


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run(args: argparse.Namespace) -> int:
    # The signal mask survives exec: a parent that had SIGTERM blocked (a supervisor, a test runner, a library in
    # it) would leave it pending in every thread we start, so a shutdown would wait for the plan in hand, or forever.
    # Unblocked here, before any thread starts, they reach the handlers `_Server` installs.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    from .errors import ServiceError, StorageUnusable
    from .ray_backend import RayUnavailable  # imports no ray
    from .settings import SettingsError

    try:
        settings = settings_from_args(args)
        settings.check_safe_to_serve()
    except (SettingsError, ServiceError) as error:
        print(f"jepa-planner serve: {error}")
        return EXIT_USAGE
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        service = build_service(settings)
    except ServiceError as error:
        print(f"jepa-planner serve: {error.message}")
        return EXIT_USAGE
    except RayUnavailable as error:  # --replicas / --ray-address without the [ray] extra
        print(f"jepa-planner serve: {error}")
        return EXIT_USAGE
    except StorageUnusable as error:  # one line naming the file and what to do, no traceback
        print(f"jepa-planner serve: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except sqlite3.DatabaseError as error:  # damage past the goals table, met while loading sessions
        print(f"jepa-planner serve: {StorageUnusable.for_database(settings.data_dir, str(error))}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        return _serve(service)
    finally:
        service.close()


def _serve(service) -> int:
    from .app import create_app
    from .bridge_link import start_bridge
    from .http_server import uvicorn_config

    settings = service.settings
    if settings.bridge:
        try:
            start_bridge(service)
        except Exception as error:  # endpoint in use, insecure bind, unreadable keys
            log.error("cannot start the ZeroMQ bridge on %s: %s", settings.bridge, error)
            return EXIT_FAILURE
    config = uvicorn_config(create_app(service), settings, host=settings.host, port=settings.port,
                            log_level=settings.log_level, timeout_graceful_shutdown=10)
    server = _Server(config, on_exit=service.begin_shutdown)
    server.run()
    return EXIT_OK if server.started else EXIT_FAILURE


class _Server(uvicorn.Server):
    """uvicorn, except that SIGINT/SIGTERM end `run()` normally (exit code 0 after a clean
    shutdown) instead of being re-raised once the server has stopped, and first call `on_exit`
    (cancel planning, so in-flight acts answer 503 at once instead of holding the shutdown)."""

    def __init__(self, config: uvicorn.Config, on_exit=lambda: None):
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig, frame) -> None:
        # On its own thread: the signal may arrive while this (main) thread holds a lock on_exit needs.
        threading.Thread(target=self._on_exit, name="begin-shutdown", daemon=True).start()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
