// The jepa-planner operator console: plain JS over the public HTTP API (no build step, no libraries).
// Every call sends the API key in X-API-Key; images and the live stream are fetched with it too
// (img src and EventSource cannot send headers), so the key never appears in a URL.
"use strict";

const KEY_STORAGE = "jepa-planner-api-key";
const REFRESH_MS = 2000;
// Planner overrides per preset; "server default" sends none (the service's configured planner).
const PRESETS = {
  "server default": {},
  "fast (64 samples x 2 iterations, horizon 1)": { samples: 64, topk: 8, iterations: 2, horizon: 1 },
  "demo (128 x 4, horizon 1)": { samples: 128, topk: 10, iterations: 4, horizon: 1 },
  "thorough (256 x 5, horizon 2)": { samples: 256, topk: 10, iterations: 5, horizon: 2 },
};

const $ = (id) => document.getElementById(id);
const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  goals: [], robots: [], sessions: [],
  sequence: [],            // goal ids of the session to start, in order
  thumbs: new Map(),       // goal id -> blob URL
  live: null,              // {session, steps, abort, frameSeq, frameBusy}
};

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.key) headers.set("X-API-Key", state.key);
  const response = await fetch(path, { ...options, headers });
  if (response.ok) return response;
  let code = "error", message = `${response.status} ${response.statusText}`;
  try { ({ code, message } = (await response.json()).error); } catch (_) { /* not JSON */ }
  if (response.status === 401) askKey(message);
  throw new ApiError(response.status, code, message);
}
const getJson = async (path) => (await api(path)).json();
const postJson = async (path, body) => (await api(path, {
  method: "POST", headers: { "Content-Type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body),
})).json();

function say(text) { $("status").textContent = text; $("error").hidden = true; }
function fail(error) {
  if (error instanceof ApiError && error.status === 401) return;  // the key dialog says it
  $("error").textContent = error.message || String(error);
  $("error").hidden = false;
}
const guard = (fn) => async (...args) => { try { await fn(...args); } catch (error) { fail(error); } };

// --- API key -------------------------------------------------------------------------------
function askKey(reason) {
  const dialog = $("key-dialog");
  if (dialog.open) return;
  $("key-reason").textContent = `${reason}. Enter the service's API key (JEPA_API_KEY); it is kept in this tab only.`;
  $("key-input").value = "";
  dialog.showModal();
}
$("key-form").addEventListener("submit", () => {
  state.key = $("key-input").value.trim();
  sessionStorage.setItem(KEY_STORAGE, state.key);
  say("API key set");
  refreshAll();
});
$("change-key").addEventListener("click", () => askKey("Change the API key"));

// --- small DOM helpers -----------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "onclick") node.addEventListener("click", guard(value));
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}
const fmt = (value, digits = 3) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));
const short = (id) => id.slice(0, 8);
function ago(iso) {
  if (!iso) return "never";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return seconds < 90 ? `${seconds.toFixed(1)} s ago` : `${Math.round(seconds / 60)} min ago`;
}
function fillSelect(select, values, labels = values) {
  const keep = select.value;
  select.replaceChildren(...values.map((value, i) => el("option", { value, text: labels[i] })));
  if (values.includes(keep)) select.value = keep;
}
async function blobUrl(path) {
  return URL.createObjectURL(await (await api(path)).blob());
}

// --- goals ---------------------------------------------------------------------------------
async function refreshGoals() {
  state.goals = (await getJson("/v1/goals?limit=1000")).items;
  const list = $("goal-list");
  list.replaceChildren(...state.goals.map(goalCard));
  for (const goal of state.goals) {
    if (!state.thumbs.has(goal.id)) state.thumbs.set(goal.id, blobUrl(goal.image_url));
    state.thumbs.get(goal.id).then((url) => {
      const img = list.querySelector(`img[data-goal="${goal.id}"]`);
      if (img) img.src = url;
    }).catch(fail);
  }
  renderSequence();
}

