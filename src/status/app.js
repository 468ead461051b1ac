"use strict";
// Draws /status.json as columns of boxes joined by arrows, and refreshes it.
const REFRESH_MS = 1500, NW = 118, NH = 58, GAP = 54, ROW = 76, PAD = 14;
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
let lastOk = null;

function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function num(x, digits) {
  if (x === null || x === undefined) return "–";
  if (x >= 1e6) return (x / 1e6).toFixed(1) + "M";
  if (x >= 1e4) return (x / 1e3).toFixed(1) + "k";
  return x < 10 && digits ? x.toFixed(digits) : Math.round(x).toString();
}
function rate(r) { return r === null ? "–" : num(r, r > 0 && r < 10 ? 1 : 0) + "/s"; }
function secs(s) { return s === null ? "–" : s < 10 ? s.toFixed(1) + "s" : num(s) + "s"; }
function duration(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  if (d) return d + "d " + h + "h";
  if (h) return h + "h " + String(m).padStart(2, "0") + "m";
  return m + "m " + String(s % 60).padStart(2, "0") + "s";
}
function fit(text, room) { return text.length > room ? "…" + text.slice(text.length - room + 1) : text; }
const KIND = { ingress: "", stage: "stage ", topic: "", sink: "sink ", shard: "db " };

function layout(status) {
  const perColumn = [];
  for (const n of status.nodes) perColumn[n.column] = Math.max(perColumn[n.column] || 0, n.row + 1);
  const rows = Math.max(1, ...perColumn.filter(Boolean));
  const place = {};
  for (const n of status.nodes) {
    const offset = (rows - perColumn[n.column]) * ROW / 2;
    place[n.id] = { x: PAD + n.column * (NW + GAP), y: PAD + offset + n.row * ROW };
  }
  const width = PAD * 2 + status.columns * (NW + GAP) - GAP, height = PAD * 2 + rows * ROW - (ROW - NH);
  return { place, width, height };
}

function draw(status) {
  const { place, width, height } = layout(status);
  const svg = $("graph");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const edges = $("edges"), nodes = $("nodes"), labels = $("labels");
  edges.replaceChildren(); nodes.replaceChildren(); labels.replaceChildren();
  // A node's arrows leave (and arrive) at points spread along its side, in the order of the
  // other ends, so they neither cross nor share a label spot.
  const lists = {}, leave = new Map(), arrive = new Map();
  for (const e of status.edges) {
    (lists["out " + e.from] = lists["out " + e.from] || []).push([place[e.to].y, e, leave]);
    (lists["in " + e.to] = lists["in " + e.to] || []).push([place[e.from].y, e, arrive]);
  }
  for (const list of Object.values(lists)) {
    list.sort((a, b) => a[0] - b[0]).forEach(([, e, at], i) => at.set(e, NH * (i + 1) / (list.length + 1)));
  }
  const dlqHot = new Set();
  for (const e of status.edges) {
    const a = place[e.from], b = place[e.to];
    const x1 = a.x + NW, y1 = a.y + leave.get(e), x2 = b.x - 2, y2 = b.y + arrive.get(e), dx = (x2 - x1) / 2;
    const hot = e.dead_letter && e.rate > 0;
    if (hot) dlqHot.add(e.from.startsWith("topic:") ? e.from : e.to);
    const width = e.rate > 0 ? 1.2 + Math.min(4, Math.log10(1 + e.rate)) : 1.2;
    const path = el("path", {
      d: `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`,
      class: (e.dead_letter ? "dead " : "") + (hot ? "hot" : ""),
      "stroke-width": width.toFixed(1), "marker-end": "url(#arrow)",
    });
    path.append(el("title", {}, `${e.label}: ${rate(e.rate)} (total ${num(e.total)})`));
    edges.append(path);
    // A dead-letter edge that carries nothing stays unlabelled (its tooltip has the figures).
    if (e.dead_letter && !(e.rate > 0) && e.rate !== null) continue;
    // Fan-outs put the label nearer the target, where the arrows are apart; dead letters
    // nearer their source, away from the main flow's labels.
    const t = y1 === y2 ? 0.5 : e.dead_letter ? (e.from.startsWith("topic:") ? 0.5 : 0.3) : 0.62;
    const lx = x1 + (x2 - x1) * t, ly = y1 + (y2 - y1) * t - 4;
    labels.append(el("text", {
      x: lx, y: ly, class: "rate " + (hot ? "hot" : e.rate === 0 ? "zero" : ""),
      "data-rate": e.rate === null ? "" : e.rate, "data-edge": `${e.from} > ${e.to}`,
    }, rate(e.rate)));
  }
  for (const n of status.nodes) {
    const p = place[n.id];
    const growing = n.lag.some((l) => l.growing);
    const cls = ["node", n.kind, n.here ? "" : "away", growing ? "growing" : "",
      n.dead_letter ? "dlq" : "", dlqHot.has(n.id) ? "hot" : ""].filter(Boolean).join(" ");
    const g = el("g", { class: cls, transform: `translate(${p.x},${p.y})`, "data-id": n.id });
    g.append(el("rect", { width: NW, height: NH, rx: n.kind === "topic" ? 18 : 7 }));
    g.append(el("title", {}, `${n.kind} ${n.name}` + (n.here ? "" : " (not run by this process)")));
    g.append(el("text", { x: 8, y: 17, class: "name" }, fit(KIND[n.kind] + n.label, 17)));
    if (n.dead_letter) g.append(el("text", { x: NW - 8, y: 17, class: "tag", "text-anchor": "end" }, "DLQ"));
    n.lag.forEach((l, i) => {
      const what = l.what === "rejections" ? "rej " : "lag ";
      g.append(el("text", { x: 8, y: 33 + i * 14, class: "lag" + (l.growing ? " growing" : "") },
        what + (l.records === null && l.seconds === null ? "–" : num(l.records) + " · " + secs(l.seconds)) +
        (l.growing ? " ▲" : "")));
    });
    if (n.fused_behind) g.append(el("text", { x: 8, y: 33, class: "lag" }, "fused behind " + n.fused_behind));
    if (!n.here && n.kind !== "topic") g.append(el("text", { x: 8, y: NH - 6, class: "lag" }, "not in this process"));
    nodes.append(g);
  }
}

