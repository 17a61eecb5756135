// SloPN desktop client: renders the View the backend sends ("view" events, once a second and
// on every change) and calls the backend's commands. The backend alone talks to the service.
"use strict";

const { invoke } = window.__TAURI__.core;
const { listen } = window.__TAURI__.event;

const $ = (id) => document.getElementById(id);
const MAX_LOG_LINES = 1000;

let view = null;
let selected = null; // the profile chosen in the list
let busy = false; // a connect or disconnect request is under way
let switching = false; // a kill switch request is under way
let killSwitchSet = null; // {profile, on} the service took, until the view shows it

// ---- formatting ---------------------------------------------------------------------------

function bits(bytesPerSec) {
  const b = bytesPerSec * 8;
  if (b >= 1e9) return (b / 1e9).toFixed(2) + " Gbit/s";
  if (b >= 1e6) return (b / 1e6).toFixed(2) + " Mbit/s";
  if (b >= 1e3) return (b / 1e3).toFixed(1) + " kbit/s";
  return b.toFixed(0) + " bit/s";
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}

function duration(secs) {
  const s = Math.floor(secs);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + String(s % 60).padStart(2, "0") + " s";
  return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " min";
}

// The TLS key exchange, as a user reads it.
function keyExchange(group) {
  return group === "X25519MLKEM768" ? "Post-quantum (X25519MLKEM768)" : "Classic (" + group + ")";
}

function toast(text, kind) {
  const el = $("toast");
  el.textContent = text;
  el.className = "toast" + (kind ? " " + kind : "");
  el.hidden = false;
  // Room below the last card while the toast shows, so that it covers nothing one cannot
  // scroll into view.
  const main = document.querySelector("main");
  main.style.paddingBottom = el.offsetHeight + 24 + "px";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => {
    el.hidden = true;
    main.style.paddingBottom = "";
  }, kind === "error" ? 9000 : 4000);
}

// ---- rendering ----------------------------------------------------------------------------

// The window is updated once a second: touch only what changed, so that an idle window
// repaints a few words and nothing else.
function setText(id, text) {
  const el = $(id);
  if (el.textContent !== text) el.textContent = text;
}

function setHidden(id, hidden) {
  const el = $(id);
  if (el.hidden !== hidden) el.hidden = hidden;
}

function setData(key, value) {
  if (document.body.dataset[key] !== value) document.body.dataset[key] = value;
}

function render(v) {
  view = v;
  setData("phase", v.phase);
  setData("tone", v.tone);
  setText("pill-text", v.headline);
  setText("status-headline", v.headline);
  setText("status-detail", v.detail || "");
  setHidden("status-detail", !v.detail);

  const problem = v.service.kind === "problem";
  setHidden("service-banner", !problem);
  setText("service-message", problem ? v.service.message : "");

  const connected = v.phase === "connected";
  setText("address", v.address || "–");
  setText("hub", v.hub || hubOf(selected) || "–");
  setText("rtt", connected && v.rtt_ms != null ? v.rtt_ms.toFixed(2) + " ms" : "–");
  setText("mtu", v.mtu != null && v.phase !== "disconnected" ? String(v.mtu) : "–");
  setText("connected-for", connected && v.connected_secs != null ? duration(v.connected_secs) : "–");
  setText("key-exchange", connected && v.key_exchange ? keyExchange(v.key_exchange) : "–");

  setText("rx-rate", bits(v.rx_rate));
  setText("tx-rate", bits(v.tx_rate));
  setText("rx-total", bytes(v.rx_total));
  setText("tx-total", bytes(v.tx_total));

  renderProfiles(v);
  renderToggle(v);
  renderKillSwitch(v);
  drawChart(v.history);
}

function hubOf(name) {
  const p = view && view.profiles.find((p) => p.name === name);
  return p ? p.hub : null;
}

