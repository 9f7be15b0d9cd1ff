// trio-kernel dashboard: local times, actions through the JSON API, live job events.
// Hand-written, no dependencies.
"use strict";

// a job id's first 4 hex digits tell processes apart, its last 6 jobs of one process
const shortId = (id) => id.slice(0, 4) + "\u2026" + id.slice(-6);

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

function flash(text, kind) {
  const box = document.getElementById("flash");
  box.textContent = text;
  box.className = kind || "";
  box.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

function localTimes(root) {
  const format = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
  for (const node of (root || document).querySelectorAll("time[datetime]")) {
    const moment = new Date(node.getAttribute("datetime"));
    if (!isNaN(moment)) {
      node.textContent = format.format(moment);
      node.title = node.getAttribute("datetime");
    }
  }
  const zone = document.getElementById("zone");
  if (zone) zone.textContent = Intl.DateTimeFormat().resolvedOptions().timeZone;
}

async function act(button) {
  const question = button.dataset.confirm;
  if (question && !window.confirm(question)) return;
  button.disabled = true;
  let response;
  try {
    response = await fetch(button.dataset.action, {
      method: "POST",
      headers: { "X-CSRF-Token": csrf() },
      credentials: "same-origin",
    });
  } catch (error) {
    button.disabled = false;
    flash("the kernel did not answer: " + error, "error");
    return;
  }
  if (response.status === 401) {
    window.location = "/ui/login?next=" + encodeURIComponent(location.pathname + location.search);
    return;
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    button.disabled = false;
    flash((body.error && body.error.message) || ("failed: " + response.status), "error");
    return;
  }
  flash("done", "ok");
  setTimeout(() => window.location.reload(), 400);
}

function login(form) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const response = await fetch("/ui/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify({ token: document.getElementById("token").value }),
    });
    if (response.ok) {
      window.location = form.dataset.next || "/";
      return;
    }
    const body = await response.json().catch(() => ({}));
    const error = document.getElementById("login-error");
    error.textContent = (body.error && body.error.message) || "sign-in failed";
    error.hidden = false;
  });
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

const STATES = {
  "job.enqueued": "queued", "job.started": "running", "job.succeeded": "succeeded",
  "job.retrying": "queued", "job.dead": "dead", "job.cancelled": "cancelled",
};

function onJobEvent(event) {
  const page = document.body.dataset.page;
  const state = STATES[event.topic];
  // the live feed (overview, and a job's own page)
  const feed = document.getElementById("live-feed");
  if (feed && (!feed.dataset.jobId || feed.dataset.jobId === event.id)) {
    const placeholder = feed.querySelector(".muted");
    if (placeholder) placeholder.remove();
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = "/ui/jobs/" + event.id;
    link.textContent = shortId(event.id);
    link.className = "mono";
    item.append(new Date().toLocaleTimeString() + " ", link,
      " " + event.task + " " + event.topic.replace("job.", ""),
      event.error ? ": " + event.error : "");
    item.className = "state-" + state;
    feed.prepend(item);
    while (feed.children.length > 50) feed.lastChild.remove();
  }
  // rows already shown change state; new jobs appear in a matching listing
  for (const row of document.querySelectorAll('tr[data-job-id="' + event.id + '"]')) {
    const stateCell = row.querySelector(".state");
    if (stateCell) { stateCell.textContent = state; stateCell.className = "state state-" + state; }
    const attempts = row.querySelector(".attempts");
    if (attempts && event.attempts !== undefined) attempts.textContent = event.attempts;
  }
  const table = document.getElementById("jobs");
  if (page === "jobs" && table && event.topic === "job.enqueued"
      && !table.querySelector('tr[data-job-id="' + event.id + '"]')
      && (!table.dataset.state || table.dataset.state === "queued")
      && (!table.dataset.queue || table.dataset.queue === event.queue)
      && (!table.dataset.task || table.dataset.task === event.task)) {
    const row = document.createElement("tr");
    row.dataset.jobId = event.id;
    row.className = "fresh";
    const idCell = document.createElement("td");
    const link = document.createElement("a");
    link.href = "/ui/jobs/" + event.id;
    link.className = "mono";
    link.textContent = shortId(event.id);
    idCell.append(link);
    row.append(idCell, cell(event.task), cell(event.queue), cell("queued", "state state-queued"),
      cell(String(event.attempts), "attempts"), cell(new Date().toLocaleString()), cell("", "error"));
    const empty = table.querySelector("tr.empty");
    if (empty) empty.remove();
    table.tBodies[0].prepend(row);
  }
  if (page === "job" && document.getElementById("job-state") && feed && feed.dataset.jobId === event.id) {
    document.getElementById("job-state").textContent = state;
  }
  if (page === "overview") refreshOverview();
}

function refreshOverview() {
  if (refreshOverview.pending) return;
  refreshOverview.pending = true;
  setTimeout(async () => {
    refreshOverview.pending = false;
    const response = await fetch("/ui/fragments/overview", { credentials: "same-origin" });
    if (response.ok) {
      const box = document.getElementById("overview");
      box.innerHTML = await response.text();
      localTimes(box);
    }
  }, 2000);
}

function follow() {
  if (!window.EventSource) return;
  const status = document.getElementById("live-status");
  const source = new EventSource("/api/v1/events");
  source.addEventListener("kernel", (event) => {
    const running = JSON.parse(event.data).running;
    status.className = "live " + (running ? "on" : "off");
    status.title = running ? "live updates on" : "the kernel is not running";
  });
  source.addEventListener("job", (event) => onJobEvent(JSON.parse(event.data)));
  source.onerror = () => { status.className = "live off"; };
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes();
  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button) { event.preventDefault(); act(button); }
  });
  const form = document.getElementById("login");
  if (form) login(form); else follow();
});
