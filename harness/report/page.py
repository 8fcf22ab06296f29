"""The self-contained HTML page: inline CSS, every image a base64 ``data:`` URI, no external
request, so ``index.html`` opens from disk, from an e-mail or from an MLflow artifact view alike."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from harness.report.formats import to_html
from harness.report.stats import METHOD as STATISTICS

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
  max-width:1200px;padding:1.5em;color:#1d1d1f}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
.banner{padding:.7em 1em;border-radius:6px;margin:1em 0}
.banner.ok{background:#e8f5e9;border:1px solid #81c784}
.banner.warn{background:#fff8e1;border:1px solid #ffb74d}
table.report{border-collapse:collapse;margin:.8em 0;font-variant-numeric:tabular-nums}
table.report th,table.report td{padding:.3em .6em;border-bottom:1px solid #e0e0e0;
  text-align:center}
#table-comparison td,#table-cost td{white-space:nowrap}
#table-provenance td{text-align:left}
table.report th[scope=row]{text-align:left}
table.report th.group{border-bottom:2px solid #999}
table.report caption{caption-side:bottom;text-align:left;color:#555;font-size:.85em;
  padding-top:.4em;white-space:normal}
.n{color:#777;font-size:.8em}.footnotes{font-size:.85em;color:#444}
.scroll{overflow-x:auto}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
.samples td img{width:300px;height:auto}
.verdict{font-weight:600}.holds{color:#2e7d32}.does-not-hold{color:#c62828}
.mixed{color:#ef6c00}.not-enough-data,.inconclusive{color:#757575}
details summary{cursor:pointer;margin:.5em 0}
"""

# Marks the page with how many images decoded (read by the browser test), and says so on the page
# when one did not, so a broken report never looks complete.
SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.documentElement.setAttribute("data-images", imgs.length + "/" + bad.length);
  if (bad.length) {
    var p = document.createElement("p");
    p.className = "banner warn";
    p.textContent = bad.length + " of " + imgs.length + " images failed to load.";
    document.body.insertBefore(p, document.body.firstChild);
  }
});
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str) -> str:
    return f'<img src="{data_uri(png)}" alt="{html.escape(alt)}">'


def _claims(content) -> str:
    out = ["<ul>"]
    for c in content.claims:
        css = c.verdict.split(" (")[0].replace(" ", "-")  # "inconclusive (n = 3)": inconclusive
        details = "".join(f"<li>{html.escape(d)}</li>" for d in c.details)
        out.append(f'<li>{html.escape(c.statement)} <span class="verdict {css}">'
                   f"{html.escape(c.verdict.capitalize())}</span>: {html.escape(c.evidence)}"
                   + (f"<ul>{details}</ul>" if details else "") + "</li>")
    return "\n".join(out + ["</ul>", f"<p>{html.escape(STATISTICS)}</p>"])


def _figures(figures) -> str:
    return "\n".join(f"<figure>{_img(f.png, f.title)}<figcaption>{html.escape(f.caption)}"
                     "</figcaption></figure>" for f in figures) or "<p>No curves logged yet.</p>"


def _samples(content, kind: str) -> str:
    """A method x dataset grid of one artifact kind ("samples" or "trajectories")."""
    grid = {(s.label, s.dataset): s for s in content.samples if s.kind == kind}
    if not grid:
        return f"<p>No {kind} figures logged yet.</p>"
    out = ['<div class="scroll"><table class="report samples"><tr><th>Method</th>'
           + "".join(f"<th>{html.escape(d)}</th>" for d in content.datasets) + "</tr>"]
    for label, shown in content.methods:
        cells = []
        for d in content.datasets:
            s = grid.get((label, d))
            cells.append("<td>—</td>" if s is None else
                         f"<td>{_img(Path(s.path).read_bytes(), f'{shown} {d} {kind}')}"
                         f'<br><span class="n">seed {s.seed}</span></td>')
        out.append(f'<tr><th scope="row">{html.escape(shown)}</th>{"".join(cells)}</tr>')
    return "\n".join(out + ["</table></div>"])


def html_page(content) -> str:
    """The whole report as one HTML document."""
    e = html.escape
    t = content.tables
    sections = [
        f"<h1>{e(content.title)}</h1>",
        f'<p class="banner {"ok" if content.complete else "warn"}">{e(content.banner)}</p>',
        '<h2 id="comparison">Comparison</h2>',
        f'<div class="scroll">{to_html(t["comparison"])}</div>',
        '<h2 id="claims">Claims</h2>', _claims(content),
        '<h2 id="efficiency">Sampling efficiency</h2>', _figures(content.efficiency),
        *(['<h3 id="budget">NFE budget</h3>', f'<div class="scroll">{to_html(t["budget"])}</div>']
          if "budget" in t else []),
        '<h2 id="training">Training curves</h2>', _figures(content.training),
        '<h2 id="samples">Samples</h2>', _samples(content, "samples"),
        "<h3>Trajectories</h3>", _samples(content, "trajectories"),
        '<h2 id="cost">Cost</h2>', f"<p>{e(content.cost_summary)}</p>",
        f'<details><summary>Every trial</summary><div class="scroll">{to_html(t["cost"])}'
        "</div></details>",
        '<h2 id="provenance">Provenance</h2>',
        f'<div class="scroll">{to_html(t["provenance"])}</div>',
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{e(content.title)}</title><style>{CSS}</style>"
            f"<script>{SCRIPT}</script></head>\n<body>\n" + "\n".join(sections)
            + "\n</body></html>\n")