function renderProfiles(v) {
  const names = v.profiles.map((p) => p.name);
  if (v.profile && names.includes(v.profile) && (active(v) || !names.includes(selected))) {
    selected = v.profile;
  }
  if (!names.includes(selected)) selected = names[0] || null;

  const select = $("profile-select");
  const options = names.join("\n");
  if (select.dataset.options !== options) {
    const choices = v.profiles.map((p) => new Option(p.name, p.name));
    select.replaceChildren(...(choices.length ? choices : [new Option("No profile yet", "")]));
    select.dataset.options = options;
  }
  if (select.value !== (selected || "")) select.value = selected || "";
  const locked = names.length === 0 || active(v);
  if (select.disabled !== locked) select.disabled = locked;

  const list = $("profile-list");
  const key = JSON.stringify([v.profiles, v.profile, active(v)]);
  if (list.dataset.key !== key) {
    list.replaceChildren(...v.profiles.map((p) => profileItem(p, v)));
    list.dataset.key = key;
  }
  setHidden("no-profiles", names.length > 0);
}

function profileItem(p, v) {
  const li = document.createElement("li");
  li.dataset.name = p.name;
  if (p.name === v.profile) li.classList.add("current");
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = p.name;
  const where = document.createElement("span");
  where.className = "where";
  where.textContent = p.hub + (p.auth === "certificate" ? " · certificate" : "");
  where.title = p.hub + " (" + p.server_name + ")";
  const remove = document.createElement("button");
  remove.textContent = "Remove";
  remove.className = "remove";
  remove.disabled = p.name === v.profile && active(v);
  remove.addEventListener("click", () => removeProfile(p.name));
  li.append(name, where, remove);
  return li;
}

// The kill switch of the chosen profile, and what it does now.
function renderKillSwitch(v) {
  const p = v.profiles.find((p) => p.name === selected);
  const box = $("kill-switch");
  let on = Boolean(p && p.kill_switch);
  if (killSwitchSet && (!p || killSwitchSet.profile !== p.name || killSwitchSet.on === on)) {
    killSwitchSet = null;
  }
  if (killSwitchSet) on = killSwitchSet.on;
  if (!switching && box.checked !== on) box.checked = on;
  const disabled = switching || !p || !p.full_tunnel || v.service.kind !== "ok";
  if (box.disabled !== disabled) box.disabled = disabled;
  let note = "";
  if (p && !p.full_tunnel) {
    note = "This profile sends only the hub’s networks through the VPN, so it cannot block the rest.";
  } else if (p && on) {
    const now = active(v) && v.profile === p.name && v.kill_switch;
    note = (now ? "On: nothing leaves this computer" : "Nothing will leave this computer") +
      " except through the VPN while it is connected, connecting or reconnecting" +
      (p.lockdown ? ", nor after SloPN stops until you disconnect here." : ".");
  } else if (p) {
    note = "Off: while the VPN connects or reconnects, traffic can leave without it.";
  }
  setText("kill-switch-note", note);
}

function active(v) {
  return ["connecting", "connected", "reconnecting", "disconnecting"].includes(v.phase);
}

function renderToggle(v) {
  const toggle = $("toggle");
  const on = active(v);
  setText("toggle", on ? "Disconnect" : "Connect");
  if (toggle.classList.contains("active") !== on) toggle.classList.toggle("active", on);
  const disabled = busy || v.service.kind !== "ok" || (!on && !selected);
  if (toggle.disabled !== disabled) toggle.disabled = disabled;
}

// The last minute of rates: download (teal) and upload (amber), scaled to the largest. Drawn
// only when a line would move by a pixel.
let lastPlot = null;

