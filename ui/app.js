// The dashboard: one /stats poll every 2 s feeds the overview, the streams table and a
// stream's page; /events (SSE) feeds the event log. Nothing here talks to another host.
import * as api from "./api.js";

const POLL_MS = 2000;
const HISTORY = 150; // 5 minutes of 2 s samples
const EVENT_TYPES = [
  "stream_created", "stream_updated", "stream_deleted", "stream_idle_removed",
  "client_connected", "client_disconnected", "failover", "upstream_error",
  "stream_started", "stream_stopped",
];
const MAX_EVENTS = 200;

const $ = (id) => document.getElementById(id);
const state = {
  stats: null,
  rates: { total: null, streams: new Map() },
  meter: new api.RateMeter(),
  history: [],
  sort: { key: "client_count", desc: true },
  filter: "",
  events: [],
  shownTypes: new Set(EVENT_TYPES),
  needsToken: false,
  view: "overview",
  streamId: null,
};

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

// ---- connection state -------------------------------------------------------------------

function setConn(kind, text) {
  const c = $("conn");
  c.textContent = text;
  c.dataset.state = kind;
}

function askToken(message) {
  state.needsToken = true;
  $("token-button").hidden = false;
  const dialog = $("token-dialog");
  $("token-error").textContent = message || "";
  if (!dialog.open) dialog.showModal();
}

$("token-form").addEventListener("submit", () => {
  api.setToken($("token-input").value.trim());
  $("token-input").value = "";
  restartEvents();
  poll();
});
$("token-button").addEventListener("click", () => askToken(""));

// ---- polling ------------------------------------------------------------------------------

let pollTimer = null;
async function poll() {
  clearTimeout(pollTimer);
  try {
    const stats = await api.get("stats");
    state.stats = stats;
    state.rates = state.meter.observe(stats);
    if (state.rates.total !== null) {
      state.history.push(state.rates.total);
      if (state.history.length > HISTORY) state.history.shift();
    }
    setConn("live", `Live · updated ${new Date().toLocaleTimeString()}`);
    render();
    if (state.view === "providers" || state.view === "playlists") optionalPanels();
  } catch (e) {
    if (e instanceof api.ApiError && (e.status === 401 || e.status === 403)) {
      setConn("auth", "Needs the API token");
      askToken(e.status === 403 ? "That token is wrong." : "");
      return; // polling resumes when a token is given
    }
    if (e instanceof api.Unreachable || (e instanceof api.ApiError && e.status >= 500)) {
      setConn("down", "Server unreachable, retrying…");
    } else {
      setConn("down", `Error: ${e.message}`);
    }
  }
  pollTimer = setTimeout(poll, POLL_MS);
}

// ---- rendering ----------------------------------------------------------------------------

function render() {
  const s = state.stats;
  if (!s) return;
  const p = s.proxy;
  $("c-uptime").textContent = api.duration(p.uptime_seconds);
  $("c-rate").textContent = state.rates.total === null ? "–" : api.rate(state.rates.total);
  $("c-bytes").textContent = api.bytes(p.total_bytes_served);
  $("c-streams").textContent = `${p.total_streams} (${p.active_streams} active)`;
  $("c-clients").textContent = `${p.total_clients} (${p.active_clients} active)`;
  $("c-conns").textContent = String(p.active_connections);
  $("c-errors").textContent = String(p.total_errors);
  $("c-failovers").textContent = String(p.total_failovers);
  $("c-version").textContent = p.version;
  renderChart();
  renderStreams();
  if (state.view === "stream") renderStream();
}

function renderChart() {
  const h = state.history;
  const peak = Math.max(1, ...h);
  const step = 600 / (HISTORY - 1);
  const offset = HISTORY - h.length;
  $("chart-line").setAttribute(
    "points",
    h.map((v, i) => `${((offset + i) * step).toFixed(1)},${(118 - (v / peak) * 114).toFixed(1)}`).join(" "),
  );
  $("chart-peak").textContent = api.rate(h.length ? Math.max(...h) : 0);
}

function streamRate(s) {
  const r = state.rates.streams.get(s.stream_id);
  return r === undefined || r === null ? null : r;
}

function sortValue(s, key) {
  if (key === "rate") return streamRate(s) ?? -1;
  if (key === "last_access") return Date.parse(s.last_access);
  return s[key];
}