function goalCard(goal) {
  const label = goal.name || short(goal.id);
  const meta = JSON.stringify(goal.metadata, null, 1);
  return el("li", { class: "goal card", "data-goal": goal.id },
    el("img", { "data-goal": goal.id, alt: `goal image ${label}`, width: "96", height: "96" }),
    el("p", { class: "goal-name", text: label }),
    el("p", { class: "muted", text: `${goal.width}x${goal.height} ${goal.image_format}, ${(goal.size_bytes / 1024).toFixed(1)} KiB` }),
    el("p", { class: "muted", text: new Date(goal.created_at).toLocaleString() }),
    el("details", {}, el("summary", { text: "metadata" }), el("pre", { text: `id ${goal.id}\n${meta}` })),
    el("div", { class: "row" },
      el("button", { type: "button", "aria-label": `add ${label} to the session's goals`,
                     onclick: () => { state.sequence.push(goal.id); renderSequence(); say(`added ${label} to the session's goals`); } }, "Add to session"),
      el("button", { type: "button", class: "secondary", "aria-label": `delete goal ${label}`,
                     onclick: () => deleteGoal(goal, label) }, "Delete")));
}

async function deleteGoal(goal, label) {
  await api(`/v1/goals/${goal.id}`, { method: "DELETE" });
  state.sequence = state.sequence.filter((id) => id !== goal.id);
  const url = state.thumbs.get(goal.id);
  state.thumbs.delete(goal.id);
  if (url) url.then(URL.revokeObjectURL, () => {});
  say(`deleted goal ${label}`);
  await refreshGoals();
}

async function uploadFiles(files) {
  const name = $("goal-name").value.trim();
  for (const file of files) {
    const form = new FormData();
    form.append("image", file, file.name);
    form.append("name", name || file.name);
    const goal = await (await api("/v1/goals", { method: "POST", body: form })).json();
    say(`uploaded goal ${goal.name} (${goal.width}x${goal.height})`);
  }
  await refreshGoals();
}

const dropZone = $("drop-zone");
dropZone.addEventListener("dragover", (event) => { event.preventDefault(); dropZone.classList.add("over"); });
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("over"));
dropZone.addEventListener("drop", guard(async (event) => {
  event.preventDefault();
  dropZone.classList.remove("over");
  await uploadFiles([...event.dataTransfer.files]);
}));
dropZone.addEventListener("keydown", (event) => {
  if (event.target === dropZone && (event.key === "Enter" || event.key === " ")) { event.preventDefault(); $("goal-file").click(); }
});
$("goal-file").addEventListener("change", guard(async (event) => {
  await uploadFiles([...event.target.files]);
  event.target.value = "";
}));
$("robot-goal-form").addEventListener("submit", guard(async (event) => {
  event.preventDefault();
  const robot = $("robot-goal-robot").value;
  if (!robot) throw new Error("no robot is connected");
  const goal = await postJson(`/v1/goals/from-robot/${encodeURIComponent(robot)}`);
  say(`goal ${goal.name} taken from ${robot}'s camera`);
  await refreshGoals();
}));

function renderSequence() {
  const names = new Map(state.goals.map((goal) => [goal.id, goal.name || short(goal.id)]));
  state.sequence = state.sequence.filter((id) => names.has(id));
  $("goal-sequence").replaceChildren(...state.sequence.map((id, index) => el("li", {},
    `${names.get(id)} `,
    el("button", { type: "button", class: "secondary small", "aria-label": `remove ${names.get(id)} from the session's goals`,
                   onclick: () => { state.sequence.splice(index, 1); renderSequence(); } }, "Remove"))));
}

