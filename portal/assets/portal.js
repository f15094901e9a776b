// The try-it console: sends an operation's request from the browser to the API's server
// with the key typed in, and shows status, headers and body. No external script, no eval.
"use strict";
document.addEventListener("submit", async (ev) => {
  const form = ev.target;
  if (!form.classList || !form.classList.contains("tryit")) return;
  ev.preventDefault();
  const out = form.querySelector(".tryit-result");
  const server = (document.getElementById("tryit-server") || {}).value || "";
  const keyInput = document.getElementById("tryit-key");
  const key = keyInput ? keyInput.value : "";
  let path = form.dataset.path;
  const query = new URLSearchParams();
  const headers = new Headers();
  let body;
  for (const input of form.querySelectorAll("input[data-in], textarea")) {
    if (input.name === "__body") {
      if (input.value !== "") { body = input.value; headers.set("Content-Type", input.dataset.type || "application/json"); }
      continue;
    }
    if (input.value === "") continue;
    switch (input.dataset.in) {
      case "path": path = path.split("{" + input.name + "}").join(encodeURIComponent(input.value)); break;
      case "query": query.append(input.name, input.value); break;
      case "header": headers.set(input.name, input.value); break;
    }
  }
  if (key) {
    const where = keyInput.dataset.keyIn, name = keyInput.dataset.keyName, scheme = keyInput.dataset.keyScheme;
    if (where === "query") query.append(name, key);
    else headers.set(name, scheme ? scheme + " " + key : key);
  }
  const qs = query.toString();
  out.hidden = false;
  // The key goes to the chosen server only: a spec path cannot lead it to another host.
  let base, url;
  try {
    base = new URL(server);
    if (!path.startsWith("/") || path.startsWith("//") || path.includes("\\")) throw new Error("bad path");
    url = new URL(base.href.replace(/\/$/, "") + path + (qs ? "?" + qs : ""));
    if (url.origin !== base.origin) throw new Error("another origin");
  } catch (e) {
    out.querySelector(".status").textContent = "Refused: " + path + " is not a path on " + server + " (" + e.message + ")";
    return;
  }
  url = url.href;
  out.querySelector(".status").textContent = form.dataset.method + " " + url + " …";
  out.querySelector(".headers").textContent = "";
  out.querySelector(".body").textContent = "";
  try {
    const r = await fetch(url, { method: form.dataset.method, headers, body, mode: "cors", credentials: "omit" });
    out.querySelector(".status").textContent = r.status + " " + r.statusText;
    const lines = [];
    r.headers.forEach((v, k) => lines.push(k + ": " + v));
    out.querySelector(".headers").textContent = lines.join("\n");
    const text = await r.text();
    let shown = text;
    try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* not JSON */ }
    out.querySelector(".body").textContent = shown;
  } catch (e) {
    out.querySelector(".status").textContent = "The request failed: " + e.message + " (is the server reachable from this browser, and does the API allow this origin in its cors?)";
  }
});

// "Use a temporary key": the portal issues a key valid one hour for an application of the
// user subscribed to this API, and puts it in the console.
document.addEventListener("click", async (ev) => {
  if (!ev.target || ev.target.id !== "console-key") return;
  const box = ev.target.closest(".tryit-key");
  const note = document.getElementById("console-key-note");
  note.hidden = false;
  try {
    const r = await fetch("/api/console-key", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": box.dataset.csrf },
      body: JSON.stringify({ api: box.dataset.api }),
      credentials: "same-origin",
    });
    const j = await r.json();
    if (!r.ok) { note.textContent = j.error || ("HTTP " + r.status); return; }
    document.getElementById("tryit-key").value = j.key;
    note.textContent = "A key of " + j.application + ", valid one hour, is in the console.";
  } catch (e) {
    note.textContent = "No temporary key: " + e.message;
  }
});