function renderStreams() {
  const streams = state.stats.streams.filter((s) => {
    const f = state.filter.toLowerCase();
    return !f || [s.stream_id, s.current_url, s.original_url, s.stream_type].some((v) => v.toLowerCase().includes(f));
  });
  const { key, desc } = state.sort;
  streams.sort((a, b) => {
    const x = sortValue(a, key), y = sortValue(b, key);
    const c = x < y ? -1 : x > y ? 1 : a.stream_id < b.stream_id ? -1 : 1;
    return desc ? -c : c;
  });
  const body = $("streams-body");
  body.replaceChildren(
    ...streams.map((s) => {
      const r = streamRate(s);
      return el("tr", { "data-stream": s.stream_id },
        el("td", {}, el("a", { href: `#stream/${encodeURIComponent(s.stream_id)}`, text: s.stream_id })),
        el("td", { text: s.stream_type }),
        el("td", { class: "num", "data-field": "viewers", text: String(s.client_count) }),
        el("td", { class: "num", "data-field": "rate", text: r === null ? "–" : api.rate(r) }),
        el("td", { class: "num", text: api.bytes(s.total_bytes_served) }),
        el("td", { class: "num", text: String(s.error_count) }),
        el("td", { class: "num", text: String(s.failover_count) }),
        el("td", { title: s.current_url }, el("code", { text: api.shorten(s.current_url) })),
        el("td", { text: api.ago(s.last_access) }),
      );
    }),
  );
  $("streams-empty").hidden = state.stats.streams.length !== 0;
  $("streams-empty").textContent = "";
  if (state.stats.streams.length === 0) {
    $("streams-empty").append("No streams yet. ", el("a", { href: "#register", text: "Register one." }));
  } else if (streams.length === 0) {
    $("streams-empty").hidden = false;
    $("streams-empty").textContent = "No stream matches the filter.";
  }
  for (const th of document.querySelectorAll("#streams-table th")) {
    const k = th.querySelector("button").dataset.sort;
    th.setAttribute("aria-sort", k === key ? (desc ? "descending" : "ascending") : "none");
  }
}

document.querySelectorAll("#streams-table th button").forEach((b) =>
  b.addEventListener("click", () => {
    const key = b.dataset.sort;
    state.sort = { key, desc: state.sort.key === key ? !state.sort.desc : true };
    if (state.stats) renderStreams();
  }),
);
$("filter").addEventListener("input", (e) => {
  state.filter = e.target.value;
  if (state.stats) renderStreams();
});

function playUrl(s) {
  const path = s.stream_type === "hls" ? `hls/${s.stream_id}/playlist.m3u8` : `stream/${s.stream_id}`;
  return new URL(path, document.baseURI).href;
}

function renderStream() {
  const id = state.streamId;
  $("s-id").textContent = id;
  const s = state.stats && state.stats.streams.find((x) => x.stream_id === id);
  $("stream-gone").hidden = !!s || !state.stats;
  $("stream-body").hidden = !s;
  if (!s) return;
  const r = streamRate(s);
  $("s-type").textContent = s.stream_type;
  $("s-play").textContent = playUrl(s);
  $("s-viewers").textContent = String(s.client_count);
  $("s-rate").textContent = r === null ? "–" : api.rate(r);
  $("s-bytes").textContent = api.bytes(s.total_bytes_served);
  $("s-errors").textContent = String(s.error_count);
  $("s-failovers").textContent = String(s.failover_count);
  $("s-current").textContent = s.current_url;
  $("s-failover").disabled = s.failover_urls.length === 0;
  const urls = [s.original_url, ...s.failover_urls];
  $("s-urls").replaceChildren(
    ...urls.map((u, i) =>
      el("li", i === s.failover_index ? { class: "current", "aria-current": "true" } : {},
        el("code", { text: u }), i === s.failover_index ? el("strong", { text: " (in use)" }) : ""),
    ),
  );
  const clients = state.stats.clients.filter((c) => c.stream_id === id);
  $("s-clients").replaceChildren(
    ...clients.map((c) =>
      el("tr", {},
        el("td", {}, el("code", { text: c.client_id })),
        el("td", { text: c.username || "–" }),
        el("td", { text: c.ip_address }),
        el("td", { text: c.user_agent }),
        el("td", { class: "num", text: api.bytes(c.bytes_served) }),
        el("td", { class: "num", text: api.rate(c.bytes_per_second) }),
        el("td", { class: "num", text: String(c.active_connections) }),
      ),
    ),
  );
  $("s-no-clients").hidden = clients.length !== 0;
  renderStreamEvents();
}

