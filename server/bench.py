"""`jepa-planner bench server`: act latency over HTTP under N concurrent sessions, next to the bare
planning time of the same model in the same process, so the service's own overhead is visible.

All sessions share one model worker (one device), so under N sessions an act waits for up to N-1
other plans: the ideal p50 there is about N x the bare planning time.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import threading
import time

import numpy as np

EXIT_OK, EXIT_FAILURE = 0, 1
STATE = [0.5, 0.0, 0.3, 3.14, 0.0, 0.0, 0.0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sessions", type=int, default=4, help="concurrent robot sessions (default %(default)s)")
    parser.add_argument("--requests", type=int, default=5, help="timed acts per session (default %(default)s)")
    parser.add_argument("--model", default=None, help="preset or checkpoint (default: JEPA_MODEL or the demo model)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, ... (default: JEPA_DEVICE or auto)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float64"], default=None)
    parser.add_argument("--samples", type=int, default=None, help="planner samples (default: PlannerConfig's)")
    parser.add_argument("--iterations", type=int, default=None, help="planner iterations (default: PlannerConfig's)")
    parser.add_argument("--image-size", type=int, default=256, help="camera image side in pixels (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def run(args: argparse.Namespace) -> int:
    import httpx

    from .local_server import LocalServer
    from .serve_command import build_service
    from .settings import SettingsError, load_settings

    if args.sessions < 1 or args.requests < 1:
        print("bench server: --sessions and --requests must be at least 1")
        return EXIT_FAILURE
    planner = {key: value for key, value in (("samples", args.samples), ("iterations", args.iterations)) if value}
    if args.samples is not None:
        planner["topk"] = min(10, args.samples)
    with tempfile.TemporaryDirectory(prefix="jepa-bench-") as data_dir:
        try:
            settings = load_settings(model=args.model, device=args.device, dtype=args.dtype, data_dir=data_dir,
                                     bridge="", api_key="", planner=planner or None, log_level="warning")
        except SettingsError as error:
            print(f"bench server: {error}")
            return EXIT_FAILURE
        images = [_png(seed, args.image_size) for seed in range(args.sessions + 1)]
        with LocalServer(build_service(settings)) as server:
            try:
                server.wait_ready()
            except (RuntimeError, TimeoutError) as error:
                print(f"bench server: {error}")
                return EXIT_FAILURE
            with httpx.Client(base_url=server.url, timeout=600) as http:
                goal = http.post("/v1/goals", files={"image": ("goal.png", images[-1], "image/png")}).json()["id"]
                sessions = [http.post("/v1/sessions", json={"robot_id": f"bench-{i}", "goal_id": goal}).json()["id"]
                            for i in range(args.sessions)]
            info = server.service.model_info()
            plan_ms = _bare_planning_ms(server.service, sessions[0], images[0], args.requests)
            single = _http_load(server.url, sessions[:1], images, args.requests)
            loaded = _http_load(server.url, sessions, images, args.requests)

    p50, p90, p99 = (_percentile(loaded.latencies, q) for q in (50, 90, 99))
    single_p50 = _percentile(single.latencies, 50)
    print(f"model {info['source']} on {info.get('device')} ({info.get('dtype')}), "
          f"{args.image_size}px images, planner {planner or 'defaults'}")
    print(f"bare planning (decode + encode + plan, in process): p50 {plan_ms:8.1f} ms")
    print(f"HTTP act, 1 session:            p50 {single_p50:8.1f} ms   overhead {single_p50 - plan_ms:+.1f} ms "
          f"({single_p50 / plan_ms:.2f}x bare)")
    print(f"HTTP act, {args.sessions:3d} concurrent sessions: p50 {p50:8.1f} ms   p90 {p90:8.1f} ms   p99 {p99:8.1f} ms   "
          f"{loaded.throughput:.1f} acts/s (ideal p50 ~ {args.sessions} x bare = {args.sessions * plan_ms:.0f} ms)")
    if args.json:
        print(json.dumps({
            "sessions": args.sessions, "requests": args.requests * args.sessions, "model": info["source"],
            "device": info.get("device"), "image_size": args.image_size, "plan_ms": round(plan_ms, 3),
            "single_session_p50_ms": round(single_p50, 3), "overhead_ms": round(single_p50 - plan_ms, 3),
            "p50_ms": round(p50, 3), "p90_ms": round(p90, 3), "p99_ms": round(p99, 3),
            "throughput_rps": round(loaded.throughput, 3), "errors": loaded.errors + single.errors,
        }))
    return EXIT_OK if loaded.errors + single.errors == 0 else EXIT_FAILURE


class _Load:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.throughput = 0.0
        self.lock = threading.Lock()


def _http_load(url: str, sessions: list[str], images: list[bytes], requests: int) -> _Load:
    """Each session's robot acts `requests` times back to back (after one untimed warm-up act)."""
    import httpx

    load = _Load()
    barrier = threading.Barrier(len(sessions) + 1)

    def robot(index: int, session: str) -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            def act() -> bool:
                response = http.post(f"/v1/sessions/{session}/act", data={"state": json.dumps(STATE)},
                                     files={"image": ("obs.png", images[index], "image/png")})
                return response.status_code == 200
            act()  # warm-up: builds the session's controller
            barrier.wait()
            for _ in range(requests):
                started = time.perf_counter()
                ok = act()
                elapsed = (time.perf_counter() - started) * 1000.0
                with load.lock:
                    load.latencies.append(elapsed)
                    load.errors += not ok

    threads = [threading.Thread(target=robot, args=(i, s)) for i, s in enumerate(sessions)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    load.throughput = len(load.latencies) / (time.perf_counter() - started)
    return load


def _bare_planning_ms(service, session_id: str, image: bytes, repeats: int) -> float:
    """The same work an act does (decode, encode, plan) on the same worker, without HTTP or storage."""
    from .images import decode_image

    planner = service.worker.call_blocking(service.sessions.build_planner, service.sessions.get(session_id))

    def plan_once(engine) -> None:
        pixels = decode_image(image, service.settings.max_image_pixels).pixels
        planner.step(engine.encode(pixels), STATE)

    service.worker.call_blocking(plan_once)  # warm-up
    timings = []
    for _ in range(max(3, repeats)):
        started = time.perf_counter()
        service.worker.call_blocking(plan_once)
        timings.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(timings)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _png(seed: int, size: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()
