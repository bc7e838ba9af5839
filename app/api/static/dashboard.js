// PlayerPulse dashboard: polls GET /v1/dashboard with a read key kept in sessionStorage,
// and turns each pair of snapshots into rates and interval percentiles, drawn with uPlot.
"use strict";

const POLL_MS = 2000;
const KEEP = 300; // points per series: 10 minutes at one poll every 2 s
const EVENT_HOPS = ["device_to_received", "received_to_acked", "appended_to_folded",
  "received_to_folded", "device_to_folded"];
const PREDICTION_HOPS = ["profile", "model", "total"];
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
  "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

const state = { key: sessionStorage.getItem("playerpulse-read-key"), prev: null,
  timer: null, charts: {}, series: {} };

// Interval quantile from two cumulative histograms (linear within a bucket, as
// Prometheus' histogram_quantile); null if nothing was observed in the interval.
function quantile(now, prev, q) {
  if (!now) return null;
  const deltas = now.counts.map((c, i) => c - (prev ? prev.counts[i] || 0 : 0));
  const total = deltas[deltas.length - 1];
  if (!(total > 0)) return null;
  const rank = q * total;
  for (let i = 0; i < deltas.length; i++) {
    if (deltas[i] >= rank) {
      const upper = now.le[i];
      const lower = i === 0 ? 0 : now.le[i - 1];
      if (upper === null) return lower;
      const below = i === 0 ? 0 : deltas[i - 1];
      const inBucket = deltas[i] - below;
      const fraction = inBucket > 0 ? (rank - below) / inBucket : 1;
      return lower + (upper - lower) * fraction;
    }
  }
  return null;
}

function ms(seconds) { return seconds === null ? null : seconds * 1000; }
function fmt(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "-";
  return value.toLocaleString("en-US", { maximumFractionDigits: digits,
    minimumFractionDigits: digits });
}

function push(name, t, values) {
  let s = state.series[name];
  const labels = Object.keys(values).sort();
  if (!s || s.labels.join("\u0000") !== labels.join("\u0000")) {
    const old = s;
    s = { labels, data: [[]].concat(labels.map(() => [])) };
    if (old) { // keep the history of series that are still there
      s.data[0] = old.data[0].slice();
      labels.forEach((label, i) => {
        const j = old.labels.indexOf(label);
        s.data[i + 1] = j >= 0 ? old.data[j + 1].slice() : old.data[0].map(() => null);
      });
    }
    state.series[name] = s;
    if (state.charts[name]) { state.charts[name].destroy(); delete state.charts[name]; }
  }
  s.data[0].push(t);
  labels.forEach((label, i) => s.data[i + 1].push(values[label]));
  if (s.data[0].length > KEEP) s.data.forEach((column) => column.shift());
  draw(name, s);
}

function draw(name, s) {
  const el = document.getElementById(name);
  let chart = state.charts[name];
  if (!chart) {
    const log = el.dataset.log === "true";
    chart = new uPlot({
      width: Math.max(300, el.clientWidth || 560), height: 220,
      // At least the last minute on the time axis, however few points there are yet.
      scales: { x: { time: true, range: (u, min, max) => [Math.min(min, max - 60), max] }, y: log ? { distr: 3 } : { range: (u, min, max) => [0, Math.max(1, max)] } },
      series: [{}].concat(s.labels.map((label, i) => ({
        label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false,
      }))),
      axes: [{}, { size: 60 }],
    }, s.data, el);
    state.charts[name] = chart;
  } else {
    chart.setData(s.data);
  }
}

function positive(value) { return value !== null && value > 0 ? value : null; }

