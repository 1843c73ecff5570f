"""The gallery that ``gradhealth demo`` writes: every pillar's pictures with a short explanation.

A section is a module under :mod:`gradhealth.gallery` with a ``TITLE`` string, an optional
``INTRO`` (Markdown) and a ``figures()`` function returning a list of :class:`Figure`. The
runner draws each figure to ``OUT/<slug>.png``, then writes ``index.md`` and ``index.html``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ._figure import Figure

__all__ = ["Figure", "SECTIONS", "build", "GalleryResult"]

#: Section modules, in the order a newcomer should read them.
SECTIONS: list[str] = ["chains", "meanfield", "trainability", "probe", "watch", "cure"]


@dataclass
class GalleryResult:
    """What :func:`build` wrote.

    Attributes:
        out_dir: the output directory.
        files: every picture written, in gallery order.
        index_md, index_html: the two index pages.
        report_index: the index of the HTML reports (``report/index.html``), when written.
    """

    out_dir: Path
    files: list[Path]
    index_md: Path
    index_html: Path
    report_index: Path | None = None


def _collect(sections: Sequence[str]) -> list[tuple[str, str, list[Figure]]]:
    out = []
    for name in sections:
        mod = importlib.import_module(f".{name}", __name__)
        out.append((mod.TITLE, getattr(mod, "INTRO", ""), list(mod.figures())))
    return out


def _render_html(markdown: str) -> str:
    """The gallery index as real HTML (tables, code, emphasis), rendered by markdown-it-py
    (CommonMark + tables). Raw HTML inside the Markdown is escaped, not passed through."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>gradhealth gallery</title>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
            "line-height:1.45}img{max-width:100%}pre,code{background:#f4f4f4}pre{padding:.5rem;"
            "overflow-x:auto}table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.2rem .5rem;"
            "text-align:right}th{background:#f0f0f0}</style></head><body>" + body + "</body></html>")


def _draw(fig: Figure, out: Path, md: list[str], files: list[Path]) -> None:
    import matplotlib.pyplot as plt

    md += [f"### {fig.title}", ""]
    if fig.draw is not None:
        f = fig.draw()
        path = out / f"{fig.slug}.png"
        f.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(f)
        files.append(path)
        md += [f"![{fig.title}]({path.name})", ""]
    md += [fig.caption, ""]
    if fig.table is not None:
        md += [fig.table(), ""]


def build(out_dir: str | Path, sections: Sequence[str] | None = None, progress: bool = True,
          reports: bool = False) -> GalleryResult:
    """Draw every figure of ``sections`` (default: all) into ``out_dir`` and index them.

    Args:
        out_dir: the output directory (created).
        sections: section names (default :data:`SECTIONS`).
        progress: show a progress bar (it starts at once: loading torch is its first stage).
        reports: also write the HTML reports of the demo's runs (``out_dir/report/``).
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..errors import ParameterError

    names = list(SECTIONS if sections is None else sections)
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        raise ParameterError("sections", "gallery.build", "a subset of " + ", ".join(SECTIONS),
                             unknown, "leave it out to build every section.")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParameterError("out", "gradhealth demo", "a directory that can be created",
                             str(out_dir), f"choose a writable location ({exc.strerror}).") from None
    files: list[Path] = []
    md = ["# gradhealth gallery", "",
          "Every picture below was computed by gradhealth; rerun `gradhealth demo` to redraw it.", ""]
    report_index = None
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), disable=not progress, transient=False) as bar:
        task = bar.add_task("loading torch and the gallery sections", total=None)
        import matplotlib

        matplotlib.use("Agg", force=False)
        collected = _collect(names)
        total = sum(len(f) for _, _, f in collected) + (1 if reports else 0)
        bar.update(task, total=total, completed=0)
        for title, intro, figs in collected:
            md += [f"## {title}", ""] + ([intro, ""] if intro else [])
            for fig in figs:
                bar.update(task, description=f"drawing {fig.slug}")
                _draw(fig, out, md, files)
                bar.advance(task)
        index_html = out / "index.html"
        if reports:
            bar.update(task, description="writing the HTML reports")
            from .report import write_reports

            report_index = write_reports(out, gallery_index=index_html)
            md[3:3] = [f"**Start here:** [the reports of the demo's runs]({report_index.relative_to(out)})"
                       " — what went wrong, where, since when, and what fixed it.", ""]
            bar.advance(task)
        bar.update(task, description="gallery done")
    index_md = out / "index.md"
    text = "\n".join(md)
    index_md.write_text(text, encoding="utf-8")
    index_html.write_text(_render_html(text), encoding="utf-8")
    return GalleryResult(out, files, index_md, index_html, report_index)