function renderStreamEvents() {
  const mine = state.events.filter((e) => e.stream_id === state.streamId);
  $("s-events").replaceChildren(...mine.slice(0, 30).map(eventItem));
  if (mine.length === 0) $("s-events").append(el("li", { class: "empty", text: "No events since this page opened." }));
}

function message(id, text, kind = "ok") {
  $(id).textContent = text;
  $(id).dataset.kind = kind;
}

$("s-failover").addEventListener("click", async () => {
  try {
    const done = await api.call("POST", `streams/${encodeURIComponent(state.streamId)}/failover`);
    message("s-message", `Switched to ${done.current_url}`);
    poll();
  } catch (e) {
    message("s-message", `Failover failed: ${e.message}`, "error");
  }
});

$("s-copy").addEventListener("click", async () => {
  const url = $("s-play").textContent;
  try {
    await navigator.clipboard.writeText(url);
    message("s-message", "Play URL copied.");
  } catch {
    // Clipboard access needs a secure context; select the text for a manual copy instead.
    const range = document.createRange();
    range.selectNodeContents($("s-play"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    message("s-message", "Play URL selected: press Ctrl+C to copy.");
  }
});

$("s-delete").addEventListener("click", () => $("delete-dialog").showModal());
$("delete-dialog").addEventListener("close", async () => {
  if ($("delete-dialog").returnValue !== "delete") return;
  try {
    await api.call("DELETE", `streams/${encodeURIComponent(state.streamId)}`);
    message("s-message", "Stream deleted.");
    location.hash = "#streams";
    poll();
  } catch (e) {
    message("s-message", `Delete failed: ${e.message}`, "error");
  }
});

// ---- register -------------------------------------------------------------------------------

$("register-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const url = $("r-url").value.trim();
  if (!url) {
    message("r-message", "Give the stream's URL.", "error");
    $("r-url").focus();
    return;
  }
  const body = { url };
  const lines = (v) => v.split("\n").map((l) => l.trim()).filter(Boolean);
  const backups = lines($("r-backups").value);
  if (backups.length) body.failover_urls = backups;
  if ($("r-ua").value.trim()) body.user_agent = $("r-ua").value.trim();
  const headers = {};
  for (const line of lines($("r-headers").value)) {
    const at = line.indexOf(":");
    if (at <= 0) {
      message("r-message", `Not a header line (Name: value): ${line}`, "error");
      return;
    }
    headers[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  if (Object.keys(headers).length) body.headers = headers;
  if ($("r-type").value) body.stream_type = $("r-type").value;
  message("r-message", "Registering…");
  try {
    const created = await api.call("POST", "streams", body);
    message("r-message", `${created.message}: ${created.stream_id}`);
    $("register-form").reset();
    await poll();
    location.hash = `#stream/${encodeURIComponent(created.stream_id)}`;
  } catch (err) {
    message("r-message", `Not registered: ${err.message}`, "error");
  }
});

// ---- events -------------------------------------------------------------------------------

function eventItem(e) {
  const time = new Date(e.timestamp).toLocaleTimeString();
  const detail = [e.stream_id && `stream ${e.stream_id}`, e.client_id && `client ${e.client_id}`]
    .filter(Boolean).join(", ");
  return el("li", { "data-type": e.event_type },
    el("time", { datetime: e.timestamp, text: time }), " ",
    el("strong", { text: e.event_type }), detail ? ` ${detail}` : "",
    e.data && Object.keys(e.data).length ? el("code", { text: ` ${JSON.stringify(e.data)}` }) : "");
}

function renderEvents() {
  const shown = state.events.filter((e) => state.shownTypes.has(e.event_type));
  $("event-log").replaceChildren(...shown.map(eventItem));
  if (shown.length === 0) $("event-log").append(el("li", { class: "empty", text: "No events yet." }));
}

for (const type of EVENT_TYPES) {
  const id = `t-${type}`;
  const box = el("input", { type: "checkbox", id, checked: "" });
  box.addEventListener("change", () => {
    if (box.checked) state.shownTypes.add(type);
    else state.shownTypes.delete(type);
    renderEvents();
  });
  $("event-types").append(el("span", { class: "check" }, box, el("label", { for: id, text: type })));
}

let eventsAbort = null;
async function runEvents() {
  const controller = new AbortController();
  eventsAbort = controller;
  while (!controller.signal.aborted) {
    try {
      $("events-state").textContent = "Connecting…";
      const opened = api.readEvents(`events?types=${EVENT_TYPES.join(",")}`, (m) => {
        if (m.type === "lagged") return;
        state.events.unshift(m.data);
        if (state.events.length > MAX_EVENTS) state.events.pop();
        renderEvents();
        if (state.view === "stream") renderStreamEvents();
      }, controller.signal);
      $("events-state").textContent = "Live.";
      await opened;
      $("events-state").textContent = "The feed ended, reconnecting…";
    } catch (e) {
      if (controller.signal.aborted) return;
      if (e instanceof api.ApiError && (e.status === 401 || e.status === 403)) {
        $("events-state").textContent = "Needs the API token.";
        return; // restarted when a token is given
      }
      $("events-state").textContent = "Server unreachable, retrying…";
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

function restartEvents() {
  if (eventsAbort) eventsAbort.abort();
  runEvents();
}

// ---- providers and channel lists (when this proxy has them) -------------------------------

function listOf(body, key) {
  return (body && body[key]) || [];
}

// Asked only when openapi.json lists the route (so a proxy without it sees no 404s), and
// shown only while the route answers 200.
let documented = null;
async function optionalPanels() {
  if (!documented) {
    try {
      documented = new Set(Object.keys((await api.get("openapi.json")).paths));
    } catch {
      return;
    }
  }
  for (const [panel, key] of [["providers", "providers"], ["playlists", "playlists"]]) {
    let body;
    try {
      if (!documented.has(`/${panel}`)) throw new Error("not here");
      body = await api.get(panel);
    } catch {
      document.querySelector(`[data-panel="${panel}"]`).hidden = true;
      continue;
    }
    document.querySelector(`[data-panel="${panel}"]`).hidden = false;
    const items = listOf(body, key);
    $(`${panel}-empty`).hidden = items.length !== 0;
    if (panel === "providers") {
      $("providers-body").replaceChildren(...items.map((p) => el("tr", {},
        el("td", { text: p.name }),
        el("td", { class: "num", text: String(p.active_connections) }),
        el("td", { class: "num", text: String(p.max_connections) }))));
    } else {
      $("playlists-body").replaceChildren(...items.map((l) => {
        const name = l.name;
        const refresh = el("button", { type: "button", class: "secondary", text: "Refresh" });
        refresh.setAttribute("aria-label", `Refresh ${name}`);
        refresh.addEventListener("click", async () => {
          try {
            await api.call("POST", `playlists/${encodeURIComponent(l.id)}/refresh`);
          } catch {
            // shown on the next refresh of the panel
          }
          optionalPanels();
        });
        return el("tr", {}, el("td", { text: name }),
          el("td", { class: "num", text: String(l.channel_count) }),
          el("td", { text: l.last_refresh ? api.ago(l.last_refresh) : "–" }), el("td", {}, refresh));
      }));
    }
  }
}

// ---- views --------------------------------------------------------------------------------

function route() {
  const hash = decodeURIComponent(location.hash.replace(/^#/, "")) || "overview";
  let view = hash;
  state.streamId = null;
  if (hash.startsWith("stream/")) {
    view = "stream";
    state.streamId = hash.slice("stream/".length);
  }
  if (!document.getElementById(view) || !document.getElementById(view).hasAttribute("data-view")) view = "overview";
  state.view = view;
  for (const section of document.querySelectorAll("[data-view]")) section.hidden = section.id !== view;
  for (const a of document.querySelectorAll("nav a[data-tab]")) {
    if (a.dataset.tab === view || (view === "stream" && a.dataset.tab === "streams")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (view === "stream") {
    $("s-message").textContent = "";
    renderStream();
  }
  if (view === "providers" || view === "playlists") optionalPanels();
  document.title = `${view === "stream" ? `Stream ${state.streamId}` : view[0].toUpperCase() + view.slice(1)} · m3u-proxy`;
}

window.addEventListener("hashchange", () => {
  route();
  $("main").focus({ preventScroll: true });
});
route();
renderEvents();
poll();
runEvents();
optionalPanels();
