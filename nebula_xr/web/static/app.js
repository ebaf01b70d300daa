"use strict";
// The nebula-xr web console: one page, views chosen by the URL hash, kept live by the
// daemon's server-sent events. Every action is a 1.4 call made by the daemon for the
// signed-in user; its reply, refusals included, is shown next to what caused it.

const store = { me: null, vms: new Map(), hosts: new Map(), networks: [], drivers: {}, events: [], now: 0, skew: 0 };
const view = document.getElementById("view");

// -- DOM helpers: text is always set as text, never parsed as HTML ---------------------
function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "value") element.value = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}
const SVG = "http://www.w3.org/2000/svg";
function s(tag, attributes = {}) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  return element;
}

// -- talking to the daemon -------------------------------------------------------------
async function api(path) {
  const response = await fetch(path, { credentials: "same-origin" });
  if (response.status === 401) { location.href = "/signin"; throw new Error("Not signed in"); }
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}
async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": store.me.csrf },
    body: JSON.stringify(body),
  });
  if (response.status === 401) { location.href = "/signin"; throw new Error("Not signed in"); }
  const reply = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(reply.error || `HTTP ${response.status}`);
  return reply;
}
// A 1.4 call; resolves to the reply's value, throws the daemon's message on refusal.
async function call(method, ...params) {
  const { reply } = await post("/api/call", { method, params });
  if (!reply[0]) throw new Error(reply[1]);
  return reply[1];
}
// Run an action, showing the daemon's answer in `where` (next to the button).
async function act(where, work) {
  where.textContent = "";
  where.className = "message";
  try {
    await work();
  } catch (error) {
    where.textContent = error.message;
    where.className = "message error";
  }
}

// -- formatting ------------------------------------------------------------------------
function kb(value) {
  if (value >= 1048576) return `${(value / 1048576).toFixed(1)} GB`;
  if (value >= 1024) return `${(value / 1024).toFixed(0)} MB`;
  return `${value} KB`;
}
function age(stime) {
  const seconds = Math.max(0, Math.floor(Date.now() / 1000 + store.skew - stime));
  if (seconds < 120) return `${seconds}s`;
  if (seconds < 7200) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 172800) return `${Math.floor(seconds / 3600)}h`;
  return `${Math.floor(seconds / 86400)}d`;
}
function when(epoch) {
  return epoch ? new Date(epoch * 1000).toLocaleString() : "";
}
function stateClass(words) {
  return `state state-${words.toLowerCase()}`;
}
function bar(used, total, label) {
  return h("span", { class: "bar" },
    h("progress", { max: total || 1, value: Math.min(used, total || 1) }),
    h("small", {}, label));
}

// -- live updates ----------------------------------------------------------------------
let renderQueued = false;
function rerender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; route(false); });
}
function connectEvents() {
  const live = document.getElementById("live");
  const source = new EventSource("/api/events");
  source.onopen = () => { live.className = "on"; };
  source.onerror = () => { live.className = "off"; };
  source.addEventListener("vm", (event) => applyVM(JSON.parse(event.data)));
  source.addEventListener("host", (event) => {
    const host = JSON.parse(event.data);
    if (host.state === "DELETED") store.hosts.delete(host.id);
    else store.hosts.set(host.id, host);
    refresh("host", host.id);
  });
  source.addEventListener("event", (event) => {
    store.events.push(JSON.parse(event.data));
    store.events = store.events.slice(-30);
    refresh("event");
  });
}
function applyVM(vm) {
  if (vm.state === "DONE") store.vms.delete(vm.id);
  else store.vms.set(vm.id, vm);
  // The VM list updates the one row in place: a page of a thousand VMs stays quick.
  const row = document.querySelector(`tr[data-vm="${vm.id}"]`);
  if (current.name === "vms" && row) {
    if (vm.state === "DONE") row.remove();
    else row.replaceWith(vmRow(vm));
    return;
  }
  refresh("vm", vm.id);
}
// Re-render the current view when it shows what changed.
function refresh(kind, id) {
  const name = current.name;
  if (name === "dashboard" || name === kind + "s" || (name === "vms" && kind === "vm")) rerender();
  else if (name === kind && current.id === id) rerender();
  else if (name === "host" && kind === "vm") rerender();
}

