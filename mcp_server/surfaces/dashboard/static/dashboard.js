// The live dashboard. Everything from the daemon goes into the page as text (textContent), never as HTML:
// job output, hypothesis text and notes are untrusted.
"use strict";
const ACTIVE = ["queued", "dispatching", "unconfirmed", "running", "unknown"];
const STATUSES = [...ACTIVE, "succeeded", "failed", "cancelled", "timeout", "lost"];
const $ = id => document.getElementById(id);
let chart = null, follow = null, refreshTimer = null;

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v; else if (k === "cls") e.className = v; else e.setAttribute(k, v);
  }
  kids.forEach(k => e.append(k));
  return e;
}
const fmt = v => v === null || v === undefined ? "" : typeof v === "number" ? String(+v.toFixed(6)) : String(v);

async function get(path) {
  const r = await fetch(path, {credentials: "same-origin"});
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
  return body;
}

function table(t, head, rows) {
  t.textContent = "";
  t.append(el("tr", {}, ...head.map(h => el("th", {text: h}))));
  rows.forEach(r => t.append(el("tr", {}, ...r.map(c => c instanceof Node ? el("td", {}, c) : el("td", {text: fmt(c)})))));
}

const jobLink = id => el("a", {href: "#job/" + id, text: id});

async function showFleet() {
  const f = await get("api/fleet");
  $("fleet-summary").textContent = f.summary;
  const grid = $("fleet-grid");
  grid.textContent = "";
  f.hosts.forEach(h => {
    const box = el("div", {cls: "host" + (h.reachable ? "" : h.waiting ? " waiting" : " down"), "data-host": h.name},
                   el("b", {text: h.name}));
    if (h.waiting) box.append(el("div", {text: "waiting: " + h.waiting}));    // a pending cluster allocation
    else if (!h.reachable) box.append(el("div", {text: "unreachable: " + (h.error || "not connected")}));
    (h.gpus || []).forEach(g => {
      const d = el("div", {cls: "gpu " + (g.job_id ? "busy" : "free"), "data-gpu": h.name + ":" + g.index},
        el("span", {text: `GPU ${g.index} ${g.model}${g.simulated ? " (simulated)" : ""} · `}),
        g.job_id && g.job_id.startsWith("j") ? jobLink(g.job_id) : el("span", {text: g.job_id || "free"}),
        el("div", {cls: "muted", text: `util ${fmt(g.util_pct)}% · mem ${fmt(g.memory_used_gb)}/` +
                                       `${fmt(g.memory_total_gb)} GB · ${fmt(g.temp_c)}°C`}));
      box.append(d);
    });
    if (h.reachable) box.append(el("div", {cls: "muted", text: `CPU slots ${h.cpu_slots_used}/${h.cpu_slots}`}));
    grid.append(box);
  });
}

function showStatus(s) {
  const banner = $("checkpoint");
  if (!s) { banner.hidden = true; return; }
  banner.hidden = !s.paused;
  $("paused-reason").textContent = s.paused || "";
  $("since-approval").textContent = `${s.experiments_since_checkpoint} experiment(s) since the last approval` +
    (s.last_approval_note ? ` · last note: ${s.last_approval_note}` : "");
  table($("budgets"), ["", "used", "budget", "left"], [
    ["GPU-hours", s.gpu_hours_used, s.gpu_hours_budget, s.gpu_hours_left],
    ["money", s.money_used, s.money_budget, s.money_left],
    ["experiments to checkpoint", s.experiments_since_checkpoint, s.checkpoint_every,
     s.checkpoint_every === null ? null : Math.max(0, s.checkpoint_every - s.experiments_since_checkpoint)],
    ["GPUs", s.gpus_in_use, s.max_gpus, null]]);
}

async function showCampaign() {
  const c = await get("api/campaign");
  $("campaign-summary").textContent = `${c.points.length} ended run(s) of ${c.metric}; ` + c.significance.join("; ");
  chart = arcCampaignChart($("chart"), c, Math.min(1100, document.body.clientWidth - 40));
  window.arcChart = chart;
  showStatus(c.status);
  const health = $("health");
  health.textContent = "";
  (c.health.length ? c.health : ["no warnings"]).forEach(h => health.append(el("li", {text: h})));
  const rows = [];
  c.leaderboard.classes.forEach(b => b.best.forEach(r => rows.push([b.gpu_class, jobLink(r.job_id), r.metric,
    r.vs_baseline, JSON.stringify(r.changes)])));
  table($("leaderboard"), ["class", "job", c.metric, "vs baseline", "changes"], rows);
}

