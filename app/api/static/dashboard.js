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

function start() {
  if (state.timer) clearInterval(state.timer);
  poll();
  state.timer = setInterval(poll, POLL_MS);
}

function stop(message) {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
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
