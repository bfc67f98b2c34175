// /docs: every operation of openapi.json, with a form to try it on this server.
import * as api from "./api.js";

const $ = (id) => document.getElementById(id);
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

function refName(schema) {
  return schema && schema.$ref ? schema.$ref.split("/").pop() : null;
}

function bodyExample(doc, schema) {
  const name = refName(schema);
  const s = name ? doc.components.schemas[name] : schema;
  if (!s || !s.properties) return "{}";
  const out = {};
  for (const k of s.required || []) out[k] = "";
  return JSON.stringify(out, null, 2);
}

function operation(doc, path, method, op, n) {
  const params = (op.parameters || []).map((p) => {
    const id = `p${n}-${p.name}`;
    return { p, input: el("input", { id, name: p.name, type: "text" }), id };
  });
  const body = op.requestBody
    ? el("textarea", { id: `b${n}`, rows: "6" })
    : null;
  if (body) {
    const content = op.requestBody.content || {};
    const json = content["application/json"];
    body.value = json ? bodyExample(doc, json.schema) : "";
  }
  const out = el("pre", { "aria-live": "polite" });
  const form = el("form");
  for (const { p, input, id } of params) {
    form.append(el("label", { for: id, text: `${p.name} (${p.in}${p.required ? ", required" : ""})` }), input);
    if (p.description) form.append(el("p", { class: "hint", text: p.description }));
  }
  if (body) form.append(el("label", { for: `b${n}`, text: "Request body (JSON)" }), body);
  const streaming = op.responses && op.responses["200"] && op.responses["200"].content &&
    op.responses["200"].content["text/event-stream"];
  form.append(el("div", { class: "buttons" }, el("button", { type: "submit", text: "Try it" })), out);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    api.setToken($("doc-token").value.trim());
    let url = path.replace(/^\//, "");
    const query = new URLSearchParams();
    for (const { p, input } of params) {
      if (p.in === "path") url = url.replace(`{${p.name}}`, encodeURIComponent(input.value));
      else if (p.in === "query" && input.value) query.set(p.name, input.value);
    }
    if ([...query].length) url += `?${query}`;
    if (streaming) {
      out.textContent = "";
      const stop = new AbortController();
      setTimeout(() => stop.abort(), 10000);
      try {
        await api.readEvents(url, (m) => { out.textContent += `${m.type}: ${JSON.stringify(m.data)}\n`; }, stop.signal);
      } catch (err) {
        if (!stop.signal.aborted) out.textContent += `${err.message}\n`;
      }
      out.textContent += "(read for 10 s)";
      return;
    }
    const headers = { Accept: "application/json, */*" };
    if (api.token()) headers["X-API-Token"] = api.token();
    let payload;
    if (body && body.value.trim()) {
      headers["Content-Type"] = "application/json";
      payload = body.value;
    }
    try {
      const res = await fetch(url, { method: method.toUpperCase(), headers, body: payload, redirect: "manual" });
      const text = await res.text();
      out.textContent = `${res.status} ${res.statusText}\n${text.slice(0, 20000)}`;
    } catch (err) {
      out.textContent = `Failed: ${err.message}`;
    }
  });
  const responses = el("ul");
  for (const [status, r] of Object.entries(op.responses || {})) {
    responses.append(el("li", { text: `${status}: ${r.description || ""}` }));
  }
  return el("details", {},
    el("summary", {}, el("span", { class: "method", text: method.toUpperCase() }), el("code", { text: path }),
      op.summary ? ` ${op.summary}` : ""),
    op.description ? el("p", { text: op.description }) : "",
    el("h4", { text: "Responses" }), responses, form);
}

async function main() {
  $("doc-token").value = api.token();
  let doc;
  try {
    doc = await api.get("openapi.json");
  } catch (e) {
    $("ops").replaceChildren(el("p", { class: "error", text: `Cannot load openapi.json: ${e.message}` }));
    return;
  }
  $("doc-intro").textContent = doc.info.description || "";
  const byTag = new Map();
  let n = 0;
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      if (!["get", "post", "put", "patch", "delete"].includes(method)) continue;
      const tag = (op.tags && op.tags[0]) || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operation(doc, path, method, op, n++));
    }
  }
  $("ops").replaceChildren(...[...byTag].map(([tag, ops]) => el("section", {}, el("h2", { text: tag }), ...ops)));
}
main();