function drawChart(history, force) {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  const top = Math.max(1, ...history.map(([rx, tx]) => Math.max(rx, tx)));
  const scale = niceMax(top * 8);
  const pad = { l: 2, r: 2, t: 14, b: 4 };
  const plotH = h - pad.t - pad.b;
  const x = (i) => pad.l + ((w - pad.l - pad.r) * (i + 60 - history.length)) / 59;
  const y = (bytesPerSec) => pad.t + plotH - (plotH * bytesPerSec * 8) / scale;
  const plot = [w, h, scale, history.length]
    .concat(history.map(([rx, tx]) => Math.round(y(rx)) * 1000 + Math.round(y(tx))))
    .join(",");
  const flat = history.every(([rx, tx]) => Math.round(y(rx)) === Math.round(y(0)) && Math.round(y(tx)) === Math.round(y(0)));
  if (!force && (plot === lastPlot || (flat && lastPlot === "flat:" + [w, h, scale]))) return;
  lastPlot = flat ? "flat:" + [w, h, scale] : plot;
  if (canvas.width !== Math.round(w * ratio)) {
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);

  ctx.strokeStyle = "#e3e7ee";
  ctx.lineWidth = 1;
  for (const f of [0, 0.5, 1]) {
    const gy = Math.round(pad.t + plotH * f) + 0.5;
    ctx.beginPath();
    ctx.moveTo(pad.l, gy);
    ctx.lineTo(w - pad.r, gy);
    ctx.stroke();
  }
  ctx.fillStyle = "#6b7688";
  ctx.font = "10px sans-serif";
  ctx.fillText(axisLabel(scale), pad.l + 2, 10);
  ctx.textAlign = "right";
  ctx.fillText("last 60 s", w - pad.r - 2, 10);
  ctx.textAlign = "left";

  for (const [index, colour] of [[0, "#2ec4b6"], [1, "#f09a28"]]) {
    if (history.length < 2 || flat) break;
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2;
    ctx.beginPath();
    history.forEach((sample, i) => {
      const px = x(i), py = y(sample[index]);
      if (i === 0) ctx.moveTo(px, py);
      else ctx.lineTo(px, py);
    });
    ctx.stroke();
  }
}

// The chart's scale (1, 2 or 5 times a power of ten, in bit/s) without decimals.
function axisLabel(bitsPerSec) {
  for (const [unit, size] of [["Gbit/s", 1e9], ["Mbit/s", 1e6], ["kbit/s", 1e3]]) {
    if (bitsPerSec >= size) return bitsPerSec / size + " " + unit;
  }
  return bitsPerSec + " bit/s";
}

function niceMax(bitsPerSec) {
  const steps = [1, 2, 5];
  let magnitude = 1000;
  for (;;) {
    for (const s of steps) {
      if (s * magnitude >= bitsPerSec) return s * magnitude;
    }
    magnitude *= 10;
  }
}

// ---- logs ---------------------------------------------------------------------------------

function appendLogs(batch) {
  const pre = $("log-lines");
  if (batch.reset) pre.replaceChildren();
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  const fragment = document.createDocumentFragment();
  for (const l of batch.lines) {
    const line = document.createElement("div");
    line.className = l.level;
    line.textContent = l.time.slice(11, 19) + " " + l.level.padEnd(5) + " " + l.message;
    fragment.append(line);
  }
  pre.append(fragment);
  while (pre.childElementCount > MAX_LOG_LINES) pre.firstElementChild.remove();
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

async function saveLogs() {
  const path = await window.__TAURI__.dialog.save({
    title: "Save the SloPN log",
    defaultPath: "slopn-log.txt",
  });
  if (!path) return;
  try {
    const n = await invoke("save_logs", { path });
    toast(`Saved ${n} log lines to ${path}`);
  } catch (e) {
    toast(String(e), "error");
  }
}

// ---- actions ------------------------------------------------------------------------------

async function toggle() {
  if (!view || busy) return;
  busy = true;
  renderToggle(view);
  try {
    if (active(view)) await invoke("disconnect");
    else await invoke("connect", { profile: selected });
  } catch (e) {
    toast(String(e), "error");
  } finally {
    busy = false;
    renderToggle(view);
  }
}

async function setKillSwitch(event) {
  const box = event.target;
  if (!selected || switching) return;
  const on = box.checked;
  switching = true;
  renderKillSwitch(view);
  try {
    await invoke("set_kill_switch", { profile: selected, on });
    killSwitchSet = { profile: selected, on };
    toast(on ? "Kill switch on." : "Kill switch off.");
  } catch (e) {
    box.checked = !on;
    toast(String(e), "error");
  } finally {
    switching = false;
    renderKillSwitch(view);
  }
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsText(file);
  });
}

