"""The operator console in a real browser: Playwright drives Debian's Chromium against a real
`jepa-planner serve` (API key set) with the MuJoCo sim arm (`jepa-planner sim-arm`) connected.

Through the page: enter the key, upload goals (file picker and drag and drop), take the arm's
camera frame as a goal, delete one, start a session, watch the energy chart get points, then press
the emergency STOP ALL from the keyboard and see the arm process receive `stop` and end.

Screenshots of each view go to the test's temporary folder, or to JEPA_CONSOLE_SCREENSHOTS when set
(`JEPA_CONSOLE_SCREENSHOTS=docs/console` refreshes the README's pictures).
"""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from test_api import FAST_PLANNER, png_bytes
from test_server_cli import clean_env, free_port, wait_for

CHROMIUM = os.environ.get("JEPA_CHROMIUM", "/usr/bin/chromium")
# Headless, and nothing that reaches outside this machine.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
API_KEY = "browser-test-key"
TIMEOUT_MS = 90_000

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"no Chromium at {CHROMIUM} (make setup installs Debian's `chromium` when run as root; "
                "or set JEPA_CHROMIUM)", allow_module_level=True)

expect = sync_api.expect
pytestmark = pytest.mark.slow
AT_LEAST_3 = re.compile(r"^([3-9]|[1-9][0-9]+)$")


@pytest.fixture()
def service(tmp_path):
    """A real `jepa-planner serve` (tiny model, fast planner, API key) and a connected `sim-arm`."""
    config = tmp_path / "jepa.json"
    config.write_text(json.dumps({"planner": FAST_PLANNER}))
    port, bridge = free_port(), f"tcp://127.0.0.1:{free_port()}"
    env = clean_env(JEPA_API_KEY=API_KEY, JEPA_CONFIG=str(config), MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    serve_log, arm_log = open(tmp_path / "serve.log", "w"), open(tmp_path / "sim-arm.log", "w")
    serve = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--model", "tiny", "--device", "cpu",
                              "--port", str(port), "--bridge", bridge, "--data-dir", str(tmp_path / "data")],
                             env=env, stdout=serve_log, stderr=subprocess.STDOUT)
    arm = None
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/readyz", 200, timeout=180)  # a loaded CI machine starts slowly
        arm = subprocess.Popen([sys.executable, "-m", "server.cli", "sim-arm", "--endpoint", bridge, "--robot-id", "sim0",
                                "--image-size", "64", "--summary", str(tmp_path / "arm-summary.json")],
                               env=env, stdout=arm_log, stderr=subprocess.STDOUT)
        yield url, arm, tmp_path
    finally:
        for process in (arm, serve):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
        serve_log.close(), arm_log.close()


