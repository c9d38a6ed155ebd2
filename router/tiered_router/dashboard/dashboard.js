// The cost dashboard: reads /v1/tiered/costs, /v1/tiered/costs/history and /v1/tiered/status with the
// viewer's key and draws them. No libraries: charts are inline SVG built here. Every number shown is also
// in its element's data-value (unformatted), so tests and scrapers read what the page shows.
"use strict";

const COLORS = ["#5b3cc4", "#1a9c8c", "#e07b39", "#c23b6b", "#3b82c4", "#8a9a1c", "#7a5230", "#555"];
const REFRESH_MS = 10000;
const burstSeen = {}; // tier -> [[start, end], ...] observed while the page is open (status shows only "now")
let colorOf = {};

// `#key=…&window=900`: a key (kept in this tab's sessionStorage, never sent anywhere but the API) and a window.
function readFragment() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const key = fragment.get("key") || sessionStorage.getItem("tiered-key") || "";
  if (fragment.get("key")) sessionStorage.setItem("tiered-key", key);
  const windowSelect = document.getElementById("window");
  if (fragment.get("window") && [...windowSelect.options].some((o) => o.value === fragment.get("window"))) {
    windowSelect.value = fragment.get("window");
  }
  if (location.hash) history.replaceState(null, "", location.pathname); // keep the key out of the address bar
  return key;
}

async function api(path) {
  const key = document.getElementById("key").value.trim();
  const headers = key ? { Authorization: "Bearer " + key } : {};
  const reply = await fetch(path, { headers, cache: "no-store" });
  if (!reply.ok) {
    let message = reply.status + " " + reply.statusText;
    try { message = (await reply.json()).error.message || message; } catch (_) { /* not JSON */ }
    throw new Error(path + ": " + message);
  }
  return reply.json();
}

const usd = (v) => v === null || v === undefined ? "—" : "$" + (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(3));
const pct = (v) => v === null || v === undefined ? "—" : (100 * v).toFixed(1) + "%";
const count = (v) => v === null || v === undefined ? "—" : v >= 1e9 ? (v / 1e9).toFixed(2) + "B" : v >= 1e6 ? (v / 1e6).toFixed(2) + "M" : v >= 1e4 ? (v / 1e3).toFixed(1) + "k" : String(Math.round(v));

function show(metric, value, format) {
  for (const el of document.querySelectorAll(`[data-metric="${metric}"]`)) {
    el.textContent = format(value);
    el.dataset.value = value === null || value === undefined ? "" : String(value);
  }
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("data-")) node.setAttribute(k, v); else node[k] = v;
  }
  for (const child of children) node.append(child);
  return node;
}

function sumBy(rows, field) {
  const out = {};
  for (const row of rows) {
    const k = row[field];
    const line = out[k] || (out[k] = { cost: 0, tokens: 0, requests: 0 });
    line.cost += row.cost_usd;
    line.tokens += row.input_tokens + row.output_tokens;
    line.requests += row.requests;
  }
  return out;
}

function bars(tableId, metric, entries, valueOf, format, extra) {
  const table = document.getElementById(tableId);
  table.replaceChildren();
  const max = Math.max(1e-12, ...entries.map(([, v]) => valueOf(v)));
  if (!entries.length) table.append(el("tr", {}, el("td", { className: "muted", textContent: "nothing served yet" })));
  for (const [key, v] of entries) {
    const value = valueOf(v);
    const bar = el("span");
    bar.style.width = (100 * value / max).toFixed(1) + "%";
    if (colorOf[key]) bar.style.background = colorOf[key];
    table.append(el("tr", {},
      el("td", { textContent: key }),
      el("td", { className: "bar" }, bar),
      el("td", { className: "num", textContent: format(value), "data-metric": metric, "data-key": key, "data-value": String(value) }),
      ...(extra ? [el("td", { className: "num muted", textContent: extra(v) })] : [])));
  }
}

