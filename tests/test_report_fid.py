"""Every FID the report shows names the pipeline its runs recorded (clean-fid mode and generated
samples), in HTML, Markdown, CSV, LaTeX and on the figures' axes; runs of different pipelines are
flagged and never averaged together. Stores are the ones of tests/test_report.py, with digits
logging Inception FID (``fid``) under the modes given here."""

from __future__ import annotations

import csv
import html
import io
import statistics

import pytest

from harness.report import build_report, figures
from harness.report.formats import tex
from tests.test_report import DIGITS, fill_store

MODES = {"legacy": lambda trial: "legacy_tensorflow",
         "mixed": lambda trial: "clean" if trial.seed == 0 else "legacy_tensorflow"}
SEEDS = {"clean, 2k": (0,), "legacy_tensorflow, 2k": (1, 2)}  # of the mixed store
METHOD = {"DDPM": "ddpm", "FM w/ Diffusion": "fm-diffusion", "FM w/ OT": "fm-ot"}


@pytest.fixture(scope="module", params=sorted(MODES))
def built(request, tmp_path_factory):
    """(name, report, y-axis labels of each figure in the order drawn: every dataset's efficiency
    figure, then every dataset's training figure)."""
    tmp = tmp_path_factory.mktemp(f"report-fid-{request.param}")
    uri, suite, _ = fill_store(tmp, fid="fid", fid_mode=MODES[request.param])
    labels, draw = [], figures._png

    def keep(fig):
        labels.append([" ".join(ax.get_ylabel().split()) for ax in fig.axes])  # unwrapped
        return draw(fig)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(figures, "_png", keep)
        report = build_report(suite, uri, tmp / "out", log=False)
    return request.param, report, labels


def _fid_columns(report):
    return [c for c in report.tables["comparison"].columns if c.key.startswith("digits/fid")]


def test_fid_headers_name_the_recorded_pipeline(built):
    name, report, _ = built
    shown = [c.header for c in _fid_columns(report)]
    if name == "legacy":
        assert shown == ["FID (legacy_tensorflow, 2k) ↓"]
    else:  # one column per pipeline, each averaging only its own seeds
        assert shown == ["FID (clean, 2k) ↓", "FID (legacy_tensorflow, 2k) ↓"]
        table = report.tables["comparison"]
        assert table.cell("FM w/ OT", "digits/fid [clean, 2k]").value_text == "7.20"
        assert table.cell("FM w/ OT", "digits/fid [legacy_tensorflow, 2k]").value_text == \
            "7.50 ± 0.14"


def test_every_format_shows_the_pipeline_beside_the_fid_values(built):
    name, report, _ = built
    out = report.out_dir
    page = report.index.read_text()
    md = report.markdown.read_text().split("## Comparison")[1].split("## Claims")[0]
    latex = (out / "comparison.tex").read_text()
    rows = list(csv.DictReader(io.StringIO((out / "comparison.csv").read_text())))
    for col in _fid_columns(report):
        assert f"<th>{html.escape(col.header)}</th>" in page
        assert f"| digits {col.header} |" in md
        assert tex(col.header) in latex and "legacy\\_tensorflow" in latex
        lines = [r for r in rows if r["key"] == col.key]
        assert len(lines) == 4 and all(r["column"] == col.title for r in lines)  # every row
        for r in lines:  # and the values are that pipeline's seeds only
            pipeline = col.title[len("FID ("):-1]
            values = [v for s, v in enumerate(DIGITS.get(METHOD.get(r["row"]), ((), [None] * 3))[1])
                      if v is not None and (name == "legacy" or s in SEEDS[pipeline])]
            assert int(r["n"] or 0) == len(values), r
            if values:
                assert float(r["mean"]) == pytest.approx(statistics.mean(values))


def test_mixed_pipelines_are_flagged_in_the_caption(built):
    name, report, _ = built
    caption = report.tables["comparison"].caption
    assert "FID headers name the clean-fid mode" in caption
    flag = "Mixed FID pipelines on digits (clean, 2k; legacy_tensorflow, 2k)"
    assert (flag in caption) == (name == "mixed")
    if name == "mixed":
        assert html.escape(flag) in report.index.read_text()
        assert flag in report.markdown.read_text()
        assert tex(flag) in (report.out_dir / "comparison.tex").read_text()


def test_figure_axes_name_the_pipeline(built):
    name, _, labels = built
    efficiency_digits, training_digits = labels[1], labels[3]
    if name == "legacy":
        curve, final = "FID (legacy_tensorflow, 500)", "FID (legacy_tensorflow, 2k)"
    else:
        curve = "FID (mixed pipelines: clean, 500; legacy_tensorflow, 500)"
        final = "FID (mixed pipelines: clean, 2k; legacy_tensorflow, 2k)"
    # rows of quality panels share the first column's label (the FID-vs-NFE samples: dopri5 is a
    # curve over tolerances drawn from those samples too), then the numerical-error panel
    assert efficiency_digits[:2] == [curve, "MSE per dim vs dopri5 at 1e-7"]
    assert training_digits[1] == final
    assert labels[0][0] == "W2 (data units)"  # 2-D data: no pipeline to name