// A profile name from a file name: "alice.toml" -> "alice".
function nameFromFile(fileName) {
  const stem = fileName.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9._-]/g, "-");
  return stem.replace(/^\.+/, "").slice(0, 64) || "profile";
}

async function importFile(event) {
  const file = event.target.files[0];
  event.target.value = "";
  if (!file) return;
  try {
    const text = await readFile(file);
    const name = nameFromFile(file.name);
    const warning = await invoke("import_profile", { name, toml: text });
    selected = name;
    toast(warning ? `Imported “${name}”. Note: ${warning}` : `Imported profile “${name}”.`, warning ? "error" : "");
  } catch (e) {
    toast(String(e), "error");
  }
}

async function removeProfile(name) {
  try {
    await invoke("remove_profile", { name });
    toast(`Removed profile “${name}”.`);
  } catch (e) {
    toast(String(e), "error");
  }
}

function showForm(show) {
  const form = $("profile-form");
  form.hidden = !show;
  if (show) {
    form.reset();
    clearFormErrors();
    form.elements.name.focus();
  }
}

function clearFormErrors() {
  for (const p of document.querySelectorAll("#profile-form .field-error")) p.textContent = "";
}

async function saveForm(event) {
  event.preventDefault();
  clearFormErrors();
  const f = $("profile-form").elements;
  const form = {
    name: f.name.value,
    hub: f.hub.value,
    server_name: f.server_name.value,
    token: f.token.value,
    ca_pem: f.ca_pem.value,
  };
  try {
    const warning = await invoke("create_profile", { form });
    selected = form.name.trim();
    showForm(false);
    toast(warning ? `Saved. Note: ${warning}` : `Saved profile “${selected}”.`, warning ? "error" : "");
  } catch (rejection) {
    for (const { field, message } of rejection.fields || []) {
      const p = document.querySelector(`#profile-form .field-error[data-for="${field}"]`);
      if (p) p.textContent = message;
    }
    $("form-error").textContent = rejection.message || "";
  }
}

async function chooseCa(event) {
  const file = event.target.files[0];
  event.target.value = "";
  if (file) $("profile-form").elements.ca_pem.value = await readFile(file);
}

// ---- start --------------------------------------------------------------------------------

async function start() {
  $("toggle").addEventListener("click", toggle);
  $("kill-switch").addEventListener("change", setKillSwitch);
  $("profile-select").addEventListener("change", (e) => {
    selected = e.target.value;
    render(view);
  });
  $("import-button").addEventListener("click", () => $("import-file").click());
  $("import-file").addEventListener("change", importFile);
  $("new-profile").addEventListener("click", () => showForm(true));
  $("form-cancel").addEventListener("click", () => showForm(false));
  $("profile-form").addEventListener("submit", saveForm);
  $("ca-choose").addEventListener("click", () => $("ca-file").click());
  $("ca-file").addEventListener("change", chooseCa);
  $("save-logs").addEventListener("click", saveLogs);
  window.addEventListener("resize", () => view && drawChart(view.history, true));

  await listen("view", (e) => render(e.payload));
  await listen("logs", (e) => appendLogs(e.payload));
  await listen("error", (e) => toast(String(e.payload), "error"));
  render(await invoke("view"));
  appendLogs({ lines: await invoke("logs"), reset: true });
  await invoke("ready");
  document.body.dataset.ready = "true";
}

start().catch((e) => toast("The window could not start: " + e, "error"));