// --- robots and sessions ------------------------------------------------------------------
async function refreshRobots() {
  const robots = await getJson("/v1/robots");
  state.robots = robots.items;
  const ids = state.robots.map((robot) => robot.robot_id);
  fillSelect($("session-robot"), ids);
  fillSelect($("robot-goal-robot"), ids);
  const rows = state.robots.map((robot) => el("tr", { "data-robot": robot.robot_id },
    el("th", { scope: "row", text: robot.robot_id }),
    el("td", { text: `${robot.camera_width}x${robot.camera_height} @ ${robot.control_hz} Hz` }),
    el("td", { text: robot.last_seq === null ? "none yet" : `#${robot.last_seq}, ${ago(robot.last_observation_at)}` }),
    el("td", { class: "num", text: robot.state ? robot.state.map((v) => fmt(v)).join(", ") : "–" }),
    el("td", { text: robot.active_session_id ? short(robot.active_session_id) : "none" })));
  if (!rows.length) {
    rows.push(el("tr", {}, el("td", { colspan: "5", class: "muted",
      text: robots.bridge ? "no arm connected (start one: jepa-planner sim-arm)" : "this service runs no ZeroMQ bridge" })));
  }
  $("robot-table").tBodies[0].replaceChildren(...rows);
}

async function refreshSessions() {
  const sessions = (await getJson("/v1/sessions?limit=50")).items
    .sort((a, b) => Date.parse(b.created_at) - Date.parse(a.created_at));
  // Unchanged rows are left alone, so a keyboard user's focus on a button survives the refresh.
  if (JSON.stringify(sessions) === JSON.stringify(state.sessions)) return;
  state.sessions = sessions;
  $("session-table").tBodies[0].replaceChildren(...state.sessions.map((session) => el("tr", { "data-session": session.id },
    el("th", { scope: "row", text: short(session.id) }),
    el("td", { text: session.robot_id }),
    el("td", { text: session.status }),
    el("td", { class: "num", text: String(session.steps) }),
    el("td", { class: "num", text: fmt(session.last_energy, 4) }),
    el("td", {},
      el("button", { type: "button", class: "secondary small", "aria-label": `watch session ${short(session.id)}`,
                     onclick: () => watch(session.id) }, "Watch"),
      session.status === "active" ? el("button", { type: "button", class: "danger small",
        "aria-label": `stop session ${short(session.id)}`, onclick: () => stopSession(session.id) }, "Stop") : ""))));
}

$("session-form").addEventListener("submit", guard(async (event) => {
  event.preventDefault();
  if (!state.sequence.length) throw new Error("add a goal to the session first (“Add to session” on a goal)");
  const body = { robot_id: $("session-robot").value, planner: PRESETS[$("planner-preset").value] };
  if (!body.robot_id) throw new Error("no robot is connected");
  if (state.sequence.length === 1) body.goal_id = state.sequence[0]; else body.goal_ids = [...state.sequence];
  const maxSteps = $("subgoal-max-steps").value, energy = $("subgoal-energy").value;
  if (maxSteps) body.subgoal_max_steps = Number(maxSteps);
  if (energy) body.subgoal_energy_threshold = Number(energy);
  const session = await postJson("/v1/sessions", body);
  say(`session ${short(session.id)} started for ${session.robot_id}`);
  await refreshSessions();
  await watch(session.id);
}));

async function stopSession(id) {
  await postJson(`/v1/sessions/${id}/stop`);
  say(`session ${short(id)} stopped; the arm was told to stop`);
  await refreshSessions();
}
$("live-stop").addEventListener("click", guard(() => state.live && stopSession(state.live.session.id)));
$("stop-all").addEventListener("click", guard(async () => {
  const result = await postJson("/v1/sessions/stop-all");
  say(`STOPPED: ${result.stopped_sessions.length} session(s); stop sent to ${result.robots_stopped.join(", ") || "no robot"}`);
  await Promise.all([refreshSessions(), refreshRobots()]);
}));