function render(now, prev) {
  const t = now.time;
  const dt = prev ? now.time - prev.time : null;
  const rate = (name) => (dt > 0 ? (now.counters[name] - prev.counters[name]) / dt : null);
  const hop = (group, name) => [now[group][name], prev ? prev[group][name] : null];

  const freshness = hop("event_hops", "received_to_folded");
  const fresh50 = ms(quantile(freshness[0], freshness[1], 0.5));
  const fresh99 = ms(quantile(freshness[0], freshness[1], 0.99));
  const lagTotal = Object.values(now.lag).reduce((a, b) => a + b, 0);
  const predictionRate = dt > 0 ? now.models.reduce((sum, m) => {
    const before = prev.models.find((p) => p.model === m.model && p.version === m.version);
    return sum + (m.seconds.count - (before ? before.seconds.count : 0)) / dt;
  }, 0) : null;

  setText("tile-ingest-rate", fmt(rate("events_accepted")));
  setText("tile-fold-rate", fmt(rate("events_folded")));
  setText("tile-freshness", fresh50 === null ? "-" : `${fmt(fresh50, 1)} / ${fmt(fresh99, 1)} ms`);
  setText("tile-lag", fmt(lagTotal));
  setText("tile-failed", `${fmt(now.counters.events_failed)} / ${fmt(now.counters.late_events)}`);
  setText("tile-predictions", fmt(predictionRate, 1));
  setText("tile-accepted", fmt(now.counters.events_accepted));
  setText("tile-folded", fmt(now.counters.events_folded));
  renderResources(now);

  if (!prev) return;
  const p50 = {}, p99 = {};
  for (const name of EVENT_HOPS) {
    const [a, b] = hop("event_hops", name);
    p50[name] = positive(ms(quantile(a, b, 0.5)));
    p99[name] = positive(ms(quantile(a, b, 0.99)));
  }
  push("chart-hops-p50", t, p50);
  push("chart-hops-p99", t, p99);
  push("chart-rates", t, { ingest: rate("events_accepted"), fold: rate("events_folded"),
    duplicates: rate("events_duplicate") });
  push("chart-failed", t, { failed: rate("events_failed"), late: rate("late_events"),
    rejected: rate("events_rejected"), throttled: rate("events_throttled") });
  const lag = {};
  for (const [partition, value] of Object.entries(now.lag)) lag[`partition ${partition}`] = value;
  push("chart-lag", t, lag);
  const predictionHops = {};
  for (const name of PREDICTION_HOPS) {
    const [a, b] = hop("prediction_hops", name);
    predictionHops[name] = positive(ms(quantile(a, b, 0.99)));
  }
  push("chart-prediction-hops", t, predictionHops);
  renderModels(now, prev, dt);
}

function renderModels(now, prev, dt) {
  const body = document.querySelector("#models tbody");
  body.replaceChildren(...now.models.map((m) => {
    const before = prev.models.find((p) => p.model === m.model && p.version === m.version);
    const b = before ? before.seconds : null;
    const cells = [m.model, m.version,
      fmt((m.seconds.count - (b ? b.count : 0)) / dt, 1),
      fmt(ms(quantile(m.seconds, b, 0.5)), 2), fmt(ms(quantile(m.seconds, b, 0.99)), 2),
      fmt(m.seconds.count)];
    const row = document.createElement("tr");
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    return row;
  }));
}

function renderResources(now) {
  const mb = (bytes) => fmt(bytes / 1e6, 0);
  const disks = now.disk || [];
  const least = disks.reduce((low, d) => (low === null || d.free_bytes < low.free_bytes ? d : low), null);
  const state = now.writes_refused ? "REFUSED (507)" : "accepting";
  setText("tile-disk", least ? `${mb(least.free_bytes)} MB / ${state}` : state);
  const memory = Object.values(now.memory || {}).reduce((a, b) => a + b, 0);
  setText("tile-memory", memory ? `${mb(memory)} MB` : "-");
  const fill = (selector, rows) => {
    const body = document.querySelector(selector);
    body.replaceChildren(...rows.map((cells) => {
      const tr = document.createElement("tr");
      for (const cell of cells) {
        const td = document.createElement("td");
        td.textContent = cell;
        tr.append(td);
      }
      return tr;
    }));
  };
  fill("#disks tbody", disks.map((d) => [d.directory, d.path, mb(d.free_bytes), mb(d.min_free_bytes)]));
  fill("#memory tbody", Object.entries(now.memory || {}).map(([name, rss]) => [name, mb(rss)]));
}

function setText(id, text) { document.getElementById(id).textContent = text; }

async function poll() {
  let reply;
  try {
    reply = await fetch("/v1/dashboard", { headers: { Authorization: `Bearer ${state.key}` } });
  } catch (error) {
    setText("status", `cannot reach the service: ${error}`);
    return;
  }
  if (reply.status === 401 || reply.status === 403) {
    const body = await reply.json().catch(() => ({}));
    stop(`key refused (${reply.status}): ${body.detail || body.error || ""}`);
    return;
  }
  if (!reply.ok) {
    setText("status", `data call failed: HTTP ${reply.status}`);
    return;
  }
  const now = await reply.json();
  document.getElementById("board").hidden = false;
  document.getElementById("key-form").hidden = true;
  render(now, state.prev);
  state.prev = now;
  document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  setText("status", `live, updated ${new Date(now.time * 1000).toLocaleTimeString()}`);
}

// Experiment and drift reports (admin routes: shown when the key is an admin key).
const REPORTS_MS = 30000;

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
}

function table(headers, rows) {
  const t = document.createElement("table");
  const head = document.createElement("tr");
  for (const h of headers) {
    const th = document.createElement("th");
    th.textContent = h;
    head.appendChild(th);
  }
  t.appendChild(head);
  for (const values of rows) {
    const row = document.createElement("tr");
    for (const [text, className] of values) cell(row, text, className);
    t.appendChild(row);
  }
  return t;
}