// -- routing ---------------------------------------------------------------------------
const current = { name: "", id: null, key: "" };
const views = {};
function route(fresh = true) {
  const [, name = "", id] = location.hash.replace(/^#\/?/, "#/").split("/");
  const key = location.hash;
  current.name = name || "dashboard";
  current.id = id === undefined ? null : Number(id);
  if (fresh) current.key = key;
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === current.name || link.dataset.nav + "" === current.name + "s");
  }
  const render = views[current.name] || views.dashboard;
  render(fresh);
}

// -- dashboard -------------------------------------------------------------------------
function counts(items, key) {
  const result = new Map();
  for (const item of items) result.set(item[key], (result.get(item[key]) || 0) + 1);
  return [...result.entries()].sort();
}
views.dashboard = () => {
  const hosts = [...store.hosts.values()];
  const vms = [...store.vms.values()];
  const totalCpu = hosts.reduce((sum, host) => sum + host.total_cpu, 0);
  const usedCpu = hosts.reduce((sum, host) => sum + host.used_cpu, 0);
  const totalMemory = hosts.reduce((sum, host) => sum + host.total_memory, 0);
  const usedMemory = hosts.reduce((sum, host) => sum + host.used_memory, 0);
  const tally = (pairs) => h("ul", { class: "tally" },
    pairs.map(([state, count]) => h("li", {}, h("span", { class: stateClass(state) }, state), ` ${count}`)));
  view.replaceChildren(
    h("h1", {}, "Dashboard"),
    h("section", { class: "cards" },
      h("article", { id: "card-hosts" }, h("h2", {}, `Hosts (${hosts.length})`), tally(counts(hosts, "state"))),
      h("article", { id: "card-vms" }, h("h2", {}, `Virtual machines (${vms.length})`), tally(counts(vms, "words"))),
      h("article", { id: "card-cpu" }, h("h2", {}, "CPU"), bar(usedCpu, totalCpu, `${usedCpu} of ${totalCpu} (100 = one core)`)),
      h("article", { id: "card-memory" }, h("h2", {}, "Memory"), bar(usedMemory, totalMemory, `${kb(usedMemory)} of ${kb(totalMemory)}`))),
    h("h2", {}, "Recent events"),
    h("ul", { id: "events", class: "events" },
      [...store.events].reverse().map((event) => h("li", { class: event.level },
        h("time", {}, when(event.time)), " ", event.text))));
};

