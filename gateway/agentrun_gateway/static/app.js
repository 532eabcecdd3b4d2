// The web view: the runs of a namespace (polled), one run's stream, a form to start a run
// and a button to stop one. The address keeps what is shown (#/namespace/run), never a token.

import * as api from "./api.js";
import * as sse from "./sse.js";
import { Transcript } from "./transcript.js";

const POLL_MS = 2000;
const TERMINAL = new Set(["Succeeded", "Failed", "Stopped"]);
const NAMESPACE_KEY = "agentrun.namespace";
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

const $ = (id) => document.getElementById(id);

const state = {
  namespace: "",
  selected: "",
  phase: "", // of the selected run
  stream: null, // AbortController of the selected run's stream
  poll: 0, // timer
  pollSeq: 0, // answers of an earlier namespace are dropped
  rows: new Map(), // run name -> <tr>
};

const transcript = new Transcript($("transcript"), (phase, final) => {
  setPhase(phase);
  const badge = state.rows.get(state.selected)?.cells[1].firstChild;
  if (badge && !TERMINAL.has(badge.textContent)) {
    badge.textContent = phase;
    badge.dataset.phase = phase.toLowerCase();
  }
  if (final) poll(); // the rest of the row (turns) at once, not at the next tick
});

// -- token ------------------------------------------------------------------------------------

api.onTokenNeeded((reason) => new Promise((resolve) => {
  const dialog = $("token-dialog");
  const form = $("token-form");
  $("token-reason").textContent = reason ? `The gateway answered: ${reason}` : "";
  $("token-input").value = "";
  const submit = (event) => {
    event.preventDefault();
    const value = $("token-input").value.trim();
    if (!value) return;
    form.removeEventListener("submit", submit);
    dialog.close();
    resolve(value);
    setTimeout(showWho, 0);
  };
  form.addEventListener("submit", submit);
  if (!dialog.open) dialog.showModal();
  $("token-input").focus();
}));
// Without a token nothing can be shown: the dialog stays until one is given.
$("token-dialog").addEventListener("cancel", (event) => event.preventDefault());

function showWho() {
  const claims = api.claims();
  $("forget").hidden = !api.token();
  $("who").textContent = claims ? `token of ${claims.sub || "(no subject)"}` : api.token() ? "" : "no token";
  const list = $("namespaces");
  const known = new Set(JSON.parse(localStorage.getItem(`${NAMESPACE_KEY}.recent`) || "[]"));
  const claimed = claims && claims.namespaces;
  for (const ns of Array.isArray(claimed) ? claimed : typeof claimed === "string" ? [claimed] : []) {
    if (ns !== "*") known.add(ns);
  }
  list.replaceChildren(...[...known].sort().map((ns) => Object.assign(document.createElement("option"), { value: ns })));
}

$("forget").addEventListener("click", () => {
  api.forgetToken();
  location.reload();
});

// -- navigation -------------------------------------------------------------------------------

function route() {
  const [, ns = "", name = ""] = location.hash.split("/").map((p) => decodeURIComponent(p));
  return { ns, name };
}

function go(ns, name = "") {
  const hash = `#/${encodeURIComponent(ns)}${name ? `/${encodeURIComponent(name)}` : ""}`;
  if (location.hash !== hash) location.hash = hash;
  else apply();
}

function defaultNamespace() {
  const claimed = api.claims()?.namespaces;
  const first = Array.isArray(claimed) ? claimed.find((n) => n !== "*") : claimed !== "*" ? claimed : undefined;
  return localStorage.getItem(NAMESPACE_KEY) || first || "default";
}

function apply() {
  let { ns, name } = route();
  if (!DNS_LABEL.test(ns)) {
    go(defaultNamespace());
    return;
  }
  if (ns !== state.namespace) {
    state.namespace = ns;
    $("namespace").value = ns;
    localStorage.setItem(NAMESPACE_KEY, ns);
    const recent = new Set(JSON.parse(localStorage.getItem(`${NAMESPACE_KEY}.recent`) || "[]"));
    recent.add(ns);
    localStorage.setItem(`${NAMESPACE_KEY}.recent`, JSON.stringify([...recent].slice(-20)));
    $("runs").tBodies[0].replaceChildren();
    state.rows.clear();
    state.selected = null;
    showWho();
    poll();
  }
  if (name !== state.selected) openRun(name);
}

window.addEventListener("hashchange", apply);

$("namespace-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const ns = $("namespace").value.trim();
  if (!DNS_LABEL.test(ns)) {
    runsNote("A namespace is a lowercase RFC 1123 label: letters, digits and '-'.");
    return;
  }
  go(ns);
});

// -- the runs table ---------------------------------------------------------------------------