function withText(node, text) {
  node.textContent = text;
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// A stacked area (stack=true) or line chart of series {name: [values]} over timestamps (seconds).
function chart(containerId, timestamps, series, options) {
  const W = 1000, H = 220, L = 56, R = 8, T = 8, B = 22;
  const box = document.getElementById(containerId);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  const names = Object.keys(series);
  const n = timestamps.length;
  const x = (i) => L + (n > 1 ? i * (W - L - R) / (n - 1) : 0);
  const stacked = [];
  let base = new Array(n).fill(0);
  for (const name of names) {
    const top = series[name].map((v, i) => (options.stack ? base[i] : 0) + v);
    stacked.push([name, options.stack ? base : null, top]);
    if (options.stack) base = top;
  }
  const extraMax = options.dashed ? Math.max(0, ...options.dashed) : 0;
  const max = Math.max(1e-12, extraMax, ...stacked.map(([, , top]) => Math.max(0, ...top)));
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const start = timestamps[0], end = timestamps[n - 1] + options.step;
  for (const [tier, periods] of Object.entries(burstSeen)) {
    for (const [from, to] of periods) {
      const a = Math.max(from, start), b = Math.min(to, end);
      if (b <= a || n < 2) continue;
      const px = (t) => L + (t - start) / (timestamps[n - 1] - start) * (W - L - R);
      root.append(svg("rect", { class: "burst", x: px(a), y: T, width: Math.max(2, px(b) - px(a)), height: H - T - B }));
      root.append(withText(svg("title", {}), "burst: " + tier));
    }
  }
  for (let k = 0; k <= 4; k++) {
    const v = max * k / 4;
    root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    root.append(withText(svg("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end" }), options.format(v)));
  }
  for (let k = 0; k < 5 && n > 1; k++) {
    const i = Math.round(k * (n - 1) / 4);
    const label = new Date(timestamps[i] * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    root.append(withText(svg("text", { x: x(i), y: H - 6, "text-anchor": k === 0 ? "start" : k === 4 ? "end" : "middle" }), label));
  }
  for (const [name, low, top] of stacked) {
    const color = colorOf[name] || "#888";
    const line = top.map((v, i) => `${x(i)},${y(v)}`).join(" ");
    if (low) {
      const under = low.map((v, i) => `${x(i)},${y(v)}`).reverse().join(" ");
      root.append(svg("polygon", { points: line + " " + under, fill: color, "fill-opacity": 0.75, stroke: color }));
    } else {
      root.append(svg("polyline", { points: line, fill: "none", stroke: color, "stroke-width": 2 }));
    }
  }
  if (options.dashed) {
    const line = options.dashed.map((v, i) => `${x(i)},${y(v)}`).join(" ");
    root.append(svg("polyline", { points: line, fill: "none", stroke: "#1d2330", "stroke-width": 1.5, "stroke-dasharray": "6 4" }));
  }
  const legend = el("div", { className: "legend" });
  for (const name of names) {
    const swatch = el("i");
    swatch.style.background = colorOf[name] || "#888";
    legend.append(el("span", {}, swatch, name));
  }
  box.replaceChildren(root, legend);
}

function renderCosts(costs) {
  const t = costs.totals;
  const rates = costs.rates;
  const resolution = costs.resolution.totals;
  show("total-cost", t.cost_usd, usd);
  show("baseline-cost", t.baseline_cost_usd, usd);
  show("savings", t.savings_usd, usd);
  show("savings-share", t.baseline_cost_usd ? t.savings_usd / t.baseline_cost_usd : null, (v) => pct(v) + " of baseline");
  show("requests", t.requests, count);
  show("tokens", t.input_tokens + t.output_tokens, count);
  show("escalation-rate", rates.escalation_rate, pct);
  show("escalated", rates.escalated, count);
  show("cache-hit-rate", rates.cache_hit_rate, pct);
  show("cache-hits", rates.cache_hits, count);
  show("cost-per-resolved-task", resolution.cost_per_resolved_task_usd, usd);
  show("resolution-rate", resolution.resolution_rate, pct);
  show("tokens-per-day", costs.break_even.tokens_per_day, count);
  document.getElementById("since").textContent = new Date(costs.window.start * 1000).toLocaleString();
  document.getElementById("baseline-tier").textContent = costs.baseline_tier || "the same tier (no baseline)";
  document.getElementById("scope").textContent = costs.team ? "team " + costs.team + " (this key's team)" : "all teams";

  const rows = costs.by_tier_team_feature;
  const byTier = sumBy(rows, "tier");
  Object.keys(byTier).sort().forEach((tier, i) => { colorOf[tier] = colorOf[tier] || COLORS[Object.keys(colorOf).length % COLORS.length]; });
  const sorted = (o) => Object.entries(o).sort((a, b) => b[1].cost - a[1].cost);
  bars("by-team", "cost-by-team", sorted(sumBy(rows, "team")), (v) => v.cost, usd, (v) => count(v.requests) + " req");
  bars("by-feature", "cost-by-feature", sorted(sumBy(rows, "feature")), (v) => v.cost, usd, (v) => count(v.requests) + " req");
  bars("by-user", "cost-by-user", costs.by_user.slice(0, 20).map((u) => [costs.team ? u.user : u.team + "/" + u.user, u]), (v) => v.cost_usd, usd, (v) => count(v.tokens) + " tok");
  const allTokens = Object.values(byTier).reduce((s, v) => s + v.tokens, 0);
  bars("tier-mix", "tier-share", Object.entries(byTier).sort(), (v) => allTokens ? v.tokens / allTokens : 0, pct, (v) => usd(v.cost));

  const table = document.getElementById("resolution");
  table.replaceChildren(el("tr", {}, ...["by", "", "judged", "resolved", "rate", "cost / resolved task"].map((h, i) => el("th", { className: i > 1 ? "num" : "", textContent: h }))));
  const r = costs.resolution;
  for (const [group, list] of [["tier", r.by_tier], ["team", r.by_team], ["feature", r.by_feature]]) {
    for (const row of list) {
      const key = row[group];
      table.append(el("tr", {},
        el("td", { className: "muted", textContent: group }), el("td", { textContent: key }),
        el("td", { className: "num", textContent: count(row.tasks_judged) }),
        el("td", { className: "num", textContent: count(row.tasks_resolved) }),
        el("td", { className: "num", textContent: pct(row.resolution_rate), "data-metric": "resolution-rate-by-" + group, "data-key": key, "data-value": String(row.resolution_rate ?? "") }),
        el("td", { className: "num", textContent: usd(row.cost_per_resolved_task_usd), "data-metric": "cost-per-resolved-task-by-" + group, "data-key": key, "data-value": String(row.cost_per_resolved_task_usd ?? "") })));
    }
  }
  if (!r.by_tier.length) table.append(el("tr", {}, el("td", { className: "muted", textContent: "no feedback yet: POST /v1/tiered/feedback {request_id | task_id, outcome}" })));

  const be = costs.break_even;
  document.getElementById("frontier-tier").textContent = be.frontier_tier || "(no external tier)";
  document.getElementById("formula").textContent = "How: " + be.formula + ". Volume now: " + count(be.tokens_per_day) + " tokens/day; input share " + pct(be.input_share) + ".";
  const beTable = document.getElementById("break-even");
  beTable.replaceChildren(el("tr", {}, ...["local tier", "replica-day", "capacity/day", "break-even tokens/day", "replicas now", "self-hosted/day", "frontier/day", "cheaper now"].map((h, i) => el("th", { className: i ? "num" : "", textContent: h }))));
  for (const row of be.tiers) {
    beTable.append(el("tr", {},
      el("td", { textContent: row.tier }),
      el("td", { className: "num", textContent: usd(row.replica_day_usd) }),
      el("td", { className: "num", textContent: count(row.replica_capacity_tokens_per_day) }),
      el("td", { className: "num", textContent: count(row.break_even_tokens_per_day), "data-metric": "break-even-tokens-per-day", "data-key": row.tier, "data-value": String(row.break_even_tokens_per_day ?? "") }),
      el("td", { className: "num", textContent: String(row.replicas_at_volume) }),
      el("td", { className: "num", textContent: usd(row.self_hosted_usd_per_day) }),
      el("td", { className: "num", textContent: usd(row.frontier_usd_per_day) }),
      el("td", { className: "num", textContent: row.cheaper })));
  }
}

function renderStatus(status) {
  const now = Date.now() / 1000;
  const table = document.getElementById("burst");
  table.replaceChildren(el("tr", {}, ...["tier", "burst now", "in flight", "breaker"].map((h) => el("th", { textContent: h }))));
  for (const tier of status.tiers) {
    const periods = burstSeen[tier.name] || (burstSeen[tier.name] = []);
    const last = periods[periods.length - 1];
    if (tier.burst) {
      if (last && last[1] >= now - 2 * REFRESH_MS / 1000) last[1] = now; else periods.push([now, now]);
    }
    table.append(el("tr", {},
      el("td", { textContent: tier.name }),
      el("td", { className: tier.burst ? "on" : "", textContent: tier.burst ? "bursting" : "no", "data-metric": "burst", "data-key": tier.name, "data-value": String(tier.burst) }),
      el("td", { textContent: String(tier.in_flight) }),
      el("td", { textContent: tier.breaker })));
  }
}

function renderHistory(h) {
  const tiers = Object.keys(h.tiers).sort();
  tiers.forEach((tier) => { colorOf[tier] = colorOf[tier] || COLORS[Object.keys(colorOf).length % COLORS.length]; });
  const tokens = {}, costs = {};
  const baseline = h.timestamps.map(() => 0);
  for (const tier of tiers) {
    const s = h.tiers[tier];
    tokens[tier] = h.timestamps.map((_, i) => (s.input_tokens ? s.input_tokens[i] + s.output_tokens[i] : 0));
    costs[tier] = s.cost_usd;
    s.baseline_cost_usd.forEach((v, i) => { baseline[i] += v; });
  }
  chart("burn-chart", h.timestamps, tokens, { stack: true, step: h.step_seconds, format: count });
  chart("cost-chart", h.timestamps, costs, { stack: false, step: h.step_seconds, format: usd, dashed: baseline });
  document.getElementById("history-source").textContent = h.source + ", " + h.step_seconds + " s steps" + (h.prometheus_error ? "; Prometheus failed: " + h.prometheus_error : "");
}

async function refresh() {
  const error = document.getElementById("error");
  const window_ = Number(document.getElementById("window").value);
  try {
    const [costs, history, status] = await Promise.all([
      api("/v1/tiered/costs"),
      api(`/v1/tiered/costs/history?window=${window_}&step=${Math.max(10, window_ / 90)}`),
      api("/v1/tiered/status"),
    ]);
    renderStatus(status);
    renderCosts(costs);
    renderHistory(history);
    error.hidden = true;
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
    document.body.dataset.loaded = String(Date.now());
  } catch (e) {
    error.textContent = String(e.message || e);
    error.hidden = false;
    document.body.dataset.error = String(e.message || e);
  }
}

document.getElementById("key").value = readFragment();
document.getElementById("controls").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("tiered-key", document.getElementById("key").value.trim());
  refresh();
});
document.getElementById("window").addEventListener("change", refresh);
refresh();
setInterval(refresh, REFRESH_MS);
