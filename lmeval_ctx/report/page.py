"""The report's page: ``index.html``, one self-contained file (inline CSS, script and plots).

The leaderboard sorts by any column (click its header; again to reverse), each row's
run settings show on hover and in the row's expandable "settings", and every plot is
inlined as a base64 PNG, so the page opens anywhere with no network.
"""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path

from lmeval_ctx.methods.catalog import factor_text
from lmeval_ctx.report.results import Run, Table

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.45rem; text-align: right; vertical-align: top; }
th { background: #f2f2f2; cursor: pointer; user-select: none; position: sticky; top: 0; }
th.sorted-asc::after { content: " ▲"; } th.sorted-desc::after { content: " ▼"; }
td.text { text-align: left; }
tr:hover td { background: #fafad2; }
details summary { cursor: pointer; color: #1a5fb4; }
details dl { margin: 0.3rem 0; text-align: left; font-size: 0.8rem; }
details dt { font-weight: 600; } details dd { margin: 0 0 0.2rem 0.8rem; word-break: break-all; max-width: 28rem; }
.legend { font-size: 0.85rem; color: #444; max-width: 60rem; }
figure { display: inline-block; margin: 0.5rem; } figure img { max-width: 44rem; border: 1px solid #ddd; }
"""

SCRIPT = """
(function () {
  var table = document.getElementById("leaderboard");
  var body = table.tBodies[0];
  function key(cell) {
    var text = cell.getAttribute("data-sort");
    if (text === null) { text = cell.textContent.trim(); }
    if (text === "") { return null; }
    var match = text.replace(/[≈<]/g, "").trim().match(/^[-+]?\\d*\\.?\\d+(e[-+]?\\d+)?/i);
    return match ? parseFloat(match[0]) : text.toLowerCase();
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, column) {
    header.addEventListener("click", function () {
      var ascending = !header.classList.contains("sorted-asc");
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (other) {
        other.classList.remove("sorted-asc", "sorted-desc");
      });
      header.classList.add(ascending ? "sorted-asc" : "sorted-desc");
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a.cells[column]), y = key(b.cells[column]);
        if (x === null && y === null) { return 0; }
        if (x === null) { return 1; }
        if (y === null) { return -1; }
        if (typeof x !== typeof y) { x = String(x); y = String(y); }
        var order = x < y ? -1 : x > y ? 1 : 0;
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
})();
"""


def run_settings(run: Run) -> dict[str, str]:
    """What a reader needs to know about how a row was run, in display order."""
    extension = run.extension
    layer_types = {key: value for key, value in extension.items() if "layer" in key}
    settings = {
        "method": run.method_label + (f" (asked as {extension['scaling_requested']})"
                                if extension.get("scaling_requested") not in (None, run.method) else ""),
        "factor": factor_text(run.factor) or "none",
        "window (max_length)": "" if run.window is None else f"{run.window:,}",
        "trained length": "" if run.original_max_length is None else f"{run.original_max_length:,}",
    }
    for key, value in layer_types.items():
        settings[key.replace("_", " ")] = value if isinstance(value, str) else json.dumps(value)
    if extension.get("options"):
        settings["method options"] = json.dumps(extension["options"], sort_keys=True)
    settings["model args"] = ", ".join(f"{k}={v}" for k, v in run.model_args.items())
    settings["lm-eval version"] = ", ".join(sorted(run.lm_eval_versions))
    settings["date"] = ", ".join(sorted(d.strftime("%Y-%m-%d %H:%M UTC") for d in run.dates))
    identities = {task: r.data_identity for task, r in sorted(run.tasks.items()) if r.data_identity}
    if identities:
        settings["data identity"] = "; ".join(f"{task}: {value}" for task, value in identities.items())
    if run.note:
        settings["differs by"] = run.note
    settings["results files"] = "; ".join(str(path) for path in run.files)
    return {key: value for key, value in settings.items() if value != ""}


TEXT_COLUMNS = ("model", "method", "date", "settings", "data")


def _row_html(run: Run, cells: list[str], header: list[str]) -> str:
    """A table row: the first cell holds the row's settings (a fold), the whole row shows them on hover."""
    settings = run_settings(run)
    tooltip = "\n".join(f"{key}: {value}" for key, value in settings.items())
    details = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in settings.items())
    first = (f'<td class="text" data-sort="{html.escape(cells[0])}">{html.escape(cells[0])}'
             f"<details><summary>settings</summary><dl>{details}</dl></details></td>")
    rest = "".join(f'<td class="{"text" if header[i] in TEXT_COLUMNS else "num"}">{html.escape(cell)}</td>'
                   for i, cell in enumerate(cells[1:], 1))
    return f'<tr title="{html.escape(tooltip)}">{first}{rest}</tr>'


def render_page(table: Table, runs: list[Run], images: list[Path]) -> str:
    """The page as one HTML string."""
    head = "".join(f"<th>{html.escape(name)}</th>" for name in table.header)
    body = "\n".join(_row_html(run, row, table.header) for run, row in zip(runs, table.rows))
    legend = "".join(f"<p>{html.escape(line)}</p>" for line in table.legend)
    notes = "".join(f"<p><strong>Note:</strong> {html.escape(line)}</p>" for line in table.notes)
    figures = "\n".join(
        f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode("ascii")}"><figcaption>{html.escape(path.name)}'
        "</figcaption></figure>" for path in images
    )
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>lmeval-ctx report</title>
<style>{STYLE}</style>
</head>
<body>
<h1>Context-extension leaderboard</h1>
<p class="legend">{len(runs)} rows, written {made}. Click a column header to sort by it (again to reverse);
hover over a row or open its "settings" for how it was run.</p>
<table id="leaderboard">
<thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody>
</table>
<div class="legend">{legend}{notes}</div>
<h2>Plots</h2>
{figures}
<script>{SCRIPT}</script>
</body>
</html>
"""


def write_page(path: Path, table: Table, runs: list[Run], images: list[Path]) -> Path:
    """Write the page to ``path``; the path."""
    path.write_text(render_page(table, runs, images), encoding="utf-8")
    return path
