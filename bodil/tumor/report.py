"""Clinician report of a posterior CTV ensemble: ``report.pdf`` and ``report.html``.

The PDF has a summary page (patient, run settings, CTV and parameter tables), tri-planar slices with the
CTV probability contours per margin, histograms of the posterior initial position and plain-language notes;
``bodil.tumor.report_pages`` draws them. ``bodil.tumor.report_content`` defines what a report shows
(``ReportContent``) and checks it.

The HTML file holds the same tables and text, with the figures embedded as base64 PNG, so it is one
self-contained file. Figures are ``matplotlib.figure.Figure`` objects (never pyplot), so writing a report
changes no global matplotlib state. Both files are written to temporary names in ``out_dir`` and moved into
place only when both are complete: a failure leaves no new ``report.pdf`` or ``report.html`` behind.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import os

from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from ..io import atomic_path
from .report_content import (ASSUMPTIONS, MEANING, PARAMETER_COLUMNS, REFERENCES, RESEARCH_USE, TABLE_COLUMNS,
                             ReportContent, bodil_version, run_items, table_rows)
from .report_pages import MARGINS_PER_PAGE, histogram_page, note_pages, slice_page, title_page


def _png(fig: Figure, dpi: int = 110) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(h).replace(chr(10), '<br>')}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(content: ReportContent, written: str, images: list[tuple[str, str]]) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>CTV report: patient {e(content.patient_id)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #999;padding:0.2em 0.6em;"
        "text-align:center}th{background:#e8e8e8}.warn{color:#b00000;font-weight:bold}"
        "img{max-width:100%;border:1px solid #ccc}td.key{text-align:left;font-weight:bold}"
        "td.value{text-align:left;font-family:monospace}</style></head><body>",
        "<h1>Tumour-cell infiltration and clinical target volumes</h1>",
        f"<p>Patient <b>{e(content.patient_id)}</b>, report written {e(written)}, bodil {e(bodil_version())}.</p>",
        f'<p class="warn">{e(RESEARCH_USE)}</p>',
        *(f'<p class="warn">Warning: {e(note)}</p>' for note in content.notes),
        "<h2>Run</h2><table>" + "".join(f'<tr><td class="key">{e(k)}</td><td class="value">{e(v)}</td></tr>'
                                        for k, v in run_items(content)) + "</table>",
        "<h2>CTV volume and boundary spread per margin</h2>",
        "<p>The model CTV of each sample has the volume of the standard CTV of the margin.</p>",
        _html_table([c[1] for c in TABLE_COLUMNS], table_rows(content.table, TABLE_COLUMNS)),
        "<h2>Model parameters (posterior)</h2>",
        (_html_table([c[1] for c in PARAMETER_COLUMNS], table_rows(content.parameters, PARAMETER_COLUMNS))
         if content.parameters else "<p>(no parameter summary given)</p>"),
    ]
    for title, data in images:
        parts.append(f"<h2>{e(title)}</h2>")
        parts.append(f'<img alt="{e(title)}" src="data:image/png;base64,{data}">')
    for head, paragraphs in (("What the uncertainty means", MEANING), ("What the model assumes", content.assumptions),
                             ("Notes from the run", tuple(content.notes) or ("(none)",)),
                             ("References", REFERENCES)):
        parts.append(f"<h2>{e(head)}</h2><ul>" + "".join(f"<li>{e(p)}</li>" for p in paragraphs) + "</ul>")
    parts.append(f'<p class="warn">{e(RESEARCH_USE)}</p></body></html>')
    return "\n".join(parts)


def write_report(content: ReportContent, out_dir) -> tuple[str, str]:
    """Write ``report.pdf`` and ``report.html`` into ``out_dir`` (created if missing).

    Both are rendered to temporary files in ``out_dir`` (``bodil.io.atomic_path``) and moved into place only
    when both are complete; on any error the temporary files are removed and the exception propagates.

    Returns:
        ``(pdf_path, html_path)``.
    """
    content.validate()
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    pdf_path = os.path.join(out_dir, "report.pdf")
    html_path = os.path.join(out_dir, "report.html")
    written = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    with atomic_path(pdf_path, ".pdf") as tmp_pdf, atomic_path(html_path, ".html") as tmp_html:
        images = []
        metadata = {"Title": f"CTV report, patient {content.patient_id}", "Creator": f"bodil {bodil_version()}",
                    "Subject": "Posterior clinical target volumes (research use only)"}
        with PdfPages(tmp_pdf, metadata=metadata) as pdf:
            pdf.savefig(title_page(content, written))
            margins = tuple(content.margins_mm)
            groups = [margins[i:i + MARGINS_PER_PAGE] for i in range(0, len(margins), MARGINS_PER_PAGE)]
            for g, group in enumerate(groups):
                page = f"slices {g + 1}/{len(groups)}"
                fig = slice_page(content, group, page)
                pdf.savefig(fig)
                names = ", ".join(f"{m:g}" for m in group)
                images.append((f"Slices through the core, margins {names} mm", _png(fig)))
            fig = histogram_page(content)
            pdf.savefig(fig)
            images.append(("Initial tumour position", _png(fig)))
            for title, fig in content.figures:
                pdf.savefig(fig)
                images.append((title, _png(fig)))
            for fig in note_pages(content):
                pdf.savefig(fig)
        with open(tmp_html, "w", encoding="utf-8") as f:
            f.write(_html(content, written, images))
    return pdf_path, html_path


__all__ = ["ASSUMPTIONS", "MEANING", "PARAMETER_COLUMNS", "REFERENCES", "RESEARCH_USE", "TABLE_COLUMNS",
           "ReportContent", "write_report"]