function runsNote(text) {
  $("runs-note").textContent = text;
}

async function poll() {
  clearTimeout(state.poll);
  const seq = ++state.pollSeq;
  const ns = state.namespace;
  try {
    const body = await api.json(api.runsPath(ns));
    if (seq !== state.pollSeq) return;
    drawRuns(body.items || []);
    runsNote(body.items && body.items.length ? "" : `No runs in namespace ${ns} yet.`);
    if (!api.token()) $("who").textContent = "no token needed (dev mode)";
  } catch (error) {
    if (seq !== state.pollSeq) return;
    runsNote(error.message);
  }
  if (seq === state.pollSeq) state.poll = setTimeout(poll, document.hidden ? POLL_MS * 5 : POLL_MS);
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && state.namespace) poll();
});

function created(run) {
  return Date.parse(run.metadata?.creationTimestamp || "") || 0;
}

function drawRuns(items) {
  const body = $("runs").tBodies[0];
  const seen = new Set();
  items.sort((a, b) => created(b) - created(a) || a.metadata.name.localeCompare(b.metadata.name));
  items.forEach((run, index) => {
    const name = run.metadata.name;
    seen.add(name);
    let row = state.rows.get(name);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.name = name;
      const link = document.createElement("a");
      link.textContent = name;
      link.href = `#/${encodeURIComponent(state.namespace)}/${encodeURIComponent(name)}`;
      const cells = ["name", "phase", "model", "pool", "num turns", "age"].map((c) => {
        const cell = document.createElement("td");
        cell.className = c;
        return cell;
      });
      cells[0].append(link);
      const badge = document.createElement("span");
      badge.className = "phase";
      cells[1].append(badge);
      row.append(...cells);
      row.addEventListener("click", (event) => {
        if (event.target.tagName !== "A") go(state.namespace, name);
      });
      state.rows.set(name, row);
    }
    const status = run.status || {};
    const phase = status.phase || "Pending";
    const badge = row.cells[1].firstChild;
    badge.textContent = phase;
    badge.dataset.phase = phase.toLowerCase();
    row.cells[1].title = [status.reason, status.message].filter(Boolean).join(": ");
    row.cells[2].textContent = run.spec?.agent?.model || (run.spec?.agentRef ? `agent ${run.spec.agentRef.name}` : run.spec?.workflowRef ? `workflow ${run.spec.workflowRef.name}` : "");
    row.cells[3].textContent = run.spec?.workerPool || "default";
    row.cells[4].textContent = status.iterations ?? "";
    row.cells[5].dataset.created = String(created(run));
    row.classList.toggle("selected", name === state.selected);
    if (body.rows[index] !== row) body.insertBefore(row, body.rows[index] || null);
    if (name === state.selected) setPhase(phase);
  });
  for (const [name, row] of state.rows) {
    if (!seen.has(name)) {
      row.remove();
      state.rows.delete(name);
    }
  }
  ages();
}

/** kubectl's way of writing an age. */
export function age(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const m = Math.floor(s / 60);
  const h = Math.floor(m / 60);
  const d = Math.floor(h / 24);
  if (s < 120) return `${s}s`;
  if (m < 10) return s % 60 ? `${m}m${s % 60}s` : `${m}m`;
  if (h < 3) return `${m}m`;
  if (h < 8) return m % 60 ? `${h}h${m % 60}m` : `${h}h`;
  if (h < 48) return `${h}h`;
  if (d < 8) return h % 24 ? `${d}d${h % 24}h` : `${d}d`;
  return `${d}d`;
}

function ages() {
  const now = Date.now();
  for (const cell of document.querySelectorAll("#runs td.age")) {
    const at = Number(cell.dataset.created);
    cell.textContent = at ? age(now - at) : "";
  }
}

setInterval(ages, 1000);

// -- one run ----------------------------------------------------------------------------------

function runNote(text) {
  $("run-note").textContent = text;
}

function setPhase(phase) {
  if (!phase || (TERMINAL.has(state.phase) && !TERMINAL.has(phase))) return; // a late poll answer
  state.phase = phase;
  const badge = $("run-phase");
  badge.textContent = phase;
  badge.dataset.phase = phase.toLowerCase();
  const stop = $("stop");
  stop.hidden = TERMINAL.has(phase);
  if (phase === "Stopping") {
    stop.disabled = true;
    stop.textContent = "Stopping…";
  }
}

function connection(what, detail = "") {
  const node = $("run-connection");
  node.dataset.state = what;
  node.textContent = { live: "live", reconnecting: "reconnecting…", ended: "", failed: "not streaming" }[what] ?? what;
  node.title = detail;
  if (what === "failed") runNote(detail);
  if (what === "live") runNote("");
}

