// minigrid console: draws the feed (server-sent events) and turns clicks into POST /action.
// Plain DOM, no library. Text from the nodes is only ever set with textContent.
"use strict";

const CSRF = document.querySelector('meta[name="csrf"]').content;
const SVG = "http://www.w3.org/2000/svg";
const state = { cluster: null, frame: null, built: false, events: [] };
const MAX_EVENTS = 300;

// --- small helpers ----------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 0.001) return (value * 1e6).toFixed(0) + " µs";
  if (value < 1) return (value * 1000).toFixed(value < 0.01 ? 1 : 0) + " ms";
  return value.toFixed(1) + " s";
}

function bytes(value) {
  if (value === null || value === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (value >= 1024 && i < units.length - 1) { value /= 1024; i++; }
  return value.toFixed(value < 10 && i ? 1 : 0) + " " + units[i];
}

function clock(wall) {
  const d = new Date(wall * 1000);
  return d.toLocaleTimeString([], { hour12: false });
}

function nodeName(index) { return "node " + index; }

function setText(node, text) { if (node.textContent !== text) node.textContent = text; }

function setAttr(node, name, value) {
  value = String(value);
  if (node.getAttribute(name) !== value) node.setAttribute(name, value);
}

// --- building the page once the cluster is known ---------------------------------------------

function ringPositions(count) {
  const cx = 320, cy = 275, r = count <= 2 ? 150 : 225;
  const start = count === 4 ? -135 : -90;
  return Array.from({ length: count }, (_, i) => {
    const a = (start + (360 * i) / count) * Math.PI / 180;
    return { x: cx + r * Math.cos(a), y: cy + r * Math.sin(a) };
  });
}

function buildRing(cluster) {
  const ring = document.getElementById("ring");
  ring.replaceChildren();
  const pos = ringPositions(cluster.hosts.length);
  const links = svg("g", { id: "links" });
  const nodes = svg("g", { id: "ring-nodes" });
  for (let a = 0; a < pos.length; a++) {
    for (let b = a + 1; b < pos.length; b++) {
      const g = svg("g", { class: "link", "data-a": a, "data-b": b, "data-state": "unknown" });
      g.append(svg("line", { x1: pos[a].x, y1: pos[a].y, x2: pos[b].x, y2: pos[b].y }));
      // Labels of crossing lines would meet in the middle: put them at different points.
      // Diagonals of a square cross at its centre: put their labels on either side of it.
      const adjacent = b - a === 1 || (a === 0 && b === pos.length - 1);
      const t = adjacent ? 0.5 : (a % 2 ? 0.33 : 0.67);
      const label = svg("text", { x: pos[a].x + t * (pos[b].x - pos[a].x),
                                  y: pos[a].y + t * (pos[b].y - pos[a].y) });
      g.append(label);
      const title = svg("title", {});
      g.append(title);
      links.append(g);
    }
  }
  pos.forEach((p, i) => {
    const g = svg("g", { class: "node" + (i === cluster.me ? " me" : ""), "data-index": i,
                         "data-state": "unknown" });
    g.append(svg("circle", { cx: p.x, cy: p.y, r: 50 }));
    const name = svg("text", { class: "name", x: p.x, y: p.y - 10 });
    name.textContent = nodeName(i);
    const sub = svg("text", { class: "sub", x: p.x, y: p.y + 18 });
    g.append(name, sub, svg("title", {}));
    nodes.append(g);
  });
  ring.append(links, nodes);
}

function buildNodes(cluster) {
  const box = document.getElementById("nodes");
  box.replaceChildren();
  cluster.hosts.forEach((host, i) => {
    const card = el("div", { class: "card", "data-index": i, "data-state": "unknown" });
    const title = el("div", { class: "title", text: `${nodeName(i)} · ${host}` +
                                                    (i === cluster.me ? " · serves this page" : "") });
    const spark = svg("svg", { class: "spark", viewBox: "0 0 90 40", preserveAspectRatio: "none" });
    spark.append(svg("polyline", { points: "" }));
    const buttons = el("div", { class: "buttons" },
      el("button", { type: "button", class: "danger", "data-action": "freeze", "data-node": i, text: "Freeze" }),
      el("button", { type: "button", "data-action": "thaw", "data-node": i, text: "Thaw" }),
      el("button", { type: "button", "data-action": "loop-block", "data-node": i,
                     text: "Block loop 5 s", title: "block the node's event loop for 5 s" }));
    card.append(title, spark, buttons, el("div", { class: "status" }));
    box.append(card);
  });
}

function buildSelects(cluster) {
  for (const id of ["part-a", "part-b"]) {
    const select = document.getElementById(id);
    select.replaceChildren(...cluster.hosts.map((_, i) => el("option", { value: i, text: nodeName(i) })));
  }
  document.getElementById("part-b").value = String(Math.min(1, cluster.hosts.length - 1));
}

function build(cluster) {
  state.cluster = cluster;
  buildRing(cluster);
  buildNodes(cluster);
  buildSelects(cluster);
  setText(document.getElementById("served"),
          `served by ${nodeName(cluster.me)} (${cluster.hosts[cluster.me]}) · profile ${cluster.profile}`);
  const badge = document.getElementById("faults-badge");
  badge.classList.toggle("on", cluster.faults);
  setText(badge, cluster.faults ? "faults allowed" : "faults off");
  const off = document.getElementById("faults-off");
  off.hidden = cluster.faults;
  setText(off, cluster.faults_off || "");
  for (const button of document.querySelectorAll("#actions-panel button[data-action]")) {
    if (!cluster.faults && button.dataset.action !== "heal" && button.dataset.action !== "scanner") {
      button.disabled = true;
      button.title = cluster.faults_off;
    }
  }
  state.built = true;
}

// --- drawing a frame -------------------------------------------------------------------------

function linkLabel(link) {
  if (link.state === "connected") {
    return [`rtt ${seconds(link.rtt_s)}`, `seen ${seconds(link.last_seen_s)} ago`];
  }
  const since = state.frame ? Math.max(0, state.frame.time - link.since) : 0;
  const cause = (link.cause || "").split(":")[0];
  if (link.state === "down") return [`DOWN ${since.toFixed(0)} s`, cause || "no cause yet"];
  return [link.state, ""];
}

function setLines(text, lines) {
  // An SVG label of two lines (tspans), rewritten only when it changed.
  if (text.dataset.lines === lines.join("\n")) return;
  text.dataset.lines = lines.join("\n");
  const x = text.getAttribute("x");
  text.replaceChildren(...lines.map((line, i) => {
    const span = svg("tspan", { x, dy: i ? "1.15em" : "-0.55em" });
    span.textContent = line;
    return span;
  }));
}

function drawRing(frame) {
  for (const link of frame.links) {
    const g = document.querySelector(`.link[data-a="${link.a}"][data-b="${link.b}"]`);
    if (!g) continue;
    setAttr(g, "data-state", link.state);
    setLines(g.querySelector("text"), linkLabel(link));
    const views = link.views.map(v => `${nodeName(v.from)} sees ${v.state}${v.cause ? ": " + v.cause : ""}`);
    setText(g.querySelector("title"), `${nodeName(link.a)} – ${nodeName(link.b)}: ${link.state}\n` + views.join("\n"));
  }
  frame.nodes.forEach((node, i) => {
    const g = document.querySelector(`.node[data-index="${i}"]`);
    if (!g) return;
    const process = (frame.processes[i] || {}).state || "unknown";
    setAttr(g, "data-state", node.state);
    setAttr(g, "data-ready", node.ready === false ? "false" : "true");
    setAttr(g, "data-process", process);
    let sub = node.state === "up" ? `lag ${seconds(node.loop_lag_s)}` : node.state;
    if (process === "stopped") sub = "FROZEN";
    setText(g.querySelector("text.sub"), sub);
    setText(g.querySelector("title"), `${nodeName(i)} ${frame.cluster.hosts[i]}: ${node.state}` +
                                      (node.error ? ` (${node.error})` : ""));
  });
}

function sparkPoints(values, width, height, top) {
  const max = Math.max(top, ...values.filter(v => v !== null));
  const step = width / Math.max(1, values.length - 1);
  return values.map((v, i) => `${(i * step).toFixed(1)},${(height - ((v ?? 0) / max) * (height - 2) - 1).toFixed(1)}`).join(" ");
}

function drawNodes(frame) {
  const cluster = frame.cluster;
  frame.nodes.forEach((node, i) => {
    const card = document.querySelector(`.card[data-index="${i}"]`);
    if (!card) return;
    const process = frame.processes[i] || { state: "unknown", note: "" };
    setAttr(card, "data-state", node.state);
    setAttr(card, "data-process", process.state);
    const lags = node.lag_history || [];
    const worst = Math.max(0, ...lags.filter(v => v !== null));
    card.querySelector("polyline").setAttribute("points", sparkPoints(lags, 90, 40, 0.05));
    let status;
    if (process.state === "stopped") status = `FROZEN (SIGSTOP, ${process.note}) · its peers see silence`;
    else if (node.state === "up") {
      status = `${node.ready ? "ready" : "NOT READY"} · loop lag ${seconds(node.loop_lag_s)} ` +
               `(worst ${seconds(worst)}) · drives ${node.drives_online}/${node.drives} · ` +
               `up ${seconds(node.uptime_s)}`;
    } else status = `${node.state}: ${node.error}`;
    setText(card.querySelector(".status"), status);
    const faults = cluster.faults;
    const why = !faults ? cluster.faults_off :
      i === cluster.me ? "this node serves the page: freeze it from another node's console" :
      process.state === "remote" || process.state === "unknown" ? `cannot signal it from here: ${process.note}` : "";
    const freeze = card.querySelector('[data-action="freeze"]');
    const thaw = card.querySelector('[data-action="thaw"]');
    freeze.disabled = Boolean(why) || process.state !== "running";
    thaw.disabled = Boolean(why) || process.state !== "stopped";
    freeze.title = why || "SIGSTOP the node's process (sent by the node serving this page)";
    thaw.title = why || "SIGCONT the node's process";
    const block = card.querySelector('[data-action="loop-block"]');
    block.disabled = !faults || node.state !== "up";
    block.title = faults ? "block the node's event loop for 5 s" : cluster.faults_off;
  });
}

function drawDrives(frame) {
  const body = document.querySelector("#drives tbody");
  const cluster = frame.cluster;
  const rows = frame.drives.map(drive => {
    const node = drive.node;
    const index = drive.local_index;
    const heal = drive.heal ? `healed ${drive.heal.healed} · checked ${drive.heal.scanned}` +
                              (drive.heal.failed ? ` · failed ${drive.heal.failed}` : "") +
                              (drive.heal.bucket ? ` (${drive.heal.bucket})` : "") : "";
    const wipe = el("button", { type: "button", class: "danger", "data-action": "wipe-drive",
                                "data-node": node, "data-drive": index, text: "Wipe",
                                title: "erase this drive, format included, as a new disk" });
    wipe.disabled = !cluster.faults;
    if (!cluster.faults) wipe.title = cluster.faults_off;
    const stateCell = el("span", { class: "state", "data-state": drive.state, text: drive.state });
    if (drive.error) stateCell.title = drive.error;
    return el("tr", { class: "drive", "data-node": node, "data-drive": index, "data-state": drive.state },
      el("td", { text: `${nodeName(node)} · d${index}`, title: drive.endpoint }),
      el("td", { class: "num", text: String(drive.set) }),
      el("td", {}, stateCell),
      el("td", { class: "heal", text: heal }),
      el("td", { class: "num", text: drive.used === null ? "–" : bytes(drive.used) }),
      el("td", {}, wipe));
  });
  body.replaceChildren(...rows);
}

function figure(label, value) {
  return el("div", { class: "figure" }, el("div", { class: "value", text: value }),
            el("div", { class: "label", text: label }));
}

function drawS3(frame) {
  const s3 = frame.s3;
  const latency = (v, over) => (over ? "> " : "") + seconds(v);
  document.getElementById("s3").replaceChildren(
    figure("requests / s", s3.requests_per_s.toFixed(1)),
    figure("in / s", bytes(s3.received_per_s)),
    figure("out / s", bytes(s3.sent_per_s)),
    figure("latency p50", latency(s3.p50_s, s3.p50_over)),
    figure("latency p99", latency(s3.p99_s, s3.p99_over)),
    figure("server errors / s", s3.errors_per_s.toFixed(1)));
  const spark = document.getElementById("s3-spark");
  let line = spark.querySelector("polyline");
  if (!line) { line = svg("polyline", {}); spark.append(line); }
  line.setAttribute("points", sparkPoints(s3.history, 300, 40, 1));
}

const FILTERS = {
  links: ["disconnect", "connect", "cancel", "stall"],
  faults: ["fault", "console"],
  heal: ["heal"],
};

function eventText(event, cluster) {
  const f = event.fields || {};
  const peer = f.remote ? cluster.hosts.indexOf(f.remote) : -1;
  if (event.kind === "disconnect" && peer >= 0) {
    return `link to ${nodeName(peer)} down: ${f.cause_detail || f.cause || "no cause given"}`;
  }
  if (event.kind === "connect" && peer >= 0) return `link to ${nodeName(peer)} connected`;
  return event.text;
}

function eventFields(event) {
  const f = event.fields || {};
  const parts = [];
  if (f.handler) parts.push(`handler ${f.handler}${f.subroute ? " " + f.subroute : ""}`);
  if (f.last_seen_s !== undefined) parts.push(`last seen ${seconds(f.last_seen_s)} before`);
  if (f.peer_loop_lag_s !== undefined) parts.push(`peer loop lag then ${seconds(f.peer_loop_lag_s)}`);
  return parts.join(" · ");
}

function drawTimeline(frame) {
  const list = document.getElementById("timeline");
  const filter = document.getElementById("timeline-filter").value;
  const cluster = frame.cluster;
  for (const event of frame.events) {
    const fields = eventFields(event);
    const item = el("li", { "data-kind": event.kind, "data-node": event.node, "data-level": event.level,
                            "data-peer": event.fields && event.fields.remote ? cluster.hosts.indexOf(event.fields.remote) : "" },
      el("span", { class: "time", text: clock(event.time) }),
      el("span", { class: "who", text: nodeName(event.node) }),
      el("span", { class: "kind", text: event.kind }),
      el("span", { class: "text" }, el("span", { text: eventText(event, cluster) }),
         fields ? el("div", { class: "fields", text: fields }) : ""));
    item.title = `${event.component}: ${event.text}`;
    item.hidden = Boolean(filter) && !FILTERS[filter].includes(event.kind);
    list.prepend(item);
  }
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

function draw(frame) {
  if (!state.built) build(frame.cluster);
  state.frame = frame;
  drawRing(frame);
  drawNodes(frame);
  drawDrives(frame);
  drawS3(frame);
  drawTimeline(frame);
}

// --- clicks ------------------------------------------------------------------------------------

async function act(params) {
  const result = document.getElementById("action-result");
  setAttr(result, "data-ok", "pending");
  setText(result, `… ${params.action}`);
  let answer;
  try {
    const response = await fetch("/minigrid/console/action", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Console-CSRF": CSRF },
      body: JSON.stringify(params),
    });
    answer = await response.json();
    if (response.status === 401) { location.reload(); return; }
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  } catch (error) {
    setAttr(result, "data-ok", "false");
    setText(result, `✗ ${params.action}: ${error.message}`);
    return;
  }
  // One line per distinct request and answer: "POST …/scanner?speed=slow → 200 on nodes 0, 1, 2".
  const groups = new Map();
  for (const c of answer.calls) {
    const query = Object.entries(c.query).map(([k, v]) => `${k}=${v}`).join("&");
    const failed = c.status >= 300 || c.status === 0 ? ` (${(c.answer && c.answer.error) || ""})` : "";
    const key = `${c.method} ${c.path}${query ? "?" + query : ""} → ${c.status || "no answer"}${failed}`;
    groups.set(key, [...(groups.get(key) || []), c.node]);
  }
  const calls = [...groups].map(([key, nodes]) =>
    `${key} on ${nodes.length > 1 ? "nodes " : "node "}${nodes.join(", ")}`);
  setAttr(result, "data-ok", answer.ok ? "true" : "false");
  setText(result, `${answer.ok ? "✓" : "✗"} ${answer.command}` +
                  (answer.background ? " (running in the background; see the timeline)" : "") +
                  (calls.length ? " — " + calls.join("; ") : ""));
}

function clickParams(button) {
  const action = button.dataset.action;
  const params = { action };
  if (button.dataset.node !== undefined) params.node = Number(button.dataset.node);
  if (button.dataset.drive !== undefined) params.drive = Number(button.dataset.drive);
  if (action === "loop-block") params.seconds = 5;
  if (action === "partition") {
    params.a = Number(document.getElementById("part-a").value);
    params.b = Number(document.getElementById("part-b").value);
    params.mode = document.getElementById("part-mode").value;
  }
  if (action === "scanner") params.speed = document.getElementById("scanner-speed").value;
  return params;
}

document.addEventListener("click", event => {
  const button = event.target.closest("button[data-action]");
  if (!button || button.disabled) return;
  const params = clickParams(button);
  if (params.action === "wipe-drive" &&
      !confirm(`Wipe ${nodeName(params.node)}'s drive d${params.drive}? Everything on it goes; healing brings it back.`)) {
    return;
  }
  act(params);
});

document.getElementById("timeline-filter").addEventListener("change", event => {
  const filter = event.target.value;
  for (const item of document.querySelectorAll("#timeline li")) {
    item.hidden = Boolean(filter) && !FILTERS[filter].includes(item.dataset.kind);
  }
});

document.getElementById("signout").addEventListener("click", async () => {
  await fetch("/minigrid/console/logout", { method: "POST", credentials: "same-origin",
                                            headers: { "X-Console-CSRF": CSRF } });
  location.reload();
});

function scaleText(factor) {
  const current = Number(localStorage.getItem("minigrid-console-scale") || "1");
  const next = Math.min(2, Math.max(0.7, current * factor));
  localStorage.setItem("minigrid-console-scale", String(next));
  document.documentElement.style.zoom = String(next);
}
document.getElementById("bigger").addEventListener("click", () => scaleText(1.15));
document.getElementById("smaller").addEventListener("click", () => scaleText(1 / 1.15));
scaleText(1);

// --- the feed ------------------------------------------------------------------------------------

function connect() {
  const badge = document.getElementById("feed-state");
  const source = new EventSource("/minigrid/console/feed");
  source.addEventListener("state", message => {
    setAttr(badge, "data-state", "live");
    setText(badge, "live");
    draw(JSON.parse(message.data));
  });
  source.addEventListener("signed-out", () => { source.close(); location.reload(); });
  source.onerror = async () => {
    setAttr(badge, "data-state", "lost");
    setText(badge, "live feed lost: retrying");
    if (source.readyState === EventSource.CLOSED) {
      // Refused (the session ended, or the node restarted): the page itself says what to do.
      const probe = await fetch(location.href, { credentials: "same-origin" }).catch(() => null);
      if (probe && probe.status === 401) location.reload();
      else setTimeout(connect, 2000);
    }
  };
}
connect();