// -- hosts -----------------------------------------------------------------------------
function driverSelect(id, names) {
  return h("select", { id, required: true }, names.map((name) => h("option", { value: name }, name)));
}
function hostActions(host) {
  const message = h("span", { class: "message" });
  const enabled = host.state !== "DISABLED";
  return h("td", { class: "actions" },
    h("button", { type: "button", "data-action": enabled ? "disable" : "enable",
      onclick: () => act(message, () => call("one.host.enable", host.id, !enabled)) },
      enabled ? "Disable" : "Enable"),
    h("button", { type: "button", "data-action": "delete", class: "danger",
      onclick: () => act(message, () => call("one.host.delete", host.id)) }, "Delete"),
    message);
}
views.hosts = (fresh) => {
  const table = h("table", { id: "hosts" },
    h("thead", {}, h("tr", {}, ["ID", "Name", "State", "VMs", "CPU", "Memory", "Drivers", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, [...store.hosts.values()].map((host) => h("tr", { "data-host": host.id },
      h("td", {}, host.id),
      h("td", {}, h("a", { href: `#/host/${host.id}` }, host.name)),
      h("td", {}, h("span", { class: stateClass(host.state) }, host.state),
        host.error ? h("div", { class: "error host-error" }, host.error) : null),
      h("td", {}, host.running_vms),
      h("td", {}, bar(host.used_cpu, host.total_cpu, `${host.used_cpu}/${host.total_cpu}`)),
      h("td", {}, bar(host.used_memory, host.total_memory, `${kb(host.used_memory)}/${kb(host.total_memory)}`)),
      h("td", {}, `${host.im_mad} ${host.vm_mad} ${host.tm_mad}`),
      hostActions(host)))));
  const existing = document.getElementById("add-host");
  if (!fresh && existing) {
    document.getElementById("hosts").replaceWith(table);
    return;
  }
  const message = h("span", { id: "add-host-message", class: "message" });
  const form = h("form", { id: "add-host", class: "inline" },
    h("label", {}, "Name ", h("input", { id: "host-name", required: true })),
    h("label", {}, "Information ", driverSelect("host-im", store.drivers.im || [])),
    h("label", {}, "Virtualization ", driverSelect("host-vmm", store.drivers.vmm || [])),
    h("label", {}, "Transfer ", driverSelect("host-tm", store.drivers.tm || [])),
    h("button", { type: "submit" }, "Add host"), message);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    act(message, async () => {
      const hid = await call("one.host.allocate", form.querySelector("#host-name").value,
        form.querySelector("#host-im").value, form.querySelector("#host-vmm").value,
        form.querySelector("#host-tm").value);
      message.textContent = `Host ${hid} added`;
      form.querySelector("#host-name").value = "";
      await reload();
    });
  });
  view.replaceChildren(h("h1", {}, "Hosts"), form, table);
};

function plot(title, samples, series, unit) {
  const width = 560, height = 160, pad = 32;
  const figure = h("figure", { class: "plot", "data-plot": title });
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  figure.append(h("figcaption", {}, title), svg);
  if (!samples.length) {
    figure.append(h("p", { class: "empty" }, "No samples yet"));
    return figure;
  }
  const times = samples.map((sample) => sample.time);
  const t0 = Math.min(...times), t1 = Math.max(...times, t0 + 1);
  const top = Math.max(1, ...series.flatMap(([key]) => samples.map((sample) => sample[key] || 0)));
  const x = (t) => pad + ((t - t0) / (t1 - t0)) * (width - pad - 8);
  const y = (v) => height - 18 - (v / top) * (height - 30);
  svg.append(s("line", { x1: pad, y1: height - 18, x2: width - 8, y2: height - 18, class: "axis" }));
  const label = s("text", { x: 2, y: 12, class: "tick" });
  label.textContent = unit(top);
  svg.append(label);
  for (const [t, anchor, at] of [[t0, "start", pad], [t1, "end", width - 8]]) {
    const tick = s("text", { x: at, y: height - 4, class: "tick", "text-anchor": anchor });
    tick.textContent = new Date(t * 1000).toLocaleTimeString();
    svg.append(tick);
  }
  for (const [key, name, css] of series) {
    const points = samples.map((sample) => `${x(sample.time).toFixed(1)},${y(sample[key] || 0).toFixed(1)}`);
    svg.append(s("polyline", { points: points.join(" "), class: `line ${css}`, "data-series": key, "data-points": samples.length }));
    const legend = h("span", { class: `legend ${css}` }, name);
    figure.append(legend);
  }
  return figure;
}
views.host = async () => {
  const hid = current.id;
  let detail;
  try { detail = await api(`/api/host/${hid}`); } catch (error) {
    view.replaceChildren(h("h1", {}, `Host ${hid}`), h("p", { class: "error" }, error.message));
    return;
  }
  const host = detail.host;
  view.replaceChildren(
    h("h1", {}, `Host ${host.id}: ${host.name} `, h("span", { class: stateClass(host.state) }, host.state)),
    h("table", { class: "actions-row" }, h("tr", {}, hostActions(host))),
    h("section", { class: "plots" },
      plot("CPU", detail.samples, [["used_cpu", "used", "a"], ["max_cpu", "total", "b"]], (v) => `${v}`),
      plot("Memory", detail.samples, [["used_memory", "used", "a"], ["max_memory", "total", "b"]], kb)),
    h("h2", {}, "Virtual machines"),
    h("ul", {}, detail.vms.map((vm) => h("li", {}, h("a", { href: `#/vm/${vm.id}` }, `${vm.id} ${vm.name}`), ` ${vm.words}`))),
    h("h2", {}, "Attributes"),
    h("table", { id: "attributes" }, Object.entries(detail.attributes).map(([name, value]) => h("tr", {}, h("th", {}, name), h("td", {}, value)))));
};