// --- live view: Server-Sent Events read with fetch (so the key goes in a header) -------------
async function watch(sessionId) {
  if (state.live) state.live.abort.abort();
  const live = { session: null, steps: [], abort: new AbortController(), frameSeq: null, frameBusy: false, goalShown: null, finalShown: null };
  state.live = live;
  $("live-title").textContent = `session ${short(sessionId)}`;
  $("step-table").tBodies[0].replaceChildren();
  for (const id of ["live-frame", "live-goal", "live-final"]) $(id).removeAttribute("src");
  $("live-final-figure").hidden = true;
  drawCharts(live);
  location.hash = "#live-view";
  listen(live, sessionId);
}

async function listen(live, sessionId) {
  let retry = 0;
  while (!live.abort.signal.aborted) {
    try {
      const after = live.steps.length ? live.steps[live.steps.length - 1].step : 0;
      const response = await api(`/v1/sessions/${sessionId}/events?after=${after}`,
                                 { signal: live.abort.signal, headers: { Accept: "text/event-stream" } });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          onEvent(live, parseEvent(buffer.slice(0, end)));
          buffer = buffer.slice(end + 2);
        }
        retry = 0;
      }
      if (live.session && live.session.status !== "active") return;  // the stream ends with the session
    } catch (error) {
      if (live.abort.signal.aborted || (error instanceof ApiError && error.status < 500)) return fail(error);
    }
    retry = Math.min(retry + 1, 5);
    await new Promise((resolve) => setTimeout(resolve, 500 * retry));
  }
}

function parseEvent(block) {
  const event = { type: "message", data: "" };
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event.type = value; else if (field === "data") event.data += value;
  }
  return event;
}

function onEvent(live, event) {
  if (state.live !== live || !event.data) return;
  const data = JSON.parse(event.data);
  if (event.type === "session") {
    live.session = data;
    const goal = data.goal_ids[data.goal_index];
    $("live-summary").textContent = `robot ${data.robot_id}, ${data.status}, ${data.steps} steps, ` +
      `sub-goal ${data.goal_index + 1} of ${data.goal_ids.length}, ` +
      `planner ${data.planner.optimizer} ${data.planner.samples} samples x ${data.planner.iterations}, horizon ${data.planner.horizon}`;
    $("live-stop").disabled = data.status !== "active";
    if (goal && goal !== live.goalShown) {
      live.goalShown = goal;
      blobUrl(`/v1/goals/${goal}/image`).then((url) => setImage("live-goal", url)).catch(fail);
      $("live-goal-caption").textContent = data.goal_ids.length > 1
        ? `current sub-goal: ${data.goal_index + 1} of ${data.goal_ids.length}` : "goal";
    }
    const final = data.goal_ids[data.goal_ids.length - 1];
    $("live-final-figure").hidden = data.goal_ids.length < 2;
    if (data.goal_ids.length > 1 && final !== live.finalShown) {
      live.finalShown = final;
      blobUrl(`/v1/goals/${final}/image`).then((url) => setImage("live-final", url)).catch(fail);
    }
    if (data.status !== "active") refreshSessions().catch(fail);
  } else if (event.type === "step") {
    live.steps.push(data);
    if (live.steps.length > 2000) live.steps.splice(0, live.steps.length - 1000);  // the charts show the last 200
    addStepRow(data);
    vectorRow("arm-action", data.action);
    drawCharts(live);
  } else if (event.type === "robot") {
    if (data.state) vectorRow("arm-state", data.state);
    $("live-frame-caption").textContent = data.connected
      ? `camera of ${data.robot_id}, observation #${data.last_seq ?? "–"}` : `${data.robot_id} is not connected`;
    if (data.last_seq !== null && data.last_seq !== live.frameSeq) updateFrame(live, data.robot_id, data.last_seq);
  }
}

async function updateFrame(live, robotId, seq) {
  if (live.frameBusy) return;  // one frame in flight; the next robot event fetches a newer one
  live.frameBusy = true;
  try {
    setImage("live-frame", await blobUrl(`/v1/robots/${encodeURIComponent(robotId)}/frame`));
    live.frameSeq = seq;
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) fail(error);  // the arm left: keep the last frame
  } finally {
    live.frameBusy = false;
  }
}

