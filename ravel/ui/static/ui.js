// ravel ui: one app's page. The server sends the app's VMs (state, readiness, colours) as
// server-sent events whenever they change; this script redraws the table and recolours the
// topology's nodes (ids vm-NAME, made by ravel/graph/dot.py), sends start/stop, and opens the
// serial console (xterm.js) or VNC (noVNC) of a VM over a websocket to this same server.

const main = document.querySelector("main[data-app]");
const app = main.dataset.app;
const rows = document.getElementById("vm-rows");
const liveLabel = document.getElementById("live");
const actionLabel = document.getElementById("action");
const panel = document.getElementById("panel");
const panelTitle = document.getElementById("panel-title");
const panelStatus = document.getElementById("panel-status");
const termBox = document.getElementById("term");
const vncBox = document.getElementById("vnc");
let current = { kind: null, close: () => {} };

function el(tag, attrs = {}, text = "") {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text) e.textContent = text;
  return e;
}

function button(label, cls, onClick, disabled = false) {
  const b = el("button", { class: cls }, label);
  b.disabled = disabled;
  b.addEventListener("click", onClick);
  return b;
}

async function act(verb, vms) {
  actionLabel.textContent = `${verb} ${vms.length ? vms.join(" ") : "all VMs"}…`;
  const r = await fetch(`/api/app/${app}/${verb}`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ vms }), credentials: "same-origin",
  });
  if (!r.ok) actionLabel.textContent = `${verb} failed: ${await r.text()}`;
}

function recolour(vm) {
  const g = document.getElementById(`vm-${vm.name}`);
  if (!g) return;
  g.dataset.state = vm.state || "";
  g.dataset.look = vm.look;
  for (const shape of g.querySelectorAll("polygon, path, polyline, ellipse")) {
    if (shape.getAttribute("fill") && shape.getAttribute("fill") !== "none") shape.setAttribute("fill", vm.fill);
    shape.setAttribute("stroke", vm.border);
  }
  // the label's lines: name, size, then the state line (ravel/graph/model.py vm_caption)
  const texts = g.querySelectorAll("text");
  if (texts.length > 2 && vm.caption.length > 1) texts[2].textContent = vm.caption[1];
}

let reloading = false;

async function reloadGraph() {
  // a VM the picture does not have (the app was published again with more): draw it anew
  if (reloading) return;
  reloading = true;
  try {
    const r = await fetch(`/api/app/${app}/graph.svg`, { credentials: "same-origin" });
    if (r.ok) {
      const text = await r.text();
      document.getElementById("graph").innerHTML = text.slice(text.indexOf("<svg"));
      if (window.RAVEL_LAST) for (const vm of window.RAVEL_LAST.vms) recolour(vm);
    }
  } finally {
    reloading = false;
  }
}

function render(doc) {
  window.RAVEL_LAST = doc;
  const nodes = document.querySelectorAll("#graph g.node[id^='vm-']");
  if (nodes.length !== doc.vms.length || doc.vms.some((vm) => !document.getElementById(`vm-${vm.name}`))) reloadGraph();
  rows.replaceChildren();
  for (const vm of doc.vms) {
    const tr = el("tr", { id: `row-${vm.name}`, "data-state": vm.state || "", "data-look": vm.look });
    tr.append(el("td", { class: "name" }, vm.name), el("td", {}, vm.host || "-"),
      el("td", { class: "state" }, vm.state || "-"), el("td", { class: "ready" }, vm.ready || "-"),
      el("td", {}, vm.ips.join(" ")), el("td", {}, vm.services.join(" ")));
    const running = vm.state === "running";
    const td = el("td", { class: "buttons" });
    td.append(
      button("start", "start", () => act("start", [vm.name]), running),
      button("stop", "stop", () => act("stop", [vm.name]), !running),
      button("console", "console", () => openConsole(vm.name), !running),
      button("vnc", "vnc", () => openVnc(vm.name), !running));
    tr.append(td);
    rows.append(tr);
    recolour(vm);
  }
  actionLabel.textContent = doc.action || "";
  if (doc.error) actionLabel.textContent = `status: ${doc.error}`;
  document.body.dataset.version = doc.version;
}

function listen() {
  const source = new EventSource(`/api/app/${app}/events`);
  source.onopen = () => { liveLabel.textContent = "live"; };
  source.onmessage = (e) => render(JSON.parse(e.data));
  source.onerror = () => { liveLabel.textContent = "reconnecting…"; };
}

function wsUrl(path) {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
}

function showPanel(kind, title) {
  current.close();
  panel.hidden = false;
  panel.dataset.kind = kind;
  panelTitle.textContent = title;
  termBox.hidden = kind !== "console";
  vncBox.hidden = kind !== "vnc";
  termBox.replaceChildren();
  vncBox.replaceChildren();
  panelStatus.textContent = "connecting…";
}

function openConsole(vm) {
  showPanel("console", `${vm}: serial console`);
  if (!window.Terminal) { panelStatus.textContent = "xterm.js is not installed (make ui-assets)"; return; }
  const term = new window.Terminal({ convertEol: false, cursorBlink: true, rows: 24, cols: 100, scrollback: 2000 });
  const fit = window.FitAddon ? new window.FitAddon.FitAddon() : null;
  if (fit) term.loadAddon(fit);
  term.open(termBox);
  if (fit) fit.fit();
  const ws = new WebSocket(wsUrl(`/ws/app/${app}/console/${vm}`));
  ws.binaryType = "arraybuffer";
  const enc = new TextEncoder();
  ws.onopen = () => { panelStatus.textContent = "connected"; panel.dataset.connected = "1"; ws.send(enc.encode("\r")); term.focus(); };
  ws.onmessage = (e) => term.write(typeof e.data === "string" ? e.data : new Uint8Array(e.data));
  ws.onclose = () => { panelStatus.textContent = "disconnected"; panel.dataset.connected = ""; };
  term.onData((d) => { if (ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d)); });
  window.ravelTerm = term;
  current = { kind: "console", close: () => { ws.close(); term.dispose(); } };
}

async function openVnc(vm) {
  showPanel("vnc", `${vm}: VNC`);
  let RFB;
  try {
    RFB = (await import("/vendor/novnc/core/rfb.js")).default;
  } catch (e) {
    panelStatus.textContent = "noVNC is not installed (make ui-assets)";
    return;
  }
  const rfb = new RFB(vncBox, wsUrl(`/ws/app/${app}/vnc/${vm}`), { wsProtocols: ["binary"] });
  rfb.scaleViewport = true;
  rfb.addEventListener("connect", () => { panelStatus.textContent = "connected"; panel.dataset.connected = "1"; });
  rfb.addEventListener("disconnect", (e) => {
    panelStatus.textContent = e.detail.clean ? "disconnected" : "connection failed"; panel.dataset.connected = "";
  });
  window.ravelRfb = rfb;
  current = { kind: "vnc", close: () => { try { rfb.disconnect(); } catch (e) { /* already closed */ } } };
}

document.getElementById("panel-close").addEventListener("click", () => {
  current.close(); current = { kind: null, close: () => {} }; panel.hidden = true;
});
document.getElementById("start-all").addEventListener("click", () => act("start", []));
document.getElementById("stop-all").addEventListener("click", () => act("stop", []));
render(window.RAVEL_STATE);
listen();
