// seqattn dashboard: the API key, live job lists, the job form, promote and rollback.
// Every action calls the /v1 API; its JSON error {field, message} is shown as it came.
"use strict";

const KEY = "seqattn-api-key";

function headers(json) {
  const h = {};
  const key = sessionStorage.getItem(KEY);
  if (key) h["Authorization"] = "Bearer " + key;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function call(method, url, body) {
  const r = await fetch(url, { method, headers: headers(body !== undefined), body });
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  return { ok: r.ok, status: r.status, data };
}

function show(out, result, okText) {
  out.className = result.ok ? "ok" : "error";
  out.textContent = "";
  if (result.ok) { out.textContent = okText; return; }
  const d = result.data || {};
  if (d.field) {
    const code = document.createElement("code");
    code.className = "field";
    code.textContent = d.field;
    out.append(code, ": ");
  }
  const msg = document.createElement("span");
  msg.className = "message";
  msg.textContent = d.message || ("HTTP " + result.status);
  out.append(msg);
}

function apiKeyField() {
  const input = document.getElementById("api-key");
  if (!input) return;
  input.value = sessionStorage.getItem(KEY) || "";
  input.addEventListener("input", () => sessionStorage.setItem(KEY, input.value.trim()));
}

// "3 min ago" in the same words as the server (pages.relative), kept current without a request.
function relative(iso) {
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  const s = Math.abs(seconds);
  const units = [["d", 86400], ["h", 3600], ["min", 60]];
  let span = Math.round(s) + " s";
  for (const [unit, size] of units) {
    if (s >= size) { span = Math.round(s / size) + " " + unit; break; }
  }
  return seconds >= 0 ? span + " ago" : "in " + span;
}

function refreshTimes(root) {
  root.querySelectorAll("time[datetime]").forEach((t) => {
    const iso = t.getAttribute("datetime");
    t.textContent = relative(iso);
    if (!t.title) t.title = new Date(iso).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  });
}

// Re-fetch a server-rendered fragment every second while the tab is visible; the server answers
// 304 while nothing changed (its ETag), so an idle list costs one small read.
function poll(el) {
  let busy = false;
  let etag = null;
  setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const r = await fetch(el.dataset.poll, { cache: "no-store", headers: etag ? { "If-None-Match": etag } : {} });
      if (r.status === 200) {
        etag = r.headers.get("ETag");
        el.innerHTML = await r.text();
        refreshTimes(el);
      }
    } catch (e) { /* the server restarts: try again next second */ }
    busy = false;
  }, 1000);
}

function jobForm(form) {
  const out = document.getElementById("job-result");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const result = await call("POST", "/v1/jobs", document.getElementById("job-spec").value);
    show(out, result, result.ok ? "Queued job " + result.data.id + " (" + result.data.name + ")" : "");
  });
}

function actions(box) {
  const name = box.dataset.name;
  const out = document.getElementById("action-result");
  const done = (result, text) => {
    show(out, result, text);
    if (result.ok) setTimeout(() => location.reload(), 600);
  };
  document.querySelectorAll("button.promote").forEach((b) => b.addEventListener("click", async () => {
    const body = { version: Number(b.dataset.version) };
    if (box.dataset.promoted) body.expected_version = Number(box.dataset.promoted);
    const result = await call("POST", "/v1/feature-sets/" + name + "/promote", JSON.stringify(body));
    done(result, "Promoted v" + b.dataset.version);
  }));
  const rollback = document.getElementById("rollback");
  if (rollback) rollback.addEventListener("click", async () => {
    const result = await call("POST", "/v1/feature-sets/" + name + "/rollback", "{}");
    done(result, result.ok ? "Rolled back to v" + result.data.promoted_version : "");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  apiKeyField();
  refreshTimes(document);
  setInterval(() => refreshTimes(document), 5000);
  document.querySelectorAll("[data-poll]").forEach(poll);
  const form = document.getElementById("job-form");
  if (form) jobForm(form);
  const box = document.getElementById("actions");
  if (box) actions(box);
});