function pct(value, digits = 2) { return value === null ? "-" : `${fmt(value * 100, digits)} %`; }

function experimentBlock(report) {
  const block = document.createElement("div");
  const rows = report.rows.map((r) => [[String(r.version)], [r.share === null ? "-" : `${r.share} %`],
    [fmt(r.players)], [fmt(r.converted)], [pct(r.rate)], [fmt(r.mean_value, 3)],
    [r.uplift === null ? "control" : pct(r.uplift)],
    [r.ci_low === null ? "-" : `${pct(r.ci_low)} .. ${pct(r.ci_high)}`],
    [r.p_value === null ? "-" : fmt(r.p_value, 4)]]);
  block.appendChild(table(["version", "share", "players", "converted", "rate", "mean value",
    "uplift", "95% interval", "p-value"], rows));
  const srm = document.createElement("p");
  if (report.srm) {
    srm.textContent = `sample ratio check: p = ${fmt(report.srm.p_value, 4)}` +
      (report.srm.ok ? " (the split exposed players as set)" : "");
  }
  block.appendChild(srm);
  for (const warning of report.warnings) {
    const w = document.createElement("p");
    w.className = "warning";
    w.textContent = warning;
    block.appendChild(w);
  }
  return block;
}

function driftBlock(report) {
  const rows = report.rows.map((f) => [[f.feature], [fmt(f.psi, 3), f.flagged ? "flagged" : ""],
    [f.flagged ? "drifted (PSI > 0.2)" : "stable", f.flagged ? "flagged" : ""], [fmt(f.live)]]);
  return table(["feature", "PSI", "", "live values"], rows);
}

async function report(path) {
  const reply = await fetch(path, { headers: { Authorization: `Bearer ${state.key}` } });
  const body = await reply.json().catch(() => ({}));
  return { status: reply.status, body };
}

async function pollReports() {
  const note = document.getElementById("reports-note");
  const out = document.getElementById("reports-body");
  const models = await report("/v1/admin/models");
  if (models.status === 403) {
    note.textContent = "Experiment and drift reports need an admin key (a read key shows the rest).";
    out.replaceChildren();
    return;
  }
  if (models.status !== 200) {
    note.textContent = `models: HTTP ${models.status}`;
    return;
  }
  const blocks = [];
  for (const model of models.body.models) {
    const name = encodeURIComponent(model.name);
    const section = document.createElement("div");
    section.className = "report";
    section.dataset.model = model.name;
    const title = document.createElement("h3");
    title.textContent = `${model.name}: experiment`;
    section.appendChild(title);
    const experiment = await report(`/v1/admin/models/${name}/experiment`);
    if (experiment.status === 200) {
      section.appendChild(experimentBlock(experiment.body));
    } else {
      const p = document.createElement("p");
      p.className = "note";
      p.textContent = experiment.body.error || `HTTP ${experiment.status}`;
      section.appendChild(p);
    }
    const driftTitle = document.createElement("h3");
    driftTitle.textContent = `${model.name}: drift of live features`;
    section.appendChild(driftTitle);
    const drift = await report(`/v1/admin/models/${name}/drift`);
    if (drift.status === 200) {
      section.appendChild(driftBlock(drift.body));
    } else {
      const p = document.createElement("p");
      p.className = "note";
      p.textContent = drift.body.error || `HTTP ${drift.status}`;
      section.appendChild(p);
    }
    blocks.push(section);
  }
  note.textContent = blocks.length ? `Updated every ${REPORTS_MS / 1000} s, over the lake.`
    : "No model in this game yet.";
  out.replaceChildren(...blocks);
}

function start() {
  if (state.timer) clearInterval(state.timer);
  if (state.reportsTimer) clearInterval(state.reportsTimer);
  poll();
  state.timer = setInterval(poll, POLL_MS);
  pollReports();
  state.reportsTimer = setInterval(pollReports, REPORTS_MS);
}

function stop(message) {
  if (state.timer) clearInterval(state.timer);
  if (state.reportsTimer) clearInterval(state.reportsTimer);
  state.timer = null;
  state.reportsTimer = null;
  state.key = null;
  sessionStorage.removeItem("playerpulse-read-key");
  document.getElementById("board").hidden = true;
  document.getElementById("key-form").hidden = false;
  setText("key-error", message);
  setText("status", "not connected");
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = document.getElementById("key").value.trim();
  if (!key) return;
  state.key = key;
  sessionStorage.setItem("playerpulse-read-key", key);
  setText("key-error", "");
  start();
});

document.querySelectorAll("#chart-hops-p50, #chart-hops-p99, #chart-prediction-hops")
  .forEach((el) => { el.dataset.log = "true"; });
if (state.key) start();
