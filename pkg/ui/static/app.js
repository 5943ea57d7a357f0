// klab ui: draws the lab's SVG (rendered by klab), redraws it when the
// server pushes a new version, shows objects on click and animates a
// journey over the picture. No framework, no network beyond this server.
"use strict";
const $ = (s, el) => (el || document).querySelector(s);
const $$ = (s, el) => Array.from((el || document).querySelectorAll(s));
window.klab = { version: -1, drawMs: null, draws: 0, visited: [], journeyDone: false };

function esc(s) { const d = document.createElement("div"); d.textContent = s; return d.innerHTML; }

async function get(url) {
  const r = await fetch(url, { credentials: "same-origin" });
  if (!r.ok) throw new Error(await r.text());
  return r.json();
}

let selected = null;
async function draw() {
  const t0 = performance.now();
  const [d, svg] = await Promise.all([get("/api/topology"), fetch("/api/svg", { credentials: "same-origin" }).then(r => {
    if (!r.ok) throw new Error("the picture could not be read");
    return r.text();
  })]);
  $("#picture").innerHTML = svg;
  window.klab.version = d.version;
  window.klab.topology = d.topology;
  $("#lab").textContent = "lab " + d.topology.lab + " (" + d.topology.backend + ")";
  fillSources(d.topology);
  $$("#picture [data-kind]").forEach(el => el.addEventListener("click", ev => {
    ev.stopPropagation();
    show(el.dataset.name, el);
  }));
  if (selected) { const el = $(`#picture [data-name="${CSS.escape(selected)}"][data-kind]`); if (el) el.classList.add("selected"); }
  window.klab.draws++;
  const ms = performance.now() - t0;
  if (window.klab.drawMs === null) window.klab.drawMs = ms;
  window.klab.lastDrawMs = ms;
  $("#status").textContent = d.problem ? "the lab cannot be read: " + d.problem : "live · version " + d.version + " · drawn in " + ms.toFixed(0) + " ms";
}

function fillSources(t) {
  const from = $("#from"), keep = from.value;
  const names = [], targets = [];
  for (const n of t.nodes) {
    names.push(n.name);
    for (const p of n.pods) names.push(p.name);
  }
  for (const s of t.services || []) for (const p of s.ports || []) targets.push(s.name + ":" + parseInt(p, 10));
  from.innerHTML = names.map(n => `<option>${esc(n)}</option>`).join("");
  if (names.includes(keep)) from.value = keep;
  $("#targets").innerHTML = names.concat(targets, ["external"]).map(n => `<option value="${esc(n)}">`).join("");
}

async function show(name, el) {
  $$("#picture .selected").forEach(e => e.classList.remove("selected"));
  if (el) el.classList.add("selected");
  selected = name;
  const box = $("#object");
  box.innerHTML = "<p class=note>reading " + esc(name) + "…</p>";
  try {
    const o = await get("/api/object?name=" + encodeURIComponent(name));
    let h = `<h2 id="object-name">${esc(o.name)}</h2><p class=note>${esc(o.ns)}</p>`;
    for (const k of o.order) {
      const lines = o.sections[k] || [];
      h += `<h3>${esc(k)}</h3><pre data-section="${esc(k)}">${esc(lines.join("\n") || "(none)")}</pre>`;
    }
    box.innerHTML = h;
  } catch (e) { box.innerHTML = "<p>" + esc(e.message) + "</p>"; }
}

function centre(point) {
  const el = $(`#picture svg [data-point="${CSS.escape(point)}"] rect`) || $(`#picture svg [data-point="${CSS.escape(point)}"]`);
  if (!el) return null;
  const b = el.getBBox();
  return { x: b.x + b.width / 2, y: b.y + b.height / 2, g: el.closest("g") };
}

function sleep(ms) { return new Promise(r => setTimeout(r, ms)); }

async function animate(j) {
  const svg = $("#picture svg");
  let dot = $("#packet");
  if (!dot) {
    dot = document.createElementNS("http://www.w3.org/2000/svg", "circle");
    dot.id = "packet"; dot.setAttribute("r", "8");
    svg.appendChild(dot);
  }
  const items = $$("#journey li");
  const hops = j.hops.concat(j.reply || []);
  let prev = null;
  for (let i = 0; i < hops.length; i++) {
    const c = centre(hops[i].point);
    items.forEach(li => li.classList.remove("active"));
    if (items[i]) { items[i].classList.add("active"); items[i].scrollIntoView({ block: "nearest" }); }
    $$("#picture .lit").forEach(e => e.classList.remove("lit"));
    if (c) {
      if (c.g) c.g.classList.add("lit");
      const from = prev || c, steps = 12;
      for (let s = 1; s <= steps; s++) {
        dot.setAttribute("cx", from.x + (c.x - from.x) * s / steps);
        dot.setAttribute("cy", from.y + (c.y - from.y) * s / steps);
        await sleep(16);
      }
      prev = c;
    }
    window.klab.visited.push(hops[i].point);
    await sleep(180);
  }
  window.klab.journeyDone = true;
}

$("#journey-form").addEventListener("submit", async ev => {
  ev.preventDefault();
  const from = $("#from").value, target = $("#target").value.trim();
  if (!from || !target) return;
  window.klab.visited = []; window.klab.journeyDone = false;
  const box = $("#journey");
  box.innerHTML = "<p class=note>probing " + esc(from) + " → " + esc(target) + "…</p>";
  $("#run").disabled = true;
  try {
    const r = await fetch("/api/journey", { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify({ from, target }) });
    if (!r.ok) throw new Error(await r.text());
    const j = await r.json();
    window.klab.journey = j;
    const li = (h, kind) => `<li data-point="${esc(h.point)}" data-dir="${kind}"><b>${esc(h.point)}</b> ${esc(h.packet)}` +
      (h.outer ? `<span class=chg>outer ${esc(h.outer)}</span>` : "") +
      (h.changes || []).map(c => `<span class=chg>${esc(c)}</span>`).join("") +
      (h.rules || []).map(r => `<span class="chg rule">by ${esc(r)}</span>`).join("") + "</li>";
    box.innerHTML = `<h2>${esc(from)} → ${esc(target)}: ${esc(j.probe)}</h2><p class=note>${esc(j.describe || "")}</p>` +
      `<ol id="hops">${j.hops.map(h => li(h, "probe")).join("")}${(j.reply || []).map(h => li(h, "reply")).join("")}</ol>` +
      ((j.verdicts || []).length ? `<pre>${esc(j.verdicts.join("\n"))}</pre>` : "");
    await animate(j);
  } catch (e) { box.innerHTML = "<p id=journey-error>" + esc(e.message) + "</p>"; window.klab.journeyDone = true; }
  $("#run").disabled = false;
});

function connect() {
  const es = new EventSource("/api/events");
  es.addEventListener("topology", ev => {
    const v = parseInt(ev.data, 10);
    if (v !== window.klab.version) draw().catch(e => { $("#status").textContent = e.message; });
  });
  es.onerror = () => { $("#status").textContent = "disconnected: is klab ui still running?"; };
}
draw().then(connect).catch(e => { $("#status").textContent = e.message; });