// -- virtual machines ------------------------------------------------------------------
const ACTION_LABELS = {
  deploy: "Deploy", migrate: "Migrate", livemigrate: "Live migrate", suspend: "Suspend",
  resume: "Resume", stop: "Stop", shutdown: "Shutdown", cancel: "Cancel", hold: "Hold",
  release: "Release", restart: "Restart", delete: "Delete",
};
async function runAction(vm, action, message) {
  if (action === "deploy" || action === "migrate" || action === "livemigrate") {
    const hid = await pickHost(vm, action);
    if (hid === null) return;
    if (action === "deploy") await call("one.vm.deploy", vm.id, hid);
    else await call("one.vm.migrate", vm.id, hid, action === "livemigrate");
  } else {
    await call("one.vm.action", action === "delete" ? "finalize" : action, vm.id);
  }
  message.textContent = `${ACTION_LABELS[action]}: accepted`;
}
function actionButtons(vm) {
  const message = h("span", { class: "message" });
  const buttons = Object.entries(ACTION_LABELS).map(([action, label]) => h("button", {
    type: "button", "data-action": action, class: action === "delete" ? "danger" : "",
    disabled: !vm.actions.includes(action),
    onclick: () => act(message, () => runAction(vm, action, message)),
  }, label));
  return [buttons, message];
}
// The host picker: every host, marked by whether it meets the VM's REQUIREMENTS.
async function pickHost(vm, action) {
  const { placement } = await api(`/api/vm/${vm.id}`);
  const dialog = document.getElementById("picker");
  document.getElementById("picker-title").textContent = `${ACTION_LABELS[action]} VM ${vm.id} (${vm.name}) to`;
  document.getElementById("picker-requirements").textContent = placement.error ||
    (placement.requirements ? `REQUIREMENTS = ${placement.requirements}` : "No REQUIREMENTS: every enabled host matches");
  const list = document.getElementById("picker-hosts");
  return new Promise((resolve) => {
    let chosen = null;
    list.replaceChildren(...placement.hosts.filter((host) => host.id !== vm.hid || action === "deploy").map((host) => h("li", {},
      h("button", { type: "button", "data-host": host.id, class: host.matches ? "match" : "nomatch",
        onclick: () => { chosen = host.id; dialog.close(); } },
        `${host.name} (${host.state})`, " ", host.matches ? "✔ meets REQUIREMENTS" : "✘ does not meet REQUIREMENTS"))));
    dialog.addEventListener("close", () => resolve(chosen), { once: true });
    dialog.showModal();
  });
}
// The VM list is built as escaped HTML and handles its buttons' clicks in one place:
// a page of a thousand VMs (twelve thousand buttons) renders in a fraction of a second.
const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}
function vmRowHTML(vm) {
  const buttons = Object.entries(ACTION_LABELS).map(([action, label]) =>
    `<button type="button" data-action="${action}"${action === "delete" ? ' class="danger"' : ""}` +
    `${vm.actions.includes(action) ? "" : " disabled"}>${label}</button>`).join("");
  return `<tr data-vm="${vm.id}" data-state="${esc(vm.words)}"><td>${vm.id}</td>` +
    `<td><a href="#/vm/${vm.id}">${esc(vm.name)}</a></td><td>${esc(vm.owner)}</td>` +
    `<td>${esc(vm.deploy_id)}</td><td><span class="${esc(stateClass(vm.words))}">${esc(vm.words)}</span></td>` +
    `<td>${esc(vm.host)}</td><td>${vm.cpu}</td><td>${esc(kb(vm.memory))}</td><td>${esc(age(vm.stime))}</td>` +
    `<td class="actions">${buttons}<span class="message"></span></td></tr>`;
}
const rowTemplate = document.createElement("template");
function vmRow(vm) {
  rowTemplate.innerHTML = vmRowHTML(vm);
  return rowTemplate.content.firstElementChild;
}
function vmListClick(event) {
  const button = event.target.closest("button[data-action]");
  const row = button && button.closest("tr[data-vm]");
  if (!row || button.disabled) return;
  const vm = store.vms.get(Number(row.dataset.vm));
  const message = row.querySelector(".message");
  if (vm) act(message, () => runAction(vm, button.dataset.action, message));
}
const filter = { name: "", state: "" };
function vmTable() {
  const wanted = [...store.vms.values()].filter((vm) =>
    (!filter.name || vm.name.toLowerCase().includes(filter.name.toLowerCase())) &&
    (!filter.state || vm.words === filter.state || vm.state === filter.state));
  const body = h("tbody");
  body.innerHTML = wanted.map(vmRowHTML).join("");
  return h("table", { id: "vms", onclick: vmListClick },
    h("thead", {}, h("tr", {}, ["ID", "Name", "Owner", "Domain (DEPLOY_ID)", "State", "Host", "CPU", "Memory", "Age", "Actions"].map((t) => h("th", {}, t)))),
    body);
}
views.vms = (fresh) => {
  if (!fresh && document.getElementById("vms")) {
    document.getElementById("vms").replaceWith(vmTable());
    return;
  }
  const textMessage = h("pre", { id: "create-text-message", class: "message" });
  const text = h("textarea", { id: "template", rows: 8, cols: 60, spellcheck: "false",
    placeholder: 'NAME = vm\nCPU = 1\nMEMORY = 128\nDISK = [ source = "/images/disk.img", target = "sda" ]' });
  const fromText = h("form", { id: "create-text" }, h("h2", {}, "Create from a template"), text,
    h("div", {}, h("button", { type: "submit" }, "Create"), textMessage));
  fromText.addEventListener("submit", (event) => {
    event.preventDefault();
    act(textMessage, async () => {
      const vid = await call("one.vm.allocate", text.value);
      textMessage.textContent = `VM ${vid} created`;
      await reload();
    });
  });
  const formMessage = h("pre", { id: "create-form-message", class: "message" });
  const field = (label, id, attributes = {}) => h("label", {}, `${label} `, h("input", { id, ...attributes }));
  const fromForm = h("form", { id: "create-form" }, h("h2", {}, "Create from a form"),
    field("Name", "form-name", { required: true }), field("CPU", "form-cpu", { value: "1", size: 4 }),
    field("Memory (MB)", "form-memory", { value: "128", size: 6 }), field("Kernel", "form-kernel"),
    field("Disk image", "form-disk"),
    h("label", {}, "Network ", h("select", { id: "form-network" }, h("option", { value: "" }, "none"),
      store.networks.map((network) => h("option", { value: network.name }, network.name)))),
    h("div", {}, h("button", { type: "submit" }, "Create"), formMessage));
  fromForm.addEventListener("submit", (event) => {
    event.preventDefault();
    act(formMessage, async () => {
      const value = (id) => fromForm.querySelector(`#${id}`).value;
      const { reply } = await post("/api/vm/form", {
        name: value("form-name"), cpu: value("form-cpu"), memory: value("form-memory"),
        kernel: value("form-kernel"), disk: value("form-disk"), network: value("form-network"),
      });
      if (!reply[0]) throw new Error(reply[1]);
      formMessage.textContent = `VM ${reply[1]} created`;
      await reload();
    });
  });
  const states = ["", "PENDING", "HOLD", "ACTIVE", "RUNNING", "STOPPED", "SUSPENDED", "FAILED"];
  const filters = h("form", { class: "inline", id: "vm-filter" },
    h("label", {}, "Name ", h("input", { id: "filter-name", value: filter.name, oninput: (event) => { filter.name = event.target.value; rerender(); } })),
    h("label", {}, "State ", h("select", { id: "filter-state", onchange: (event) => { filter.state = event.target.value; rerender(); } },
      states.map((state) => h("option", { value: state, selected: state === filter.state }, state || "any")))));
  view.replaceChildren(h("h1", {}, "Virtual machines"), h("section", { class: "create" }, fromText, fromForm), filters, vmTable());
};

