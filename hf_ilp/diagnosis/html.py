"""A DiagnosisReport as one self-contained HTML page, to open offline in any browser.

    >>> write_html(report, "report.html")

The page holds a summary with a bar per cause, the cartography map of training dynamics
(Swayamdipta et al., "Dataset Cartography", arXiv:2009.10795) coloured by cause, a table of the
unlearned samples that filters by cause and sorts by confidence, and for each sample its text,
its evidence and its learning curve. Its style, script and data (JSON) are inline and its
Content-Security-Policy forbids any fetch, so it loads nothing from anywhere. The summary is
scrubbed like a model card's, and the page is refused if it would carry a token or a path of
this machine. Large runs are capped (`max_per_cause` unlearned samples per cause, the most
confident first, and at most `MAP_LEARNED_POINTS` learned points on the map); the page says
what it left out, and `samples.parquet` keeps every row.
"""

from __future__ import annotations

import json
import math
import re
from html import escape
from pathlib import Path

import numpy as np

from hf_ilp.files import write_text_atomic
from hf_ilp._rows import as_text
from hf_ilp.diagnosis.display import COLORS, evidence_text, sample_name
from hf_ilp.diagnosis.report import CAUSES, REQUIRED_COLUMNS, UNEXPLAINED

#: Learned samples drawn on the map at most (evenly spaced over the rows); the page says so.
MAP_LEARNED_POINTS = 2000

# (title, expected column, says column, diverges-at column): what a model says where it leaves the target
_COMPARISONS = (
    ("fine-tuned model", "ft_expected", "ft_says", "ft_diverges_at"),
    ("base model", "base_expected", "base_says", "base_diverges_at"),
)
_DUPLICATE_COLUMNS = ("dup_neighbor", "dup_prompt", "dup_completion")
_CURVE_COLUMNS = ("curve_step", "curve_exact", "curve_p_gold")
_SHOWN_APART = set(REQUIRED_COLUMNS) | {"row", "prompt", "completion", "stage"} | set(_DUPLICATE_COLUMNS) | set(_CURVE_COLUMNS)
_SHOWN_APART |= {c for comparison in _COMPARISONS for c in comparison[1:]}
_LIST_ITEMS = 20  # items of a list-valued evidence column written out before "..."


def write_html(report, path, max_per_cause: int = 300, title: str | None = None) -> Path:
    """Write `report` (with its per-sample rows) as one self-contained HTML file at `path`.

    At most `max_per_cause` unlearned samples of each cause are embedded, the most confident
    first. The file is written atomically (a temporary file in the same folder, then renamed).
    Returns the path.
    """
    from hf_ilp.diagnosis.privacy import assert_no_secrets, publishable

    if report.samples is None:
        raise ValueError("report has no per-sample rows (report.samples is None); load it with load_report(..., samples=True)")
    if isinstance(max_per_cause, bool) or not isinstance(max_per_cause, int) or max_per_cause < 0:
        raise ValueError(f"max_per_cause must be a non-negative integer, got {max_per_cause!r}")
    path = Path(path)
    data = page_data(publishable(report), max_per_cause=max_per_cause, title=title)
    text = _render(data)
    assert_no_secrets(text, what=f"the HTML report {path.name}")
    write_text_atomic(path, text)
    return path