async function openRun(name) {
  if (state.stream) state.stream.abort();
  state.stream = null;
  state.selected = name;
  for (const [runName, row] of state.rows) row.classList.toggle("selected", runName === name);
  $("run").hidden = !name;
  $("placeholder").hidden = Boolean(name);
  if (!name) return;
  const ns = state.namespace;
  const controller = new AbortController();
  state.stream = controller;
  state.phase = "";
  $("run-name").textContent = name;
  $("run-model").textContent = "";
  $("run-phase").textContent = "";
  $("stop").hidden = true;
  $("stop").disabled = false;
  $("stop").textContent = "Stop";
  connection("", "");
  runNote("");
  transcript.reset();
  let run;
  try {
    run = await api.json(api.runsPath(ns, name), { signal: controller.signal });
  } catch (error) {
    if (!controller.signal.aborted) runNote(error.message);
    return;
  }
  if (controller.signal.aborted) return;
  const spec = run.spec || {};
  setPhase(run.status?.phase || "Pending");
  $("run-model").textContent = spec.agent?.model || "";
  if (typeof spec.input === "string") transcript.user(spec.input);
  else if (spec.inputFrom) transcript.line("note", "The input comes from a ConfigMap or Secret.");
  sse.follow(ns, name, {
    signal: controller.signal,
    onEvent: (event) => transcript.handle(event),
    onState: connection,
  });
}

$("stop").addEventListener("click", async () => {
  const button = $("stop");
  const ns = state.namespace;
  const name = state.selected;
  button.disabled = true;
  button.textContent = "Stopping…";
  try {
    await api.json(api.runsPath(ns, name, "stop"), { method: "POST" });
    if (name === state.selected) runNote("Stop requested: the run ends at its next safe point.");
  } catch (error) {
    if (name !== state.selected) return;
    runNote(error.message);
    button.disabled = false;
    button.textContent = "Stop";
  }
});

// -- starting a run ---------------------------------------------------------------------------

/** The AgentRun to send from the form; throws an Error naming the field on bad JSON. */
export function manifest(fields) {
  let obj = {};
  const raw = (fields.spec || "").trim();
  if (raw) {
    let parsed;
    try {
      parsed = JSON.parse(raw);
    } catch (error) {
      throw Object.assign(new Error(`not valid JSON: ${error.message}`), { field: "spec" });
    }
    if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw Object.assign(new Error("must be a JSON object"), { field: "spec" });
    }
    obj = "spec" in parsed || "metadata" in parsed || "kind" in parsed ? { ...parsed } : { spec: parsed };
  }
  const metadata = { ...(obj.metadata || {}) };
  const name = (fields.name || "").trim();
  if (name) metadata.name = name;
  else if (!metadata.name && !metadata.generateName) metadata.generateName = "run-";
  obj.metadata = metadata;
  const spec = obj.spec && typeof obj.spec === "object" ? { ...obj.spec } : obj.spec ?? {};
  if (spec && typeof spec === "object") {
    const input = fields.input || "";
    if (input.trim() && spec.input === undefined && spec.inputFrom === undefined) spec.input = input;
    const model = (fields.model || "").trim();
    if (model && !spec.agentRef && !spec.workflowRef) {
      spec.agent = { ...(spec.agent || {}) };
      if (spec.agent.model === undefined) spec.agent.model = model;
    }
    const pool = (fields.pool || "").trim();
    if (pool && spec.workerPool === undefined) spec.workerPool = pool;
  }
  obj.spec = spec;
  return obj;
}

function showErrors(errors) {
  const box = $("create-errors");
  const list = document.createElement("ul");
  for (const e of errors) {
    const item = document.createElement("li");
    if (e.field) {
      const field = document.createElement("code");
      field.textContent = e.field;
      item.append(field, " ");
    }
    item.append(e.message);
    list.append(item);
  }
  box.replaceChildren(list);
  box.hidden = errors.length === 0;
}

$("create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const button = form.querySelector("button[type=submit]");
  showErrors([]);
  let body;
  try {
    body = manifest(Object.fromEntries(new FormData(form)));
  } catch (error) {
    showErrors([{ field: error.field || "", message: error.message }]);
    return;
  }
  const ns = state.namespace;
  button.disabled = true;
  try {
    const run = await api.json(api.runsPath(ns), { method: "POST", body });
    form.reset();
    $("new-run").open = false;
    poll();
    go(ns, run.metadata.name);
  } catch (error) {
    const errors = error.body?.errors;
    showErrors(Array.isArray(errors) && errors.length ? errors : [{ field: "", message: error.message }]);
  } finally {
    button.disabled = false;
  }
});

showWho();
apply();