function setImage(id, url) {
  const img = $(id);
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = url;
}

function vectorRow(id, values) {
  const row = $(id);
  row.replaceChildren(row.cells[0], ...values.map((value) => el("td", { class: "num", text: fmt(value) })));
}

function addStepRow(step) {
  const body = $("step-table").tBodies[0];
  body.prepend(el("tr", {},
    el("th", { scope: "row", text: String(step.step) }),
    el("td", { class: "num", text: String(step.goal_index + 1) }),
    el("td", { class: "num", text: fmt(step.energy, 4) }),
    el("td", { class: "num", text: fmt(step.plan_ms, 1) }),
    el("td", { class: "num", text: fmt(step.total_ms, 1) }),
    el("td", { text: step.source }),
    el("td", { class: "num", text: step.action.map((v) => fmt(v)).join(", ") })));
  while (body.rows.length > 200) body.deleteRow(-1);
}

// --- charts: canvas line plots of the last 200 steps ----------------------------------------
function drawCharts(live) {
  const recent = live.steps.slice(-200);
  plot($("energy-chart"), recent.map((s) => [s.step, s.energy]), "energy", 4);
  plot($("plan-chart"), recent.map((s) => [s.step, s.plan_ms]), "planning time (ms)", 1);
}

function plot(canvas, points, what, digits) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const pad = { left: 56, right: 10, top: 12, bottom: 24 };
  ctx.clearRect(0, 0, width, height);
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, width, height);
  canvas.dataset.points = String(points.length);
  if (!points.length) {
    canvas.setAttribute("aria-label", `${what} per step: no data yet`);
    return;
  }
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y1 - y0 < 1e-9) { y0 -= 0.5 * Math.abs(y0 || 1); y1 += 0.5 * Math.abs(y1 || 1); }
  const px = (x) => pad.left + (x - x0) / (x1 - x0) * (width - pad.left - pad.right);
  const py = (y) => height - pad.bottom - (y - y0) / (y1 - y0) * (height - pad.top - pad.bottom);
  ctx.strokeStyle = "#6b6b6b";
  ctx.lineWidth = 1;
  ctx.strokeRect(pad.left, pad.top, width - pad.left - pad.right, height - pad.top - pad.bottom);
  ctx.fillStyle = "#1a1a1a";
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillText(y1.toFixed(digits), 4, pad.top + 10);
  ctx.fillText(y0.toFixed(digits), 4, height - pad.bottom);
  ctx.fillText(`step ${x0}`, pad.left, height - 6);
  ctx.fillText(`step ${x1}`, width - pad.right - 60, height - 6);
  ctx.strokeStyle = "#0b57d0";
  ctx.lineWidth = 2;
  ctx.beginPath();
  points.forEach(([x, y], i) => (i ? ctx.lineTo(px(x), py(y)) : ctx.moveTo(px(x), py(y))));
  ctx.stroke();
  ctx.fillStyle = "#0b57d0";
  for (const [x, y] of points) ctx.fillRect(px(x) - 2, py(y) - 2, 4, 4);
  const [lastX, lastY] = points[points.length - 1];
  canvas.setAttribute("aria-label", `${what} per step: ${points.length} points, latest ${lastY.toFixed(digits)} at step ${lastX}`);
}

// --- start -------------------------------------------------------------------------------
async function refreshModel() {
  const model = await getJson("/v1/model");
  $("model-status").textContent = `model: ${model.source} (${model.state}${model.device ? `, ${model.device}` : ""})`;
}

async function refreshAll() {
  try {
    await refreshModel();
    await Promise.all([refreshGoals(), refreshRobots(), refreshSessions()]);
  } catch (error) { fail(error); }
}

fillSelect($("planner-preset"), Object.keys(PRESETS));
refreshAll();
setInterval(() => {
  if (document.hidden || $("key-dialog").open) return;
  Promise.all([refreshRobots(), refreshSessions()]).catch(fail);
}, REFRESH_MS);
