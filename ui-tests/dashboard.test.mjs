// Browser tests of the dashboard (issue 16): Debian's Chromium driven by playwright-core,
// against the real binary on 127.0.0.1 and a local live-TS origin. Fails on any console
// error, page error or request to another host. Runs the scenario without and with
// API_TOKEN, checks both pages with axe-core, and saves screenshots in target/ui-screenshots/.
//
//   M3U_PROXY_BIN=target/debug/m3u-proxy CHROMIUM=/usr/bin/chromium node ui-tests/dashboard.test.mjs
import { spawn } from "node:child_process";
import { readFileSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "..");
const BIN = process.env.M3U_PROXY_BIN || path.join(repo, "target/debug/m3u-proxy");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = path.join(repo, "target/ui-screenshots");
const AXE = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
const DEADLINE_MS = 15000;
mkdirSync(SHOTS, { recursive: true });

const cleanups = [];
let failures = 0;

function log(...args) {
  console.log(...args);
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

/**
 * A live TS origin: /a.ts and /b.ts send 188-byte packets forever, ~190 kB/s each. Every
 * packet carries a running count, so no two connections send the same bytes (as a live
 * channel does not; the proxy takes a repeat of the first bytes for a file restarting).
 */
async function startOrigin() {
  let sent = 0;
  const burst = () => {
    const chunk = Buffer.alloc(188 * 100, 0xff);
    for (let i = 0; i < 100; i++) {
      chunk[i * 188] = 0x47;
      chunk.writeUInt32BE(sent++ >>> 0, i * 188 + 4);
    }
    return chunk;
  };
  const server = http.createServer((req, res) => {
    if (req.url !== "/a.ts" && req.url !== "/b.ts") {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "Content-Type": "video/mp2t" });
    if (req.method === "HEAD") return res.end();
    const timer = setInterval(() => res.write(burst()), 100);
    res.on("close", () => clearInterval(timer));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  cleanups.push(() => { server.closeAllConnections(); server.close(); });
  return `http://127.0.0.1:${server.address().port}`;
}

async function startProxy(env) {
  const port = await freePort();
  // The default store (sqlite) in a data directory of its own, removed afterwards.
  const data = mkdtempSync(path.join(os.tmpdir(), "m3u-proxy-ui-"));
  cleanups.push(() => rmSync(data, { recursive: true, force: true }));
  const child = spawn(BIN, [], {
    env: { ...process.env, HOST: "127.0.0.1", PORT: String(port), LOG_LEVEL: "warn", M3U_PROXY_DATA_DIR: data, ...env },
    stdio: ["ignore", "inherit", "inherit"],
  });
  cleanups.push(() => child.kill("SIGTERM"));
  const base = `http://127.0.0.1:${port}`;
  await eventually(async () => (await fetch(`${base}/health`)).ok, "proxy up");
  return base;
}

async function eventually(check, what, deadline = DEADLINE_MS) {
  const end = Date.now() + deadline;
  let last;
  for (;;) {
    try {
      if (await check()) return;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A real HTTP client as the viewer: curl reading the play URL until killed. */
function startViewer(url, token) {
  const args = ["-sS", "-o", "/dev/null", "--max-time", "60", "-A", "ui-test-viewer/1.0"];
  if (token) args.push("-H", `X-API-Token: ${token}`);
  const child = spawn("curl", [...args, url], { stdio: "ignore" });
  cleanups.push(() => child.kill("SIGTERM"));
  return child;
}

/** A page that records console errors and every request to another host. */
async function openPage(browser, base, viewport) {
  const context = await browser.newContext({ viewport: viewport || { width: 1280, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  const origin = new URL(base).host;
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console error: ${m.text()}`); });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("request", (r) => {
    const u = new URL(r.url());
    if (u.protocol !== "data:" && u.host !== origin) problems.push(`request to another host: ${r.url()}`);
  });
  return { page, context, problems };
}

async function axeCheck(page, name) {
  await page.evaluate(AXE); // evaluated through the driver, so the page's CSP does not apply
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  for (const v of result.violations) log(`  axe ${name}: ${v.impact} ${v.id}: ${v.help} (${v.nodes.length})`);
  if (bad.length) throw new Error(`axe: ${bad.length} serious or critical violations on ${name}`);
  log(`  axe ${name}: no serious or critical violations (${result.violations.length} minor)`);
}

const text = (page, sel) => page.locator(sel).first().innerText();

/** The dashboard's (and the monitor's) byte format, to compare a cell with a figure. */
function api_bytes(n) {
  if (n < 1000) return `${n} B`;
  const units = ["kB", "MB", "GB", "TB", "PB"];
  let value = n / 1000, unit = 0;
  while (Math.round(value * 10) / 10 >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return `${value.toFixed(1)} ${units[unit]}`;
}

async function scenario(browser, origin, { token, shots }) {
  const env = token ? { API_TOKEN: token } : {};
  const base = await startProxy(env);
  const { page, context, problems } = await openPage(browser, base);
  await page.goto(`${base}/`);

  if (token) {
    // The page asks for the token and keeps it in session storage only.
    await page.locator("#token-dialog[open]").waitFor({ timeout: DEADLINE_MS });
    await page.fill("#token-input", "wrong");
    await page.keyboard.press("Enter");
    await page.locator("#token-dialog[open] #token-error:has-text('wrong')").waitFor({ timeout: DEADLINE_MS });
    await page.fill("#token-input", token);
    await page.keyboard.press("Enter");
    const stored = await page.evaluate(() => sessionStorage.getItem("m3u-proxy-token"));
    if (stored !== token) throw new Error("token not in session storage");
    const local = await page.evaluate(() => JSON.stringify(localStorage));
    if (local.includes(token)) throw new Error("token in local storage");
  }
  await page.locator("#conn[data-state='live']").waitFor({ timeout: DEADLINE_MS });

  // Register through the form, keyboard only.
  await page.focus("nav a[data-tab='register']");
  await page.keyboard.press("Enter");
  await page.locator("#register:not([hidden])").waitFor();
  await page.focus("#r-url");
  await page.keyboard.type(`${origin}/a.ts`);
  await page.keyboard.press("Tab");
  await page.keyboard.type(`${origin}/b.ts`);
  await page.keyboard.press("Tab");
  await page.keyboard.type("ui-test/1.0");
  await page.keyboard.press("Tab");
  await page.keyboard.type("Referer: http://127.0.0.1/");
  await page.focus("#register-form button[type='submit']");
  await page.keyboard.press("Enter");
  await page.waitForURL(/#stream\//, { timeout: DEADLINE_MS });
  const id = decodeURIComponent(page.url().split("#stream/")[1]);
  log(`  registered ${id}`);
  await page.locator("#s-current:has-text('/a.ts')").waitFor({ timeout: DEADLINE_MS });
  if ((await text(page, "#s-viewers")) !== "0") throw new Error("viewers before any viewer");

  // A viewer: the count and rate change without a reload.
  await page.evaluate(() => { window.notReloaded = true; });
  const play = await text(page, "#s-play");
  const viewer = startViewer(play);
  await page.locator("#s-viewers:text-is('1')").waitFor({ timeout: DEADLINE_MS });
  await eventually(async () => /[1-9]/.test(await text(page, "#s-rate")) && (await text(page, "#s-rate")) !== "0 B/s", "a rate");
  await page.locator("#s-clients tr td:has-text('ui-test-viewer/1.0')").waitFor({ timeout: DEADLINE_MS });
  log(`  viewer seen: rate ${await text(page, "#s-rate")}`);
  await sameNumbersAsMonitor(page, base, token);
  if (shots) {
    await page.screenshot({ path: path.join(SHOTS, "stream.png"), fullPage: true });
    await axeCheck(page, "stream page");
    // The overview while the viewer plays, once the chart has a few samples.
    await page.click("nav a[data-tab='overview']");
    await eventually(async () => (await page.locator("#chart-line").getAttribute("points")).split(" ").length >= 8, "a chart", 30000);
    await page.screenshot({ path: path.join(SHOTS, "overview.png"), fullPage: true });
    await axeCheck(page, "overview");
    await page.goBack();
    await page.locator("#stream:not([hidden])").waitFor();
  }

  // Failover: the current URL changes.
  await page.click("#s-failover");
  await page.locator("#s-current:has-text('/b.ts')").waitFor({ timeout: DEADLINE_MS });
  await page.locator("#s-urls li.current:has-text('/b.ts')").waitFor({ timeout: DEADLINE_MS });
  await page.locator("#s-events li[data-type='failover']").waitFor({ timeout: DEADLINE_MS });
  // The viewer follows on its open connection, and keeps being served.
  const served = await page.evaluate(async (id) => {
    const s = await (await fetch(`streams/${id}`, { headers: { "X-API-Token": sessionStorage.getItem("m3u-proxy-token") || "" } })).json();
    return s.stream.total_bytes_served;
  }, id);
  await eventually(async () => {
    const cell = await text(page, "#s-bytes");
    return cell !== api_bytes(served) && (await text(page, "#s-viewers")) === "1";
  }, "bytes served after the failover");
  if (viewer.exitCode !== null) throw new Error("the viewer was cut by the failover");
  log("  failover seen; the viewer plays on");

  // The overview and the table show the same numbers as the API.
  await page.click("nav a[data-tab='overview']");
  await page.locator("#c-streams:has-text('1 (1 active)')").waitFor({ timeout: DEADLINE_MS });
  await eventually(async () => (await page.locator("#chart-line").getAttribute("points")).split(" ").length >= 2, "a chart");
  await page.click("nav a[data-tab='streams']");
  await page.locator(`#streams-body tr[data-stream='${id}'] td[data-field='viewers']:text-is('1')`).waitFor({ timeout: DEADLINE_MS });
  await page.fill("#filter", "no-such-stream");
  await page.locator("#streams-empty:has-text('No stream matches')").waitFor();
  await page.fill("#filter", "");

  // Delete, with a confirmation.
  await page.click(`#streams-body a:text-is('${id}')`);
  await page.click("#s-delete");
  await page.locator("#delete-dialog[open]").waitFor();
  await page.click("#delete-confirm");
  await page.waitForURL(/#streams$/, { timeout: DEADLINE_MS });
  await page.locator("#streams-empty:has-text('No streams yet')").waitFor({ timeout: DEADLINE_MS });
  await eventually(() => viewer.exitCode !== null, "the viewer to be disconnected");

  // The events.
  await page.click("nav a[data-tab='events']");
  for (const type of ["stream_created", "client_connected", "failover", "stream_deleted"]) {
    await page.locator(`#event-log li[data-type='${type}']`).first().waitFor({ timeout: DEADLINE_MS });
  }
  await page.uncheck("#t-failover");
  if (await page.locator("#event-log li[data-type='failover']").count()) throw new Error("type filter");
  await page.check("#t-failover");
  if (!(await page.evaluate(() => window.notReloaded))) throw new Error("the page reloaded");
  log("  events seen");

  // Unreachable: the page says so and retries.
  await context.close();
  // With a token, the page learns it needs one from the 401 of its first calls, and the
  // wrong token typed above earns 403s: those answers, and only those, are expected.
  const expected = token ? /status of (401 \(Unauthorized\)|403 \(Forbidden\))$/ : null;
  const real = problems.filter((p) => !(expected && expected.test(p)));
  if (real.length) throw new Error(real.join("\n"));
  return base;
}

/**
 * The overview shows what `m3u-client monitor` shows: its first frame's totals (those that
 * do not move while a viewer plays) read the same as the dashboard's cards.
 */
async function sameNumbersAsMonitor(page, base, token) {
  const client = path.join(path.dirname(BIN), "m3u-client");
  const args = ["--server", base, ...(token ? ["--token", token] : []), "monitor", "--interval", "1"];
  const frame = await new Promise((resolve, reject) => {
    const child = spawn(client, args, { stdio: ["ignore", "pipe", "inherit"] });
    cleanups.push(() => child.kill("SIGTERM"));
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
      if (/failovers \d+/.test(out)) {
        child.kill("SIGTERM");
        resolve(out);
      }
    });
    child.on("error", reject);
    setTimeout(() => reject(new Error(`no monitor frame: ${out}`)), DEADLINE_MS);
  });
  const totals = frame.split("\n").find((l) => l.startsWith("up "));
  const m = totals.match(/streams (\d+ \(\d+ active\))  clients (\d+ \(\d+ active\))  connections (\d+) .* errors (\d+)  failovers (\d+)/);
  if (!m) throw new Error(`monitor frame: ${totals}`);
  await page.click("nav a[data-tab='overview']");
  for (const [card, value] of [["c-streams", m[1]], ["c-clients", m[2]], ["c-conns", m[3]], ["c-errors", m[4]], ["c-failovers", m[5]]]) {
    await page.locator(`#${card}:text-is('${value}')`).waitFor({ timeout: DEADLINE_MS });
  }
  log(`  same numbers as m3u-client monitor: ${totals.trim()}`);
  await page.goBack();
  await page.locator("#stream:not([hidden])").waitFor();
}

async function rootPathAndPhone(browser, origin) {
  const base = await startProxy({ ROOT_PATH: "/m3u-proxy" });
  await fetch(`${base}/streams`, { method: "POST", body: JSON.stringify({ url: `${origin}/a.ts` }) });
  const { page, context, problems } = await openPage(browser, base, { width: 390, height: 844 });
  await page.goto(`${base}/m3u-proxy`);
  await page.waitForURL(`${base}/m3u-proxy/`);
  await page.locator("#conn[data-state='live']").waitFor({ timeout: DEADLINE_MS });
  await page.click("nav a[data-tab='streams']");
  await page.locator("#streams-body tr").first().waitFor({ timeout: DEADLINE_MS });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  if (overflow > 0) throw new Error(`page wider than a phone by ${overflow}px`);
  await page.screenshot({ path: path.join(SHOTS, "phone-streams.png"), fullPage: true });
  await page.goto(`${base}/m3u-proxy/ui/`);
  await page.locator("#conn[data-state='live']").waitFor({ timeout: DEADLINE_MS });
  await page.goto(`${base}/m3u-proxy/docs`);
  await page.locator("#ops details").first().waitFor({ timeout: DEADLINE_MS });
  await axeCheck(page, "docs");
  await context.close();
  if (problems.length) throw new Error(problems.join("\n"));
}

/** Providers and channel lists: their panels show what the API says, and Refresh works. */
async function providersAndLists(browser, origin) {
  const base = await startProxy({});
  const put = await fetch(`${base}/providers/acme`, {
    method: "PUT",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ hosts: [new URL(origin).host], max_connections: 2 }),
  });
  if (put.status !== 201) throw new Error(`PUT /providers/acme: ${put.status}`);
  const list = `#EXTM3U\n#EXTINF:-1 tvg-id="a" group-title="News",A\n${origin}/a.ts\n#EXTINF:-1 tvg-id="b",B\n${origin}/b.ts\n`;
  const imported = await fetch(`${base}/playlists?name=home`, {
    method: "POST",
    headers: { "Content-Type": "audio/x-mpegurl" },
    body: list,
  });
  if (imported.status !== 201) throw new Error(`POST /playlists: ${imported.status}`);
  const { id } = await imported.json();
  // One viewer of a channel of the list holds one slot of the provider.
  startViewer(`${base}/stream/${(await (await fetch(`${base}/streams`)).json()).streams[0].stream_id}`);
  const { page, context, problems } = await openPage(browser, base);
  await page.goto(`${base}/`);
  await page.locator("#conn[data-state='live']").waitFor({ timeout: DEADLINE_MS });
  await page.locator("nav [data-panel='providers']:not([hidden]) a").click({ timeout: DEADLINE_MS });
  await eventually(async () => (await text(page, "#providers-body tr")).replace(/\s+/g, " ").trim() === "acme 1 2",
    "the providers panel to show acme with 1 of 2 slots in use");
  await page.locator("nav [data-panel='playlists']:not([hidden]) a").click();
  await eventually(async () => (await text(page, "#playlists-body tr")).startsWith("home"), "the channel list row");
  if (!(await text(page, "#playlists-body tr")).includes("2")) throw new Error("the list's channel count is not shown");
  const refreshed = page.waitForResponse((r) => r.url().endsWith(`/playlists/${id}/refresh`) && r.request().method() === "POST");
  await page.getByRole("button", { name: "Refresh home" }).click();
  if ((await refreshed).status() !== 200) throw new Error("Refresh did not succeed");
  await axeCheck(page, "channel lists");
  await context.close();
  if (problems.length) throw new Error(problems.join("\n"));
}

async function unreachable(browser) {
  const base = await startProxy({});
  const { page, context, problems } = await openPage(browser, base);
  await page.goto(`${base}/`);
  await page.locator("#conn[data-state='live']").waitFor({ timeout: DEADLINE_MS });
  await page.locator("#streams-empty").count();
  // Stop the proxy: the page says it is unreachable and keeps retrying.
  cleanups.pop()();
  await page.locator("#conn:has-text('Server unreachable, retrying')").waitFor({ timeout: DEADLINE_MS });
  await context.close();
  // Failed fetches to a stopped server are expected console noise here.
  const other = problems.filter((p) => !/ERR_CONNECTION_REFUSED|Failed to load resource|network error|Failed to fetch/.test(p));
  if (other.length) throw new Error(other.join("\n"));
}

async function run(name, f) {
  const started = Date.now();
  try {
    await f();
    log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    failures += 1;
    log(`FAIL ${name}: ${e.stack || e}`);
  }
}

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
try {
  const origin = await startOrigin();
  await run("dashboard scenario, no token", () => scenario(browser, origin, { shots: true }));
  await run("dashboard scenario, API_TOKEN", () => scenario(browser, origin, { token: "s3cret-ui-test" }));
  await run("ROOT_PATH, phone width, docs page", () => rootPathAndPhone(browser, origin));
  await run("providers and channel lists panels", () => providersAndLists(browser, origin));
  await run("server unreachable", () => unreachable(browser));
} finally {
  await browser.close();
  for (const c of cleanups.reverse()) {
    try { c(); } catch { /* already gone */ }
  }
}
log(failures ? `${failures} failed` : `all passed; screenshots in ${SHOTS}`);
process.exit(failures ? 1 : 0);