def page_data(report, max_per_cause: int = 300, title: str | None = None) -> dict:
    """The JSON the page is drawn from: summary, embedded samples, map points and what was left out."""
    s = report.summary
    samples = report.samples
    cols = set(samples.column_names)
    n = len(samples)
    learned = np.asarray(samples["learned"], dtype=bool) if n else np.zeros(0, dtype=bool)
    cause = np.asarray(samples["cause"], dtype=object) if n else np.zeros(0, dtype=object)
    confidence = _floats(samples["confidence"]) if n else np.zeros(0)
    order, left_out = [], {}
    for name in CAUSES + (UNEXPLAINED,):
        idx = np.flatnonzero(~learned & (cause == name))
        idx = idx[np.argsort(-np.nan_to_num(confidence[idx], nan=-np.inf), kind="stable")]
        order.extend(int(i) for i in idx[:max_per_cause])
        if len(idx) > max_per_cause:
            left_out[name] = int(len(idx) - max_per_cause)
    by_row = s.get("ids") == "content_hash" and "row" in cols
    rows = samples.select(order) if order else []
    embedded = [_sample(k, dict(row), cols, by_row) for k, row in enumerate(rows)]

    has_map = {"cartography_confidence", "cartography_variability"} <= cols
    learned_points, n_learned = [], int(learned.sum())
    if has_map and n:
        x, y = _floats(samples["cartography_variability"]), _floats(samples["cartography_confidence"])
        idx = np.flatnonzero(learned & np.isfinite(x) & np.isfinite(y))
        if len(idx) > MAP_LEARNED_POINTS:
            idx = idx[np.linspace(0, len(idx) - 1, MAP_LEARNED_POINTS).round().astype(int)]
        learned_points = [[round(float(x[i]), 5), round(float(y[i]), 5)] for i in idx]
    n_unlearned = int(s.get("n_unlearned", int((~learned).sum())))
    return _jsonable({
        "title": title or f"ILP diagnosis: {n_unlearned} of {s.get('n_samples', n)} samples unlearned",
        "summary": {k: s.get(k) for k in ("n_samples", "n_unlearned", "learned_share", "unexplained_share", "counts", "notes", "settings", "versions", "timings")},
        "causes": list(CAUSES + (UNEXPLAINED,)),
        "colors": COLORS,
        "id_label": "row" if by_row else "id",
        "samples": embedded,
        "max_per_cause": max_per_cause,
        "left_out": left_out,
        "map": {"available": has_map, "learned": learned_points, "n_learned": n_learned},
    })


def _sample(k: int, row: dict, cols: set, by_row: bool) -> dict:
    """One embedded sample: what the table shows, and what its detail view shows."""
    sample_id = str(row["id"])
    out = {
        "k": k,
        "id": sample_id,
        "label": sample_name(row, "content_hash" if by_row else "dataset"),
        "why": evidence_text(row),
        "cause": row["cause"],
        "confidence": row["confidence"],
        "runner_up": row["runner_up"] or "",
        "runner_up_confidence": row["runner_up_confidence"],
        "row": row.get("row"),
        "stage": row.get("stage"),
        "prompt": _text(row.get("prompt")),
        "completion": _text(row.get("completion")),
        "x": row.get("cartography_variability"),
        "y": row.get("cartography_confidence"),
        "scores": {c: row[f"score_{c}"] for c in CAUSES if _present(row.get(f"score_{c}"))},
        "comparisons": [],
        "duplicate": None,
        "evidence": [],
        "curve": None,
    }
    for name, expected, says, at in _COMPARISONS:
        if _present(row.get(expected)) or _present(row.get(says)):
            out["comparisons"].append({"model": name, "expected": _text(row.get(expected)), "says": _text(row.get(says)), "at": row.get(at)})
    if any(_present(row.get(c)) for c in _DUPLICATE_COLUMNS):
        out["duplicate"] = {"id": _text(row.get("dup_neighbor")), "prompt": _text(row.get("dup_prompt")),
                            "completion": _text(row.get("dup_completion")), "similarity": row.get("dup_similarity")}
    if _present(row.get("curve_step")):
        steps = list(row["curve_step"])
        out["curve"] = {"step": steps, "p_gold": _padded(row.get("curve_p_gold"), len(steps)), "exact": _padded(row.get("curve_exact"), len(steps))}
    for col in sorted(cols - _SHOWN_APART):
        if col.startswith("score_") and col[len("score_"):] in CAUSES:
            continue
        if _present(row.get(col)):
            out["evidence"].append([col, _readable(row[col])])
    return out


# values ----------------------------------------------------------------------------------------
def _floats(values) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def _present(value) -> bool:
    """False for None, NaN/inf, '' and empty lists: the columns a sample has nothing in."""
    if value is None:
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (str, list, tuple, dict)):
        return len(value) > 0
    return True


def _text(value) -> str:
    return "" if value is None else as_text(value) if isinstance(value, (str, list)) else str(value)


def _padded(values, n: int) -> list:
    values = list(values or [])
    return (values + [None] * n)[:n]