let consoleSocket = null;
views.vm = async (fresh) => {
  const vid = current.id;
  let detail;
  try { detail = await api(`/api/vm/${vid}`); } catch (error) {
    view.replaceChildren(h("h1", {}, `VM ${vid}`), h("p", { class: "error" }, error.message));
    return;
  }
  const vm = detail.vm;
  const [buttons, message] = actionButtons(vm);
  const header = h("div", { id: "vm-header" },
    h("h1", {}, `VM ${vm.id}: ${vm.name} `, h("span", { id: "vm-state", class: stateClass(vm.words) }, vm.words)),
    h("p", {}, `Domain ${vm.deploy_id || "-"} · host ${vm.host || "-"} · owner ${vm.owner} · started ${when(vm.stime)}`),
    h("div", { class: "actions" }, buttons, message));
  const existing = document.getElementById("vm-header");
  if (!fresh && existing && existing.dataset.vm === String(vid)) {
    header.dataset.vm = vid;
    existing.replaceWith(header);
    document.getElementById("vm-history").replaceWith(historyTable(detail.history));
    document.getElementById("vm-log").textContent = detail.log;
    document.getElementById("vm-plots").replaceWith(vmPlots(detail.samples));
    return;
  }
  header.dataset.vm = vid;
  if (consoleSocket) { consoleSocket.close(); consoleSocket = null; }
  const consoleMessage = h("span", { id: "console-message", class: "message" });
  const screen = h("div", { id: "console-screen" });
  view.replaceChildren(header,
    vmPlots(detail.samples),
    h("h2", {}, "Console"),
    h("div", {}, h("button", { type: "button", id: "console-open", onclick: () => openConsole(vid, screen, consoleMessage) }, "Open console"), consoleMessage),
    screen,
    h("h2", {}, "Template"), h("pre", { id: "vm-template" }, detail.template),
    h("h2", {}, "History"), historyTable(detail.history),
    h("h2", {}, "Log"), h("pre", { id: "vm-log", class: "log" }, detail.log));
};
function vmPlots(samples) {
  return h("section", { id: "vm-plots", class: "plots" },
    plot("CPU", samples, [["cpu", "cpu", "a"]], (v) => `${v}`),
    plot("Memory", samples, [["memory", "memory", "a"]], kb),
    plot("Network", samples, [["net_tx", "tx", "a"], ["net_rx", "rx", "b"]], (v) => `${v} B`));
}
function historyTable(records) {
  return h("table", { id: "vm-history" },
    h("thead", {}, h("tr", {}, ["Seq", "Host", "Start", "Prolog", "Running", "Epilog", "End", "Reason"].map((t) => h("th", {}, t)))),
    h("tbody", {}, records.map((r) => h("tr", {},
      h("td", {}, r.seq), h("td", {}, r.host), h("td", {}, when(r.stime)),
      h("td", {}, r.pstime ? `${r.petime ? r.petime - r.pstime : "…"}s` : ""),
      h("td", {}, r.rstime ? `${r.retime ? r.retime - r.rstime : "…"}s` : ""),
      h("td", {}, r.estime ? `${r.eetime ? r.eetime - r.estime : "…"}s` : ""),
      h("td", {}, when(r.etime)), h("td", {}, ["NONE", "ERROR", "STOP_RESUME", "USER", "CANCEL"][r.reason] || r.reason)))));
}
function openConsole(vid, screen, message) {
  if (consoleSocket) consoleSocket.close();
  message.textContent = "Connecting…";
  message.className = "message";
  screen.replaceChildren();
  const socket = new WebSocket(`ws://${location.host}/console/${vid}`);
  socket.binaryType = "arraybuffer";
  consoleSocket = socket;
  const decoder = new TextDecoder();
  let write;
  if (window.Terminal) {
    const terminal = new window.Terminal({ cols: 80, rows: 24, useStyle: false, screenKeys: false });
    terminal.open(screen);
    terminal.on("data", (data) => { if (socket.readyState === 1) socket.send(new TextEncoder().encode(data)); });
    write = (text) => terminal.write(text);
    screen.terminal = terminal;
  } else {
    const pre = h("pre", { tabindex: 0, class: "plain-console" });
    pre.addEventListener("keydown", (event) => {
      const keys = { Enter: "\r", Backspace: "\x7f", Tab: "\t", Escape: "\x1b" };
      const data = keys[event.key] || (event.key.length === 1 ? event.key : "");
      if (data && socket.readyState === 1) { socket.send(new TextEncoder().encode(data)); event.preventDefault(); }
    });
    screen.append(pre);
    write = (text) => { pre.textContent += text; };
  }
  socket.onopen = () => { message.textContent = "Connected"; };
  socket.onmessage = (event) => {
    if (typeof event.data === "string") {
      const notice = JSON.parse(event.data);
      if (notice.error) { message.textContent = notice.error; message.className = "message error"; }
      if (notice.banner) message.textContent = notice.banner;
      return;
    }
    write(decoder.decode(new Uint8Array(event.data), { stream: true }));
  };
  socket.onclose = () => {
    if (!message.classList.contains("error")) message.textContent = "Console closed";
  };
}

