// The dashboard's link to the proxy: every URL is relative to the page's <base>, so the
// page works under ROOT_PATH and behind a reverse proxy. The token (when the proxy has
// one) lives in sessionStorage only and goes out as the X-API-Token header.

const TOKEN_KEY = "m3u-proxy-token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(extra) {
  const h = { Accept: "application/json", ...extra };
  const t = token();
  if (t) h["X-API-Token"] = t;
  return h;
}

/** An answer that is not 2xx: its status, and the API's {detail, code} when it sent one. */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
  }
}

/** A fetch that could not reach the server at all. */
export class Unreachable extends Error {}

export async function call(method, path, body) {
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (e) {
    throw new Unreachable(e.message || "network error");
  }
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!res.ok) throw new ApiError(res.status, json);
  return json;
}

export const get = (path) => call("GET", path);

/**
 * Reads `events` (Server-Sent Events) with fetch, so the token travels as a header and
 * never in a URL. Calls onEvent({type, data}) per message; resolves when the feed ends.
 */
export async function readEvents(path, onEvent, signal) {
  const res = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!res.ok) {
    let body = null;
    try {
      body = await res.json();
    } catch {
      body = null;
    }
    throw new ApiError(res.status, body);
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) {
        try {
          onEvent({ type, data: JSON.parse(data.join("\n")) });
        } catch {
          onEvent({ type, data: data.join("\n") });
        }
      }
    }
  }
}

// Formats: the same as `m3u-client monitor` (src/cli/format.rs), so both show one number.
const UNITS = ["kB", "MB", "GB", "TB", "PB"];

export function bytes(n) {
  n = Number(n) || 0;
  if (n < 1000) return `${n} B`;
  let value = n / 1000;
  let unit = 0;
  while (Math.round(value * 10) / 10 >= 1000 && unit < UNITS.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value.toFixed(1)} ${UNITS[unit]}`;
}

export function rate(bps) {
  const n = Number.isFinite(bps) && bps > 0 ? Math.round(bps) : 0;
  return `${bytes(n)}/s`;
}

export function duration(s) {
  const M = 60, H = 3600, D = 86400;
  s = Math.max(0, Math.floor(s));
  if (s < M) return `${s}s`;
  if (s < H) return `${Math.floor(s / M)}m`;
  if (s < D) return `${Math.floor(s / H)}h ${Math.floor((s % H) / M)}m`;
  return `${Math.floor(s / D)}d ${Math.floor((s % D) / H)}h`;
}

export function ago(iso, now = Date.now()) {
  const seconds = Math.floor((now - Date.parse(iso)) / 1000);
  return seconds < 5 ? "just now" : `${duration(seconds)} ago`;
}

/** `…` in the middle of a long URL, keeping both ends (like the monitor's URL column). */
export function shorten(text, width = 48) {
  if (!text || text.length <= width) return text || "";
  const keep = width - 1;
  const head = Math.ceil(keep / 2);
  return `${text.slice(0, head)}…${text.slice(text.length - (keep - head))}`;
}

/**
 * Rates from the growth of byte counters between two readings, as the monitor's
 * RateMeter measures them: unknown (null) at first sight of a stream.
 */
export class RateMeter {
  constructor() {
    this.last = null;
  }
  observe(stats, at = performance.now()) {
    const reading = {
      at,
      total: stats.proxy.total_bytes_served,
      streams: new Map(stats.streams.map((s) => [s.stream_id, s.total_bytes_served])),
    };
    const rates = { total: null, streams: new Map() };
    if (this.last) {
      const secs = (at - this.last.at) / 1000;
      const between = (a, b) => (secs > 0 ? Math.max(0, b - a) / secs : null);
      rates.total = between(this.last.total, reading.total);
      for (const [id, b] of reading.streams) {
        if (this.last.streams.has(id)) rates.streams.set(id, between(this.last.streams.get(id), b));
      }
    }
    this.last = reading;
    return rates;
  }
}
