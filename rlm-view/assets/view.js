// rlm view: draws the trace data embedded in this page. No network, no dependencies.
"use strict";
(function () {
  var errors = document.getElementById("js-errors");
  function reportError(message) {
    errors.hidden = false;
    errors.textContent += message + "\n";
    document.body.setAttribute("data-errors", "yes");
  }
  window.addEventListener("error", function (e) {
    reportError("Error: " + e.message + (e.lineno ? " (line " + e.lineno + ")" : ""));
  });
  window.addEventListener("unhandledrejection", function (e) {
    reportError("Unhandled: " + e.reason);
  });

  var D = JSON.parse(document.getElementById("trace-data").textContent);
  var S = D.summary;
  var C = D.calls;
  var N = C.id.length;

  function $(id) { return document.getElementById(id); }
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) for (var k in attrs) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "html") node.innerHTML = attrs[k];
      else node.setAttribute(k, attrs[k]);
    }
    (children || []).forEach(function (c) { if (c) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return node;
  }
  function esc(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }
  function int(n) { return Number(n || 0).toLocaleString("en-US"); }
  function ms(n) {
    n = Number(n || 0);
    if (n < 1000) return n + " ms";
    if (n < 60000) return (n / 1000).toFixed(2) + " s";
    var s = Math.floor(n / 1000);
    return Math.floor(s / 60) + " min " + String(s % 60).padStart(2, "0") + " s";
  }
  function usd(x) {
    x = Number(x || 0);
    if (x === 0) return "$0";
    if (x < 0.01) return "$" + x.toFixed(6);
    return "$" + x.toFixed(4);
  }

  // ---- notices
  D.notices.forEach(function (n) { $("notices").appendChild(el("li", { text: n })); });
  $("stamp").textContent = int(N) + " sub-calls · " + int(D.runs.length) + (D.runs.length === 1 ? " run" : " runs");

  // ---- summary
  function row(label, value, id, cls) {
    var td = el("td", { text: value });
    if (id) td.id = id;
    if (cls) td.className = cls;
    return el("tr", null, [el("th", { text: label }), td]);
  }
  function childModels() {
    var seen = {};
    D.runs.forEach(function (r) { if (r.depth > 0 && r.root_model) seen[r.root_model] = 1; });
    var names = Object.keys(seen);
    return names.length ? ", children " + names.join(", ") : "";
  }
  var left = el("div", { "class": "box" }, [
    el("div", { "class": "muted", text: "Query" }),
    el("div", { "class": "answer", id: "sum-query", text: S.query || "(no run_start event)" }),
    el("div", { "class": "muted", text: "Answer", style: "margin-top:10px" }),
    el("div", { "class": "answer", id: "sum-answer", text: S.answer == null ? "(none)" : (S.answer === "" ? "(empty: no answer)" : S.answer) })
  ]);
  if (S.error) left.appendChild(el("p", { "class": "bad", text: "Run error: " + S.error }));
  if (S.warnings.length) {
    var ul = el("ul", { id: "sum-warnings" });
    S.warnings.forEach(function (w) { ul.appendChild(el("li", { "class": "warn", text: w })); });
    left.appendChild(el("div", { "class": "muted", text: "Warnings", style: "margin-top:10px" }));
    left.appendChild(ul);
  }
  var facts = el("table", null, [
    row("Stopped", S.stopped || "(did not finish)", "sum-stopped", S.stopped && S.stopped !== "final" ? "warn" : ""),
    row("Models", "root " + (S.root_model || "?") + ", sub " + (S.sub_model || "?") + childModels(), "sum-models"),
    row("Turns", int(S.turns), "sum-turns"),
    row("Sub-calls", int(S.sub_calls), "sum-subcalls"),
    row("Failed", int(S.failed), "sum-failed", S.failed ? "bad" : ""),
    row("Cached", int(S.cached), "sum-cached"),
    row("Unfinished", int(S.unfinished), "sum-unfinished"),
    row("Peak in flight", int(S.peak_in_flight) + (S.peak_in_flight ? " at " + ms(S.peak_at_ms) : ""), "sum-peak"),
    row("Wall time", ms(S.elapsed_ms), "sum-elapsed"),
    row("Runs", int(S.runs) + (S.max_depth ? " (depth " + S.max_depth + ")" : ""), "sum-runs"),
    row("Cost", usd(S.cost.total) + (S.cost.unpriced.length ? " + unpriced: " + S.cost.unpriced.join(", ") : ""), "sum-cost")
  ]);
  var usage = el("table", { id: "usage" }, [el("tr", null, [
    el("th", { text: "Model" }), el("th", { "class": "num", text: "Calls" }), el("th", { "class": "num", text: "Failed" }),
    el("th", { "class": "num", text: "Prompt" }), el("th", { "class": "num", text: "Cached" }),
    el("th", { "class": "num", text: "Completion" }), el("th", { "class": "num", text: "Cost" })])]);
  Object.keys(S.usage).forEach(function (model) {
    var u = S.usage[model];
    var cost = S.cost.by_model[model];
    var tr = el("tr", { "class": "usage-row", "data-model": model }, [
      el("td", { text: model }), el("td", { "class": "num", text: int(u.calls) }), el("td", { "class": "num", text: int(u.failed) }),
      el("td", { "class": "num", text: int(u.prompt_tokens) }), el("td", { "class": "num", text: int(u.cached_tokens) }),
      el("td", { "class": "num", text: int(u.completion_tokens) }),
      el("td", { "class": "num cost", text: cost == null ? "unpriced" : usd(cost) })]);
    usage.appendChild(tr);
  });
  var right = el("div", { "class": "box" }, [facts, el("h2", { text: "Tokens and cost" }), usage,
    el("p", { "class": "muted", text: (S.usage_source === "final" ? "Usage from the final event. " : "Usage added up from the events (no final event). ") +
      (S.cost_source === "trace" ? "Cost as the run reported it." : "Cost from the built-in or given prices (the trace has none).") })]);
  $("summary").appendChild(el("div", { "class": "grid" }, [left, right]));

  // ---- timeline
  var wall = Math.max(1, D.wall_ms);
  var rowH = N <= 300 ? 16 : (N <= 5000 ? 6 : 3);
  var gutter = rowH >= 16 ? 120 : 8;
  var colors = ["#3b7dd8", "#d64545", "#9aa3af", "#2f9e6f"];
  var statusName = ["ok", "failed", "unfinished", "cached"];
  var timeline = $("timeline");
  var canvas = $("rows");
  var curve = $("curve");
  timeline.setAttribute("data-rows", String(N));
  $("timeline-spacer").style.height = Math.max(1, N * rowH) + "px";
  if (N === 0) timeline.style.height = "40px";
  var batchCount = D.batches.filter(function (b) { return b.batch >= 0; }).length;
  $("timeline-head").appendChild(el("p", { id: "peak", text: int(N) + " sub-calls in " + int(batchCount) + (batchCount === 1 ? " batch" : " batches") +
    " and " + int(D.batches.length - batchCount) + (D.batches.length - batchCount === 1 ? " single call" : " single calls") + " · peak " + int(S.peak_in_flight) + " in flight" +
    (S.peak_in_flight ? " at " + ms(S.peak_at_ms) : "") + " · wall " + ms(D.wall_ms) +
    (N > 5000 ? " · one pixel row per call: scroll, or hover for details" : "") }));
  var legend = $("legend");
  [["ok", 0], ["failed", 1], ["cached", 3], ["unfinished", 2]].forEach(function (p) {
    legend.appendChild(el("span", null, [el("i", { style: "background:" + colors[p[1]] }), p[0]]));
  });
  legend.appendChild(el("span", null, [el("i", { style: "background:#c9d3e0;height:2px" }), "waiting for a slot in its batch"]));

  function xOf(t, width) { return gutter + (t / wall) * (width - gutter - 8); }
  var batchStarts = {};
  D.batches.forEach(function (b, i) { batchStarts[b.first_row] = i; });

  function drawCurve() {
    var ratio = window.devicePixelRatio || 1;
    var width = curve.clientWidth, height = 70;
    curve.width = width * ratio; curve.height = height * ratio;
    var g = curve.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    var peak = Math.max(1, S.peak_in_flight);
    var n = D.concurrency.length;
    g.fillStyle = "#b8cdea";
    for (var i = 0; i < n; i++) {
      var v = D.concurrency[i];
      if (!v) continue;
      var x0 = xOf(i / n * wall, width), x1 = xOf((i + 1) / n * wall, width);
      var h = (v / peak) * (height - 18);
      g.fillRect(x0, height - 14 - h, Math.max(1, x1 - x0), h);
    }
    g.fillStyle = "#6b7380"; g.font = "11px system-ui, sans-serif";
    g.fillText("in flight (peak " + peak + ")", 4, 11);
    for (var k = 0; k <= 5; k++) {
      var t = wall * k / 5, x = xOf(t, width);
      g.fillRect(x, height - 14, 1, 4);
      g.fillText(ms(Math.round(t)), Math.min(x + 2, width - 50), height - 2);
    }
  }

  var drawn = 0;
  function drawRows() {
    var ratio = window.devicePixelRatio || 1;
    var width = timeline.clientWidth, height = timeline.clientHeight;
    var top = timeline.scrollTop;
    canvas.style.top = top + "px";
    canvas.style.width = width + "px"; canvas.style.height = height + "px";
    canvas.width = width * ratio; canvas.height = height * ratio;
    var g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    var first = Math.max(0, Math.floor(top / rowH));
    var last = Math.min(N, Math.ceil((top + height) / rowH) + 1);
    g.font = "11px system-ui, sans-serif";
    drawn = 0;
    for (var r = first; r < last; r++) {
      var y = r * rowH - top;
      var b = batchStarts[r];
      if (b !== undefined && r > 0) {
        g.fillStyle = "#d9dee6"; g.fillRect(0, y, width, 1);
      }
      var q = xOf(C.queued[r], width), s = xOf(C.start[r], width), e = xOf(C.end[r], width);
      var barH = Math.max(1, rowH - (rowH >= 6 ? 3 : 1));
      if (s - q >= 1) { g.fillStyle = "#c9d3e0"; g.fillRect(q, y + barH / 2, s - q, 1); }
      g.fillStyle = colors[C.status[r]] || "#000";
      g.fillRect(s, y + 1, Math.max(1, e - s), barH);
      if (rowH >= 16) {
        g.fillStyle = "#6b7380";
        var label = C.batch[r] >= 0 ? "b" + C.batch[r] + "[" + C.index[r] + "] #" + C.id[r] : "query #" + C.id[r];
        if (D.runs.length > 1) label = D.runs[C.run[r]].id + " " + label;
        g.fillText(label, 4, y + 12);
      }
      drawn++;
    }
    timeline.setAttribute("data-drawn", String(drawn));
  }
  var pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    window.requestAnimationFrame(function () { pending = false; drawRows(); });
  }
  timeline.addEventListener("scroll", schedule);
  window.addEventListener("resize", function () { drawCurve(); schedule(); });

  var tip = $("tip");
  timeline.addEventListener("mousemove", function (ev) {
    var rect = timeline.getBoundingClientRect();
    var r = Math.floor((ev.clientY - rect.top + timeline.scrollTop) / rowH);
    if (r < 0 || r >= N) { tip.hidden = true; return; }
    var run = D.runs[C.run[r]];
    var b = D.batches[batchOf(r)];
    var lines = [
      "sub-call #" + C.id[r] + (C.batch[r] >= 0 ? " · batch " + C.batch[r] + " item " + C.index[r] : " · llm_query") +
        (D.runs.length > 1 ? " · run " + run.id : "") + " · turn " + C.turn[r],
      statusName[C.status[r]] + " · " + D.models[C.model[r]] + " · " + int(C.tokens[r]) + " tokens",
      "started " + ms(C.start[r]) + ", took " + ms(C.end[r] - C.start[r]) +
        (C.start[r] > C.queued[r] ? ", waited " + ms(C.start[r] - C.queued[r]) + " for a slot" : "")
    ];
    if (b && b.batch >= 0) lines.push("batch of " + int(b.total) + ", at most " + int(b.max_concurrent) + " at once, " + int(b.failed) + " failed");
    if (C.prompt[r]) lines.push("prompt: " + C.prompt[r]);
    if (C.response[r]) lines.push("reply: " + C.response[r]);
    tip.textContent = lines.join("\n");
    tip.hidden = false;
    tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - 540) + "px";
    tip.style.top = (ev.clientY + 14) + "px";
  });
  timeline.addEventListener("mouseleave", function () { tip.hidden = true; });
  function batchOf(r) {
    var lo = 0, hi = D.batches.length - 1;
    while (lo < hi) {
      var mid = (lo + hi + 1) >> 1;
      if (D.batches[mid].first_row <= r) lo = mid; else hi = mid - 1;
    }
    return lo;
  }

  // ---- turns and runs
  var KW = {};
  "let const fn if else for in while loop do return break continue true false switch throw try catch this private".split(" ").forEach(function (k) { KW[k] = 1; });
  var FN = {};
  "llm_query llm_batch llm_query_batched rlm_query rlm_batch FINAL FINAL_VAR SHOW_VARS print chunk chunk_lines grep regex_find_all regex_captures count_matches parse_json join len split map filter reduce sort_by sorted_by fmt".split(" ").forEach(function (k) { FN[k] = 1; });
  var TOKEN = /(\/\/[^\n]*|\/\*[\s\S]*?\*\/)|("(?:[^"\\\n]|\\.)*"|`[^`]*`|'(?:[^'\\]|\\.)')|(\b\d[\d_]*(?:\.\d+)?\b)|([A-Za-z_]\w*)/g;
  function highlight(code) {
    var out = "", last = 0, m;
    TOKEN.lastIndex = 0;
    while ((m = TOKEN.exec(code))) {
      out += esc(code.slice(last, m.index));
      if (m[1]) out += '<span class="hl-com">' + esc(m[1]) + "</span>";
      else if (m[2]) out += '<span class="hl-str">' + esc(m[2]) + "</span>";
      else if (m[3]) out += '<span class="hl-num">' + esc(m[3]) + "</span>";
      else if (KW[m[4]]) out += '<span class="hl-kw">' + m[4] + "</span>";
      else if (FN[m[4]]) out += '<span class="hl-fn">' + m[4] + "</span>";
      else out += esc(m[4]);
      last = TOKEN.lastIndex;
    }
    return out + esc(code.slice(last));
  }
  // Texts longer than this show their start and a button for the whole (as plain text):
  // splitting, highlighting and laying out megabytes at once froze the page.
  var CLIP = 65536;
  function clipped(text, render) {
    text = text || "";
    if (text.length <= CLIP) return render(text);
    var box = el("div", { "class": "clipped" });
    render(text.slice(0, CLIP)).forEach(function (n) { box.appendChild(n); });
    var more = el("button", { type: "button", "class": "more",
      text: "Show all " + int(text.length) + " characters (cut at " + int(CLIP) + ")" });
    more.addEventListener("click", function () {
      box.textContent = "";
      box.appendChild(el("pre", { "class": "out", text: text }));
    });
    box.appendChild(more);
    return [box];
  }
  function textNodes(tag, cls) {
    return function (text) { return [el(tag, { "class": cls, text: text })]; };
  }
  // A reply as prose and fenced code blocks (``` or ~~~, closed by a fence at least as long).
  function replyNodes(text) {
    var nodes = [], prose = [], code = null, fence = null, info = "";
    function flushProse() { if (prose.join("").trim()) nodes.push(el("div", { "class": "prose", text: prose.join("\n") })); prose = []; }
    text.split("\n").forEach(function (line) {
      var t = line.trim();
      if (code === null) {
        var m = /^(`{3,}|~{3,})\s*([\w+-]*)/.exec(t);
        if (m) { flushProse(); code = []; fence = m[1]; info = m[2]; return; }
        prose.push(line);
      } else if (t.length >= fence.length && t === fence[0].repeat(t.length)) {
        nodes.push(codeNode(code.join("\n"), info));
        code = null;
      } else code.push(line);
    });
    if (code !== null) nodes.push(codeNode(code.join("\n"), info + " (not closed)"));
    flushProse();
    return nodes;
  }
  function codeNode(code, info) {
    var pre = el("pre", { "class": "code", title: info || "code" });
    pre.innerHTML = highlight(code);
    return pre;
  }
  function turnNode(turn, open) {
    var tags = [];
    if (turn.held) tags.push(el("span", { "class": "tag warn", text: "answer held for confirmation" }));
    if (turn.final_refused) tags.push(el("span", { "class": "tag warn", text: "FINAL not accepted: the run went on" }));
    if (turn.blocks.some(function (b) { return b.error; })) tags.push(el("span", { "class": "tag bad", text: "error" }));
    if (turn.reply == null) tags.push(el("span", { "class": "tag", text: "no reply recorded" }));
    var head = el("summary", null, ["Turn " + turn.turn + " · " + int(turn.prompt_tokens) + " + " + int(turn.completion_tokens) +
      " tokens · " + ms(turn.elapsed_ms) + " · " + turn.blocks.length + (turn.blocks.length === 1 ? " block" : " blocks") + " · at " + ms(turn.t_ms)].concat(tags));
    var body = el("div", { "class": "body" });
    var details = el("details", { "class": "turn", "data-turn": String(turn.turn) }, [head, body]);
    var filled = false;
    function fill() {
      if (filled) return;
      filled = true;
      body.appendChild(el("div", { "class": "muted", text: "The root model wrote:" }));
      clipped(turn.reply, replyNodes).forEach(function (n) { body.appendChild(n); });
      if (turn.blocks.length) body.appendChild(el("div", { "class": "muted", text: "It was shown back:" }));
      turn.blocks.forEach(function (b, i) {
        body.appendChild(el("div", { "class": "muted", text: "Block " + (i + 1) + (b.error ? " failed" : " output") + " (" + ms(b.elapsed_ms) + ")" }));
        clipped(b.output || (b.error ? b.error : "(no output)"), textNodes("pre", b.error ? "out err" : "out"))
          .forEach(function (n) { body.appendChild(n); });
      });
    }
    details.addEventListener("toggle", function () { if (details.open) fill(); });
    if (open) { details.open = true; fill(); }
    return details;
  }
  function runNode(run, children, open) {
    var tags = [];
    if (run.stopped && run.stopped !== "final") tags.push(el("span", { "class": "tag warn", text: run.stopped }));
    if (!run.stopped) tags.push(el("span", { "class": "tag warn", text: run.error ? "failed" : "did not finish" }));
    var head = el("summary", null, ["Run " + run.id + " · depth " + run.depth + " · " + (run.root_model || "?") + " · " + run.turns.length +
      (run.turns.length === 1 ? " turn" : " turns") + " · " + int(run.sub_calls) + " sub-calls" + (run.failed ? " (" + int(run.failed) + " failed)" : "") +
      (children.length ? " · " + children.length + (children.length === 1 ? " child" : " children") : "")].concat(tags));
    var body = el("div", { "class": "body" });
    var details = el("details", { "class": "run", "data-run": run.id, "data-depth": String(run.depth) }, [head, body]);
    var filled = false;
    function fill() {
      if (filled) return;
      filled = true;
      if (run.depth > 0) clipped("Query: " + run.query, textNodes("p", "prose")).forEach(function (n) { body.appendChild(n); });
      var many = run.turns.length > 12;
      run.turns.forEach(function (t) { body.appendChild(turnNode(t, !many)); });
      if (run.error) body.appendChild(el("pre", { "class": "err", text: run.error }));
      if (run.depth > 0 && run.answer != null) clipped("Answer: " + run.answer, textNodes("p", "prose")).forEach(function (n) { body.appendChild(n); });
      children.forEach(function (c) { body.appendChild(runNode(c.run, c.children, false)); });
    }
    details.addEventListener("toggle", function () { if (details.open) fill(); });
    if (open) { details.open = true; fill(); }
    return details;
  }
  var byId = {}, roots = [];
  D.runs.forEach(function (r) { byId[r.id] = { run: r, children: [] }; });
  D.runs.forEach(function (r) {
    var parent = r.parent != null ? byId[r.parent] : null;
    if (parent) parent.children.push(byId[r.id]); else roots.push(byId[r.id]);
  });
  // Children in id order: 0.2 before 0.10.
  function byPath(a, b) {
    var x = a.run.id.split("."), y = b.run.id.split(".");
    for (var i = 0; i < Math.max(x.length, y.length); i++) {
      var d = (Number(x[i]) || 0) - (Number(y[i]) || 0);
      if (d) return d;
    }
    return 0;
  }
  Object.keys(byId).forEach(function (id) { byId[id].children.sort(byPath); });
  roots.sort(byPath);
  if (D.runs.length > 1) $("runs-title").textContent = "Runs (recursion tree: " + D.runs.length + " runs, depth " + S.max_depth + ")";
  roots.forEach(function (r) { $("runs").appendChild(runNode(r.run, r.children, true)); });

  drawCurve();
  drawRows();
  document.body.setAttribute("data-render-ms", String(Math.round(performance.now())));
  document.body.setAttribute("data-rendered", "ok");
})();