// -- networks --------------------------------------------------------------------------
views.networks = (fresh) => {
  if (!fresh && document.getElementById("create-network")) {
    document.getElementById("networks").replaceWith(networkTable());
    return;
  }
  const message = h("pre", { id: "create-network-message", class: "message" });
  const kind = h("select", { id: "network-type" }, h("option", { value: "RANGED" }, "ranged"), h("option", { value: "FIXED" }, "fixed"));
  const form = h("form", { id: "create-network" }, h("h2", {}, "Create a network"),
    h("label", {}, "Name ", h("input", { id: "network-name", required: true })),
    h("label", {}, "Type ", kind),
    h("label", {}, "Bridge ", h("input", { id: "network-bridge", value: "br0" })),
    h("label", { class: "ranged" }, "Network address ", h("input", { id: "network-address", placeholder: "192.168.0.0" })),
    h("label", { class: "ranged" }, "Size ", h("input", { id: "network-size", value: "254", size: 5 })),
    h("label", { class: "fixed" }, "Leases (one IP a line) ", h("textarea", { id: "network-leases", rows: 3 })),
    h("div", {}, h("button", { type: "submit" }, "Create"), message));
  const value = (id) => form.querySelector(`#${id}`).value.trim();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    act(message, async () => {
      const quoted = (name, text) => {
        if (/["\\\[\]\x00-\x1f]/.test(text)) throw new Error(`${name} must not contain quotes, brackets or backslashes`);
        return `"${text}"`;
      };
      const lines = [`NAME = ${quoted("Name", value("network-name"))}`, `TYPE = ${kind.value}`, `BRIDGE = ${quoted("Bridge", value("network-bridge"))}`];
      if (kind.value === "RANGED") {
        lines.push(`NETWORK_ADDRESS = ${quoted("Network address", value("network-address"))}`);
        lines.push(`NETWORK_SIZE = ${quoted("Size", value("network-size"))}`);
      } else {
        for (const ip of value("network-leases").split(/\s+/).filter(Boolean)) lines.push(`LEASES = [ IP = ${quoted("Lease", ip)} ]`);
      }
      const nid = await call("one.vn.allocate", lines.join("\n"));
      message.textContent = `Network ${nid} created`;
      await reload();
    });
  });
  view.replaceChildren(h("h1", {}, "Networks"), form, networkTable());
};
function networkTable() {
  return h("table", { id: "networks" },
    h("thead", {}, h("tr", {}, ["ID", "Name", "Type", "Bridge", "Owner", "Size", "Leases", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, store.networks.map((network) => {
      const rowMessage = h("span", { class: "message" });
      return h("tr", { "data-network": network.id },
        h("td", {}, network.id), h("td", {}, h("a", { href: `#/network/${network.id}` }, network.name)),
        h("td", {}, network.type), h("td", {}, network.bridge), h("td", {}, network.owner),
        h("td", {}, network.size), h("td", {}, network.leases),
        h("td", { class: "actions" }, h("button", { type: "button", class: "danger", "data-action": "delete",
          onclick: () => act(rowMessage, async () => { await call("one.vn.delete", network.id); await reload(); }) }, "Delete"), rowMessage));
    })));
}
views.network = async () => {
  let detail;
  try { detail = await api(`/api/network/${current.id}`); } catch (error) {
    view.replaceChildren(h("h1", {}, `Network ${current.id}`), h("p", { class: "error" }, error.message));
    return;
  }
  const network = detail.network;
  view.replaceChildren(
    h("h1", {}, `Network ${network.id}: ${network.name}`),
    h("p", {}, `${network.type} on bridge ${network.bridge}, ${network.leases} of ${network.size} leases used`),
    h("h2", {}, "Leases"),
    h("table", { id: "leases" },
      h("thead", {}, h("tr", {}, ["IP", "MAC", "VM"].map((t) => h("th", {}, t)))),
      h("tbody", {}, detail.leases.map((lease) => h("tr", {},
        h("td", {}, lease.ip), h("td", {}, lease.mac),
        h("td", {}, lease.used ? h("a", { href: `#/vm/${lease.vid}` }, `${lease.vid} ${lease.vm}`) : "free"))))),
    h("h2", {}, "Template"), h("pre", {}, detail.template));
};

// -- start -----------------------------------------------------------------------------
async function reload() {
  const state = await api("/api/state");
  store.vms = new Map(state.vms.map((vm) => [vm.id, vm]));
  store.hosts = new Map(state.hosts.map((host) => [host.id, host]));
  store.networks = state.networks;
  store.drivers = state.drivers;
  store.events = state.events;
  store.skew = state.now - Date.now() / 1000;
  rerender();
}
async function start() {
  store.me = await api("/api/me");
  document.getElementById("whoami").textContent = store.me.name;
  document.getElementById("signout").addEventListener("click", async () => {
    await post("/api/signout", {}).catch(() => null);
    location.href = "/signin";
  });
  await reload();
  connectEvents();
  // States come as events; what polling measures (a VM's CPU, memory, network) is not an
  // event, so it is fetched again now and then.
  setInterval(() => { if (!document.hidden) reload().catch(() => null); }, 30000);
  window.addEventListener("hashchange", () => route(true));
  route(true);
  document.body.dataset.ready = "yes";
}
// For the browser tests: the page's own state, read-only.
window.nebula = { store, applyVM, route };
start();