function facts(status) {
  $("version").textContent = "v" + status.version + (status.revision ? " · " + status.revision : "");
  $("uptime").textContent = duration(status.uptime_seconds);
  $("parts").replaceChildren(...["ingress", "processors", "sinks"].map((p) => {
    const chip = document.createElement("span");
    chip.className = "chip" + (status.parts[p] ? "" : " off");
    chip.textContent = p;
    return chip;
  }));
  $("backend").textContent = status.log_backend;
  $("mode").textContent = status.mode;
  const notes = [];
  const missing = Object.entries(status.parts).filter(([, on]) => !on).map(([p]) => p);
  if (missing.length) notes.push(`This process does not run ${missing.join(" or ")}: their boxes are faded, and the figures are what this process sees (look at the processes that run them for theirs).`);
  if (!status.lag_reported) notes.push("This process reports no consumer lag yet: lag shows as –.");
  if (status.topic_prefix) notes.push(`Topic names below leave out their shared prefix ${status.topic_prefix}`);
  if (status.interval_seconds === null) notes.push("Rates appear from the next refresh on.");
  $("notes").replaceChildren(...notes.map((text) => {
    const div = document.createElement("div");
    div.className = "banner";
    div.textContent = text;
    return div;
  }));
}

function consumers(status) {
  const rows = [];
  for (const n of status.nodes) for (const l of n.lag) {
    const tr = document.createElement("tr");
    if (l.growing) tr.className = "growing";
    const trend = l.records === null ? "–" : l.growing ? "▲ growing" : "steady";
    for (const [text, cls] of [[KIND[n.kind] + n.label], [l.what], [l.group], [num(l.records), "n"], [secs(l.seconds), "n"], [trend]]) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.append(td);
    }
    rows.push(tr);
  }
  $("consumers").tBodies[0].replaceChildren(...rows);
}

async function refresh() {
  try {
    const response = await fetch("status.json", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const status = await response.json();
    draw(status); facts(status); consumers(status);
    lastOk = new Date();
    const over = status.interval_seconds ? ` (rates over ${status.interval_seconds.toFixed(1)}s)` : "";
    $("refreshed").textContent = lastOk.toLocaleTimeString() + over;
    $("alert").hidden = true;
    document.body.classList.remove("stale");
  } catch (error) {
    $("alert").hidden = false;
    $("alert").textContent = `No answer from status.json (${error.message}); ` +
      (lastOk ? `the figures below are from ${lastOk.toLocaleTimeString()}.` : "nothing shown yet.");
    document.body.classList.add("stale");
  }
  setTimeout(refresh, REFRESH_MS);
}
refresh();