async function showJobs() {
  const form = new FormData($("job-filters"));
  const q = new URLSearchParams([...form.entries()].filter(([, v]) => v));
  const page = await get("api/jobs?" + q);
  $("jobs-summary").textContent = page.summary;
  table($("jobs-table"), ["job", "status", "name", "host", "class", "metric", "hypothesis", "tags", "ended"],
    page.jobs.map(j => [jobLink(j.job_id), el("span", {cls: "status-" + j.status, text: j.status}), j.name,
                        j.host, j.gpu_class, j.metric, j.hypothesis_id, j.tags.join(" "), j.ended_at]));
}

async function showJob(id) {
  const d = await get("api/jobs/" + encodeURIComponent(id));
  const j = d.job;
  $("job-title").textContent = `${j.job_id} · ${j.status}`;
  table($("job-facts"), ["field", "value"], [["name", j.name], ["host", j.host], ["class", j.gpu_class],
    ["metric", j.metric], ["exit", j.exit_code], ["reason", j.reason],
    ["command", j.command ? j.command.join(" ") : null], ["summary", JSON.stringify(j.summary_metrics)]]);
  $("job-triage").textContent = j.triage ? JSON.stringify(j.triage, null, 2) : "none";
  $("job-baseline").textContent = d.baseline ? "(" + d.baseline + ")" : "(no baseline in this class yet)";
  table($("job-config"), ["key", "value"], Object.entries(d.config_diff || {}).map(([k, v]) => [k, JSON.stringify(v)]));
  $("job-diff").textContent = d.code_diff ? (d.code_diff.diff || d.code_diff.summary) : "";
  const curve = $("job-curve");
  curve.textContent = "";
  if (d.curve) new uPlot({width: 700, height: 240, series: [{}, {label: d.curve.name, stroke: "#1f77b4"}],
                          scales: {x: {time: false}}}, [d.curve.step, d.curve.value], curve);
  const log = $("job-log");
  log.textContent = d.log ? d.log.text : (d.log_error || "no output yet");
  if (follow) clearInterval(follow);
  follow = null;
  if (d.log && ACTIVE.includes(j.status)) {
    let offset = d.log.next_offset;
    follow = setInterval(async () => {
      const more = await get(`api/jobs/${encodeURIComponent(id)}/log?offset=${offset}`);
      if (more.text) log.textContent += more.text;
      offset = more.next_offset;
    }, 1000);
  }
}

async function showHypotheses() {
  const h = await get("api/hypotheses");
  table($("hyp-table"), ["id", "status", "hypothesis", "verdict", "effect size", "runs"],
    h.hypotheses.map(x => [x.hyp_id, x.status, x.text, x.verdict, x.effect_size,
                           el("span", {}, ...x.jobs.flatMap(id => [jobLink(id), " "]))]));
}

async function route() {
  const [view, arg] = (location.hash.slice(1) || "fleet").split("/");
  document.querySelectorAll(".view").forEach(v => v.hidden = v.id !== "view-" + view);
  if (view !== "job" && follow) { clearInterval(follow); follow = null; }
  try {
    if (view === "fleet") await showFleet();
    else if (view === "campaign") await showCampaign();
    else if (view === "jobs") await showJobs();
    else if (view === "job") await showJob(arg);
    else if (view === "hypotheses") await showHypotheses();
    if (view !== "campaign") showStatus(await get("api/status"));
    document.body.dataset.ready = view;
  } catch (e) {
    document.body.dataset.ready = "error";
    $("live").textContent = "error: " + e.message;
  }
}

function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(route, 300);   // a burst of events is one refresh
}

window.addEventListener("DOMContentLoaded", () => {
  const sel = document.querySelector("#job-filters select");
  STATUSES.forEach(s => sel.append(el("option", {value: s, text: s})));
  $("job-filters").addEventListener("submit", e => { e.preventDefault(); showJobs(); });
  window.addEventListener("hashchange", route);
  const events = new EventSource("events");
  events.onopen = () => { $("live").textContent = "live"; };
  events.onerror = () => { $("live").textContent = "reconnecting…"; };
  events.addEventListener("arc", e => {
    const ev = JSON.parse(e.data);
    $("live").textContent = `live · ${ev.kind}${ev.job_id ? " " + ev.job_id : ""}`;
    refreshSoon();
  });
  route();
});