def _readable(value) -> str:
    """An evidence value as short text: floats to 4 significant digits, lists cut after 20 items."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        items = [_readable(v) for v in value[:_LIST_ITEMS]]
        more = f", ... ({len(value)} in all)" if len(value) > _LIST_ITEMS else ""
        return "[" + ", ".join(items) + more + "]"
    if isinstance(value, dict):
        return json.dumps(_jsonable(value), sort_keys=True)
    return str(value)


def _jsonable(value):
    """Plain JSON values: NaN and inf become null, numpy scalars Python ones, unknown objects text."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


# page ------------------------------------------------------------------------------------------
def _render(data: dict) -> str:
    payload = json.dumps(data, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    # inside <script> only "</" can end the element; escaping <, > and & keeps every string intact
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    payload = payload.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    parts = {"TITLE": escape(data["title"]), "STYLE": _STYLE, "SCRIPT": _SCRIPT, "DATA": payload}
    return re.sub(r"@(TITLE|STYLE|SCRIPT|DATA)@", lambda m: parts[m.group(1)], _PAGE)




_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<link rel="icon" href="data:,">
<title>@TITLE@</title>
<style>@STYLE@</style>
</head>
<body>
<header><h1 id="title"></h1><div id="summary" class="stats"></div></header>
<noscript><p>This page draws itself with JavaScript; please enable it.</p></noscript>
<main>
<div class="main-col">
<section id="causes"><h2>Causes of the unlearned samples</h2><div id="cause-bars"></div><p id="left-out" class="muted"></p></section>
<section id="map-section"><h2>Training dynamics</h2><div id="map"></div><div id="map-legend" class="legend"></div><p id="map-note" class="muted"></p></section>
<section id="table-section">
<h2>Unlearned samples</h2>
<div class="controls"><label for="cause-filter">cause</label> <select id="cause-filter"></select> <span id="shown-count" class="muted"></span></div>
<table id="samples"><thead><tr><th id="id-header">id</th><th>cause</th><th id="sort-confidence" class="sortable" title="sort by confidence">confidence</th><th>runner-up</th><th>prompt</th></tr></thead><tbody></tbody></table>
</section>
<section id="notes-section"><h2>Notes</h2><ul id="notes"></ul></section>
<section id="about"></section>
</div>
<aside id="detail" aria-live="polite"><p class="muted">Click a row of the table or a point of the map to see that sample.</p></aside>
</main>
<script type="application/json" id="report-data">@DATA@</script>
<script>@SCRIPT@</script>
</body>
</html>
"""

_STYLE = """
:root { --fg: #1d1f23; --muted: #5f6670; --line: #dde1e6; --bg-soft: #f6f7f9; --accent: #24527a; }
* { box-sizing: border-box; }
body { margin: 0; padding: 1.25rem 1.5rem 3rem; color: var(--fg); background: #fff;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 1.45rem; margin: 0 0 .6rem; }
h2 { font-size: 1.1rem; margin: 1.6rem 0 .6rem; }
h3 { font-size: .95rem; margin: 1.1rem 0 .4rem; }
.why { margin: .6rem 0; font-style: italic; }
.muted { color: var(--muted); font-size: .9rem; }
.stats { display: flex; flex-wrap: wrap; gap: .75rem; }
.stat { background: var(--bg-soft); border: 1px solid var(--line); border-radius: 6px; padding: .45rem .8rem; min-width: 9rem; }
.stat b { display: block; font-size: 1.25rem; }
main { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 34rem); gap: 2rem; max-width: 96rem; }
#detail { position: sticky; top: 1rem; align-self: start; max-height: calc(100vh - 2rem); overflow: auto;
  border: 1px solid var(--line); border-radius: 6px; padding: .25rem 1rem 1rem; margin-top: 1.6rem; }
@media (max-width: 1100px) { main { grid-template-columns: minmax(0, 1fr); } #detail { position: static; max-height: none; } }
.bar-row { display: grid; grid-template-columns: 11rem minmax(0, 1fr) 6.5rem; align-items: center; gap: .6rem; margin: .2rem 0; }
.bar-track { background: var(--bg-soft); height: 1rem; border-radius: 3px; }
.bar { height: 100%; border-radius: 3px; min-width: 1px; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: .75rem; height: .75rem; border-radius: 2px; margin-right: .35rem; vertical-align: -1px; }
.legend { display: flex; flex-wrap: wrap; gap: .3rem 1rem; font-size: .85rem; margin-top: .3rem; }
#map svg { width: 100%; max-width: 46rem; height: auto; border: 1px solid var(--line); border-radius: 6px; background: #fff; }
svg text { font: 11px system-ui, sans-serif; fill: var(--muted); }
svg .axis { stroke: #9aa1aa; stroke-width: 1; }
svg .grid { stroke: #eef0f3; stroke-width: 1; }
svg .pt { cursor: pointer; stroke: #fff; stroke-width: 1; }
svg .pt:hover, svg .pt.selected { stroke: #000; stroke-width: 2; }
.controls { margin-bottom: .5rem; }
select { font: inherit; padding: .15rem .3rem; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
#samples td:first-child { white-space: nowrap; }
th { background: var(--bg-soft); position: sticky; top: 0; }
th.sortable { cursor: pointer; user-select: none; white-space: nowrap; }
th.sortable::after { content: " \\2195"; color: var(--muted); }
th[aria-sort="ascending"]::after { content: " \\2191"; color: var(--fg); }
th[aria-sort="descending"]::after { content: " \\2193"; color: var(--fg); }
#samples tbody tr { cursor: pointer; }
#samples tbody tr:hover { background: #f1f5fa; }
#samples tbody tr.selected { background: #e2ecf7; }
td.nowrap { white-space: nowrap; }
td.excerpt { color: var(--muted); width: 45%; max-width: 0; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
pre.text { white-space: pre-wrap; word-break: break-word; background: var(--bg-soft); border: 1px solid var(--line);
  border-radius: 4px; padding: .45rem .6rem; margin: .2rem 0 .6rem; max-height: 16rem; overflow: auto;
  font: .85rem/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: .6rem; }
.pair .label { font-size: .8rem; color: var(--muted); }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .1rem .8rem; margin: .4rem 0; font-size: .9rem; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; word-break: break-all; }
.badge { display: inline-block; color: #fff; border-radius: 3px; padding: 0 .4rem; font-size: .8rem; }
table.kv td:first-child { color: var(--muted); white-space: nowrap; }
table.kv td { word-break: break-word; }
details { margin: .6rem 0; }
summary { cursor: pointer; font-weight: 600; }
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("report-data").textContent);
  var NS = "http://www.w3.org/2000/svg";
  var LEARNED_COLOR = "#cfd3d8";
  var rows = [], points = {}, selected = null, sortDir = 0;

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function sv(tag, attrs, text) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function num(x, digits) { return x === null || x === undefined ? "\u2013" : Number(x).toFixed(digits === undefined ? 2 : digits); }
  function pct(x) { return x === null || x === undefined ? "n/a" : (100 * x).toFixed(1) + "%"; }
  function color(cause) { return D.colors[cause] || "#7f7f7f"; }
  function swatch(c) { var s = el("span", {"class": "swatch"}); s.style.background = c; return s; }
  function excerpt(text, n) { text = (text || "").replace(/\s+/g, " ").trim(); return text.length > n ? text.slice(0, n - 1) + "\u2026" : text; }
  function kvTable(obj) {
    var t = el("table", {"class": "kv"});
    Object.keys(obj).sort().forEach(function (k) {
      var v = obj[k], tr = el("tr");
      tr.appendChild(el("td", {}, k));
      tr.appendChild(el("td", {}, typeof v === "object" && v !== null ? JSON.stringify(v) : String(v)));
      t.appendChild(tr);
    });
    return t;
  }
  function ticks(lo, hi, n) { var out = []; for (var i = 0; i <= n; i++) out.push(lo + (hi - lo) * i / n); return out; }
  function niceStep(span, n) {
    var raw = span / n, p = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / p;
    return p * (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10);
  }

  // summary ----------------------------------------------------------------------------------
  function drawSummary() {
    var s = D.summary;
    document.getElementById("title").textContent = D.title;
    var box = document.getElementById("summary");
    [["samples", s.n_samples], ["unlearned", s.n_unlearned], ["learned exactly", pct(s.learned_share)],
     ["unexplained (of unlearned)", pct(s.unexplained_share)]].forEach(function (p) {
      var d = el("div", {"class": "stat"}); d.appendChild(el("b", {}, p[1] === null || p[1] === undefined ? "n/a" : String(p[1])));
      d.appendChild(el("span", {"class": "muted"}, p[0])); box.appendChild(d);
    });
    var counts = s.counts || {}, max = 1, total = s.n_unlearned || 0;
    D.causes.forEach(function (c) { max = Math.max(max, counts[c] || 0); });
    var bars = document.getElementById("cause-bars");
    D.causes.forEach(function (c) {
      var n = counts[c] || 0, row = el("div", {"class": "bar-row", "data-cause": c});
      var name = el("span"); name.appendChild(swatch(color(c))); name.appendChild(document.createTextNode(c)); row.appendChild(name);
      var track = el("div", {"class": "bar-track"}), bar = el("div", {"class": "bar"});
      bar.style.width = (100 * n / max) + "%"; bar.style.background = color(c); track.appendChild(bar); row.appendChild(track);
      row.appendChild(el("span", {"class": "num"}, n + (total ? " (" + (100 * n / total).toFixed(1) + "%)" : "")));
      bars.appendChild(row);
    });
    var left = Object.keys(D.left_out);
    document.getElementById("left-out").textContent = left.length
      ? "This page embeds the " + D.max_per_cause + " most confident samples of each cause; left out: " +
        left.map(function (c) { return D.left_out[c] + " " + c; }).join(", ") + ". The report's samples.parquet keeps every row."
      : "Every unlearned sample is on this page.";
    var notes = document.getElementById("notes");
    (s.notes || []).forEach(function (n) { notes.appendChild(el("li", {}, n)); });
    if (!(s.notes || []).length) notes.appendChild(el("li", {"class": "muted"}, "none"));
    var about = document.getElementById("about");
    [["settings", s.settings], ["versions", s.versions], ["timings", s.timings]].forEach(function (p) {
      if (p[0] !== "settings" && (!p[1] || !Object.keys(p[1]).length)) return;
      var det = el("details", {id: p[0]}); det.appendChild(el("summary", {}, p[0]));
      det.appendChild(p[1] && Object.keys(p[1]).length ? kvTable(p[1]) : el("p", {"class": "muted"}, "none recorded"));
      about.appendChild(det);
    });
  }

  // map --------------------------------------------------------------------------------------
  function drawMap() {
    var host = document.getElementById("map"), note = document.getElementById("map-note");
    if (!D.map.available) {
      host.appendChild(el("p", {"class": "muted"}, "This report has no training-dynamics columns (cartography_confidence, cartography_variability)."));
      return;
    }
    var W = 640, H = 420, m = {l: 52, r: 14, t: 12, b: 44};
    var placed = D.samples.filter(function (s) { return s.x !== null && s.y !== null; });
    var xmax = 0;
    D.map.learned.forEach(function (p) { xmax = Math.max(xmax, p[0]); });
    placed.forEach(function (s) { xmax = Math.max(xmax, s.x); });
    var xstep = niceStep(xmax > 0 ? xmax * 1.05 : 0.5, 5);
    xmax = xstep * Math.ceil((xmax > 0 ? xmax * 1.05 : 0.5) / xstep);
    var xticks = []; for (var t = 0; t <= xmax + xstep / 2; t += xstep) xticks.push(t);
    function X(v) { return m.l + v / xmax * (W - m.l - m.r); }
    function Y(v) { return H - m.b - v * (H - m.t - m.b); }
    var svg = sv("svg", {viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "confidence against variability of every sample"});
    xticks.forEach(function (v) {
      svg.appendChild(sv("line", {"class": "grid", x1: X(v), x2: X(v), y1: Y(0), y2: Y(1)}));
      svg.appendChild(sv("text", {x: X(v), y: Y(0) + 15, "text-anchor": "middle"}, String(Number(v.toPrecision(3)))));
    });
    ticks(0, 1, 5).forEach(function (v) {
      svg.appendChild(sv("line", {"class": "grid", x1: X(0), x2: X(xmax), y1: Y(v), y2: Y(v)}));
      svg.appendChild(sv("text", {x: X(0) - 6, y: Y(v) + 4, "text-anchor": "end"}, v.toFixed(1)));
    });
    svg.appendChild(sv("line", {"class": "axis", x1: X(0), x2: X(xmax), y1: Y(0), y2: Y(0)}));
    svg.appendChild(sv("line", {"class": "axis", x1: X(0), x2: X(0), y1: Y(0), y2: Y(1)}));
    svg.appendChild(sv("text", {x: (X(0) + X(xmax)) / 2, y: H - 8, "text-anchor": "middle"}, "variability (std of p(gold) over observations)"));
    svg.appendChild(sv("text", {x: 14, y: (Y(0) + Y(1)) / 2, "text-anchor": "middle", transform: "rotate(-90 14 " + (Y(0) + Y(1)) / 2 + ")"}, "confidence (mean p(gold))"));
    var g = sv("g", {"class": "learned"});
    D.map.learned.forEach(function (p) { g.appendChild(sv("circle", {cx: X(p[0]).toFixed(1), cy: Y(p[1]).toFixed(1), r: 2.2, fill: LEARNED_COLOR})); });
    svg.appendChild(g);
    g = sv("g", {"class": "unlearned"});
    placed.forEach(function (s) {
      var c = sv("circle", {"class": "pt", cx: X(s.x).toFixed(1), cy: Y(s.y).toFixed(1), r: 4.5, fill: color(s.cause), "data-k": s.k, "data-cause": s.cause});
      c.appendChild(sv("title", {}, s.label + " \u00b7 " + s.cause + " (" + num(s.confidence) + ")"));
      c.addEventListener("click", function () { select(s.k, true); });
      points[s.k] = c; g.appendChild(c);
    });
    svg.appendChild(g);
    host.appendChild(svg);
    var legend = document.getElementById("map-legend"), present = {};
    placed.forEach(function (s) { present[s.cause] = (present[s.cause] || 0) + 1; });
    var item = el("span"); item.appendChild(swatch(LEARNED_COLOR)); item.appendChild(document.createTextNode("learned")); legend.appendChild(item);
    D.causes.forEach(function (c) {
      if (!present[c]) return;
      var it = el("span"); it.appendChild(swatch(color(c))); it.appendChild(document.createTextNode(c + " (" + present[c] + ")")); legend.appendChild(it);
    });
    note.textContent = "Each point is a sample: its mean and spread of p(gold) over the observations made during training. " +
      "Unlearned samples on this page: " + placed.length + "; learned samples drawn: " + D.map.learned.length + " of " + D.map.n_learned +
      (D.map.learned.length < D.map.n_learned ? " (evenly subsampled)" : "") + ". Click a coloured point to see the sample.";
  }

  // table ------------------------------------------------------------------------------------
  function drawTable() {
    document.getElementById("id-header").textContent = D.id_label;
    var tbody = document.querySelector("#samples tbody");
    D.samples.forEach(function (s) {
      var tr = el("tr", {"data-cause": s.cause, "data-k": s.k, tabindex: "0"});
      tr.appendChild(el("td", {}, s.label));
      var td = el("td", {"class": "nowrap"}); td.appendChild(swatch(color(s.cause))); td.appendChild(document.createTextNode(s.cause)); tr.appendChild(td);
      tr.appendChild(el("td", {"class": "num"}, num(s.confidence)));
      tr.appendChild(el("td", {"class": "nowrap"}, s.runner_up ? s.runner_up + " (" + num(s.runner_up_confidence) + ")" : "\u2013"));
      tr.appendChild(el("td", {"class": "excerpt", title: excerpt(s.prompt, 400)}, excerpt(s.prompt, 120)));
      tr.addEventListener("click", function () { select(s.k, false); });
      tr.addEventListener("keydown", function (e) { if (e.key === "Enter") select(s.k, false); });
      rows.push(tr); tbody.appendChild(tr);
    });
    var filter = document.getElementById("cause-filter");
    filter.appendChild(el("option", {value: "all"}, "all (" + D.samples.length + ")"));
    D.causes.forEach(function (c) {
      var n = D.samples.filter(function (s) { return s.cause === c; }).length;
      if (n) filter.appendChild(el("option", {value: c}, c + " (" + n + ")"));
    });
    filter.addEventListener("change", applyFilter);
    document.getElementById("sort-confidence").addEventListener("click", function () {
      sortDir = sortDir === 1 ? -1 : 1;
      this.setAttribute("aria-sort", sortDir === 1 ? "ascending" : "descending");
      var sorted = rows.slice().sort(function (a, b) {
        var x = D.samples[a.dataset.k].confidence, y = D.samples[b.dataset.k].confidence;
        if (x === null) return y === null ? 0 : 1;
        if (y === null) return -1;
        return sortDir * (x - y);
      });
      sorted.forEach(function (tr) { tbody.appendChild(tr); });
    });
    applyFilter();
  }
  function applyFilter() {
    var v = document.getElementById("cause-filter").value, shown = 0;
    rows.forEach(function (tr) { tr.hidden = v !== "all" && tr.dataset.cause !== v; if (!tr.hidden) shown++; });
    document.getElementById("shown-count").textContent = shown + " of " + D.samples.length + " shown";
  }

  // detail -----------------------------------------------------------------------------------
  function select(k, fromMap) {
    if (selected !== null) {
      rows.forEach(function (tr) { tr.classList.remove("selected"); });
      if (points[selected]) points[selected].classList.remove("selected");
    }
    selected = k;
    rows.forEach(function (tr) { if (Number(tr.dataset.k) === k) tr.classList.add("selected"); });
    if (points[k]) points[k].classList.add("selected");
    drawDetail(D.samples[k]);
    var d = document.getElementById("detail");
    if (getComputedStyle(d).position !== "sticky") d.scrollIntoView({block: "start"});
    else d.scrollTop = 0;
  }
  function textBlock(parent, label, text) {
    parent.appendChild(el("h3", {}, label));
    parent.appendChild(el("pre", {"class": "text"}, text === "" ? "(empty)" : text));
  }
  function drawDetail(s) {
    var d = document.getElementById("detail");
    d.textContent = "";
    d.setAttribute("data-k", s.k);
    var h = el("h2", {}, s.label + " "); var b = el("span", {"class": "badge"}, s.cause); b.style.background = color(s.cause); h.appendChild(b);
    d.appendChild(h);
    var meta = el("dl", {"class": "meta"});
    [["id", s.id], ["row", s.row], ["stage", s.stage], ["cause", s.cause], ["confidence", num(s.confidence, 3)],
     ["runner-up", s.runner_up ? s.runner_up + " (" + num(s.runner_up_confidence, 3) + ")" : null]].forEach(function (p) {
      if (p[1] === null || p[1] === undefined || p[1] === "") return;
      meta.appendChild(el("dt", {}, p[0])); meta.appendChild(el("dd", {}, String(p[1])));
    });
    d.appendChild(meta);
    if (s.why) d.appendChild(el("p", {"class": "why"}, s.why));
    var scores = Object.keys(s.scores);
    if (scores.length) {
      d.appendChild(el("h3", {}, "score per cause"));
      D.causes.forEach(function (c) {
        if (!(c in s.scores)) return;
        var row = el("div", {"class": "bar-row"}), name = el("span"); name.appendChild(swatch(color(c))); name.appendChild(document.createTextNode(c));
        var track = el("div", {"class": "bar-track"}), bar = el("div", {"class": "bar"});
        bar.style.width = Math.max(0, Math.min(1, s.scores[c])) * 100 + "%"; bar.style.background = color(c);
        track.appendChild(bar); row.appendChild(name); row.appendChild(track); row.appendChild(el("span", {"class": "num"}, num(s.scores[c], 3)));
        d.appendChild(row);
      });
    }
    textBlock(d, "prompt", s.prompt);
    textBlock(d, "completion (the target)", s.completion);
    s.comparisons.forEach(function (c) {
      d.appendChild(el("h3", {}, "where the " + c.model + " leaves the target" + (c.at === null ? "" : " (token " + Math.round(c.at) + ")")));
      var pair = el("div", {"class": "pair"});
      [["the target continues", c.expected], ["the " + c.model + " says", c.says]].forEach(function (p) {
        var col = el("div"); col.appendChild(el("div", {"class": "label"}, p[0]));
        col.appendChild(el("pre", {"class": "text"}, p[1] === "" ? "(nothing)" : p[1])); pair.appendChild(col);
      });
      d.appendChild(pair);
    });
    if (s.duplicate) {
      var dup = s.duplicate;
      d.appendChild(el("h3", {}, "the closest training prompt with another answer" + (dup.id ? ": " + dup.id : "") +
        (dup.similarity === null || dup.similarity === undefined ? "" : " (similarity " + num(dup.similarity, 2) + ")")));
      var pair = el("div", {"class": "pair"});
      [["its prompt", dup.prompt], ["its completion", dup.completion]].forEach(function (p) {
        var col = el("div"); col.appendChild(el("div", {"class": "label"}, p[0]));
        col.appendChild(el("pre", {"class": "text"}, p[1] === "" ? "(not recorded)" : p[1])); pair.appendChild(col);
      });
      d.appendChild(pair);
    }
    if (s.curve && s.curve.step.length) {
      d.appendChild(el("h3", {}, "learning curve"));
      d.appendChild(curve(s.curve));
    }
    if (s.evidence.length) {
      d.appendChild(el("h3", {}, "evidence"));
      var obj = {}; s.evidence.forEach(function (p) { obj[p[0]] = p[1]; });
      d.appendChild(kvTable(obj));
    }
  }
  function curve(c) {
    var W = 460, H = 210, m = {l: 40, r: 14, t: 10, b: 40};
    var lo = Math.min.apply(null, c.step), hi = Math.max.apply(null, c.step);
    if (hi === lo) { lo -= 1; hi += 1; }
    function X(v) { return m.l + (v - lo) / (hi - lo) * (W - m.l - m.r); }
    function Y(v) { return H - m.b - v * (H - m.t - m.b); }
    var svg = sv("svg", {"class": "curve", viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "p(gold) and exact match over training"});
    ticks(0, 1, 4).forEach(function (v) {
      svg.appendChild(sv("line", {"class": "grid", x1: X(lo), x2: X(hi), y1: Y(v), y2: Y(v)}));
      svg.appendChild(sv("text", {x: X(lo) - 5, y: Y(v) + 4, "text-anchor": "end"}, v.toFixed(2)));
    });
    svg.appendChild(sv("line", {"class": "axis", x1: X(lo), x2: X(hi), y1: Y(0), y2: Y(0)}));
    [lo, hi].forEach(function (v) { svg.appendChild(sv("text", {x: X(v), y: Y(0) + 15, "text-anchor": "middle"}, String(Math.round(v)))); });
    svg.appendChild(sv("text", {x: (X(lo) + X(hi)) / 2, y: H - 8, "text-anchor": "middle"}, "training step"));
    var exact = [], gold = [], seg = [];
    c.step.forEach(function (st, i) {
      if (c.exact[i] !== null) exact.push(X(st).toFixed(1) + "," + Y(c.exact[i] ? 1 : 0).toFixed(1));
      if (c.p_gold[i] === null) { if (seg.length) gold.push(seg); seg = []; } else seg.push(X(st).toFixed(1) + "," + Y(c.p_gold[i]).toFixed(1));
    });
    if (seg.length) gold.push(seg);
    if (exact.length) svg.appendChild(sv("polyline", {points: exact.join(" "), fill: "none", stroke: "#2ca02c", "stroke-width": 1.5, "stroke-dasharray": "4 3"}));
    gold.forEach(function (p) { svg.appendChild(sv("polyline", {points: p.join(" "), fill: "none", stroke: "#24527a", "stroke-width": 2})); });
    c.step.forEach(function (st, i) {
      if (c.p_gold[i] === null) return;
      var dot = sv("circle", {cx: X(st).toFixed(1), cy: Y(c.p_gold[i]).toFixed(1), r: 3, fill: c.exact[i] ? "#24527a" : "#fff", stroke: "#24527a", "stroke-width": 1.5});
      dot.appendChild(sv("title", {}, "step " + st + ": p(gold) " + num(c.p_gold[i], 3) + (c.exact[i] === null ? "" : c.exact[i] ? ", exact" : ", not exact")));
      svg.appendChild(dot);
    });
    var wrap = el("div");
    wrap.appendChild(svg);
    wrap.appendChild(el("div", {"class": "legend"}, "solid: p(gold), the mean probability of the target tokens (filled dot: reproduced exactly); dashed: exact match (1) or not (0)"));
    return wrap;
  }

  drawSummary();
  drawMap();
  drawTable();
})();
"""