@pytest.fixture()
def page():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def screenshot(page, selector: str, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("JEPA_CONSOLE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    # The whole page from its top, clipped to the view: an element screenshot would show the sticky
    # header over the view, and so would a full-page one taken while scrolled down.
    page.evaluate("window.scrollTo(0, 0)")
    box = page.locator(selector).evaluate(
        "e => { const r = e.getBoundingClientRect(); return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height}; }")
    page.screenshot(path=str(path), full_page=True, clip=box)
    assert path.stat().st_size > 1000


def drop_file(page, selector: str, name: str, data: bytes) -> None:
    """What a drag and drop from the desktop delivers: a `drop` event whose DataTransfer holds a file."""
    page.evaluate("""([selector, name, b64]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: "image/png" }));
        document.querySelector(selector).dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
    }""", [selector, name, base64.b64encode(data).decode()])


def test_operator_drives_the_sim_arm_from_the_console(service, page):
    url, arm, tmp_path = service
    http = httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": API_KEY})
    goals = page.locator("#goal-list > li")

    page.goto(url)
    page.locator("#key-dialog").wait_for(state="visible")  # every data call needs the key: it is asked once
    page.fill("#key-input", "not-the-key")
    page.press("#key-input", "Enter")
    expect(page.locator("#key-reason")).to_contain_text("invalid API key")  # asked again, saying why
    page.fill("#key-input", API_KEY)
    page.press("#key-input", "Enter")
    # (waits go through locators: the page's Content-Security-Policy forbids the eval behind wait_for_function)
    expect(page.locator("#model-status")).to_contain_text("tiny")

    # goals: file picker, drag and drop, the arm's current camera frame; delete one
    goal_file = tmp_path / "left.png"
    goal_file.write_bytes(png_bytes(7))
    page.fill("#goal-name", "cube left")
    page.set_input_files("#goal-file", str(goal_file))
    page.locator("#goal-list .goal-name", has_text="cube left").wait_for()
    page.fill("#goal-name", "")
    drop_file(page, "#drop-zone", "dropped.png", png_bytes(8))
    page.locator("#goal-list .goal-name", has_text="dropped.png").wait_for()
    page.locator("#robot-table tr[data-robot='sim0']").wait_for()
    page.select_option("#robot-goal-robot", "sim0")
    page.click("#robot-goal-form button[type=submit]")
    page.locator("#goal-list .goal-name", has_text="sim0 frame").wait_for()
    assert goals.count() == 3
    page.click("button[aria-label='delete goal dropped.png']")
    expect(goals).to_have_count(2)
    stored = {goal["name"]: goal for goal in http.get("/v1/goals").json()["items"]}
    from_robot = next(name for name in stored if name.startswith("sim0 frame"))
    assert set(stored) == {"cube left", from_robot} and stored[from_robot]["metadata"]["source"] == "robot"
    for index in range(2):
        expect(page.locator("#goal-list img").nth(index)).to_have_attribute("src", re.compile("^blob:"))
    widths = page.locator("#goal-list img").evaluate_all(
        "imgs => Promise.all(imgs.map(img => img.decode().then(() => img.naturalWidth)))")
    assert widths == [64, 64]  # the thumbnails are the goal images themselves, fetched with the key
    screenshot(page, "#goals-view", "goals", tmp_path)

    # a session for the arm with two sub-goals (the frame first), then the live view fills in
    page.click(f"button[aria-label='add {from_robot} to the session\\'s goals']")
    page.click("button[aria-label='add cube left to the session\\'s goals']")
    expect(page.locator("#goal-sequence li")).to_have_count(2)
    page.fill("#subgoal-max-steps", "50")
    page.select_option("#session-robot", "sim0")
    page.select_option("#planner-preset", "server default")
    page.click("#start-session")
    expect(page.locator("#energy-chart")).to_have_attribute("data-points", AT_LEAST_3)
    expect(page.locator("#plan-chart")).to_have_attribute("data-points", AT_LEAST_3)
    for image in ("#live-frame", "#live-goal", "#live-final"):
        expect(page.locator(image)).to_have_attribute("src", re.compile("^blob:"))
    expect(page.locator("#arm-state td")).to_have_count(7)
    assert page.locator("#step-table tbody tr").count() >= 3
    assert "points, latest" in page.get_attribute("#energy-chart", "aria-label")
    session = http.get("/v1/sessions", params={"status": "active"}).json()["items"]
    assert [s["robot_id"] for s in session] == ["sim0"] and session[0]["goal_ids"] == [stored[from_robot]["id"], stored["cube left"]["id"]]
    assert session[0]["subgoal_max_steps"] == 50
    expect(page.locator("#live-goal-caption")).to_have_text("current sub-goal: 1 of 2")
    page.locator(f"#session-table tr[data-session='{session[0]['id']}']").wait_for()
    screenshot(page, "#robots-view", "robots", tmp_path)
    screenshot(page, "#live-view", "live", tmp_path)

    # accessible names: every control has a label, every button says what it does (goal cards and session rows included)
    unnamed = page.evaluate("""() => [...document.querySelectorAll('input, select, button')]
        .filter((e) => !(e.labels && e.labels.length) && !(e.getAttribute('aria-label') || e.textContent.trim()))
        .map((e) => e.outerHTML)""")
    assert unnamed == []

    # the emergency stop, from the keyboard: the arm is told to stop and ends its control loop
    page.focus("#stop-all")
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_have_text(re.compile("^STOPPED: 1 session"))
    assert arm.wait(timeout=60) == 0
    summary = json.loads((tmp_path / "arm-summary.json").read_text())
    assert summary["reason"] == "stop" and summary["stats"]["stops"] >= 1
    assert http.get(f"/v1/sessions/{session[0]['id']}").json()["status"] == "stopped"
    expect(page.locator("#live-stop")).to_be_disabled()
    http.close()
