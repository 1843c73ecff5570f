"""The gallery that ``gradhealth demo`` writes: every pillar's pictures with a short explanation.

A section is a module under :mod:`gradhealth.gallery` with a ``TITLE`` string, an optional
``INTRO`` (Markdown) and a ``figures()`` function returning a list of :class:`Figure`. The
runner draws each figure to ``OUT/<slug>.png``, then writes ``index.md`` and ``index.html``.
"""

from __future__ import annotations

import html
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Figure", "SECTIONS", "build", "GalleryResult"]

#: Section modules, in the order a newcomer should read them.
SECTIONS: list[str] = ["chains", "meanfield", "probe", "watch", "cure"]


@dataclass(frozen=True)
class Figure:
    """One gallery entry.

    Attributes:
        slug: file stem, ``[a-z0-9_]+``; the picture is written to ``<slug>.png``.
        title: heading shown above the picture.
        caption: two or three sentences (Markdown) saying what to see and why.
        draw: returns a ``matplotlib.figure.Figure`` (the runner saves and closes it), or
            ``None`` for a text-only entry.
        table: optional callable returning Markdown (a table or code block) shown below.
    """

    slug: str
    title: str
    caption: str
    draw: Callable[[], object] | None = field(repr=False, default=None)
    table: Callable[[], str] | None = field(repr=False, default=None)


@dataclass
class GalleryResult:
    """What :func:`build` wrote.

    Attributes:
        out_dir: the output directory.
        files: every picture written, in gallery order.
        index_md, index_html: the two index pages.
    """

    out_dir: Path
    files: list[Path]
    index_md: Path
    index_html: Path


def _collect(sections: Sequence[str]) -> list[tuple[str, str, list[Figure]]]:
    out = []
    for name in sections:
        mod = importlib.import_module(f".{name}", __name__)
        out.append((mod.TITLE, getattr(mod, "INTRO", ""), list(mod.figures())))
    return out


def build(out_dir: str | Path, sections: Sequence[str] | None = None, progress: bool = True,
          ) -> GalleryResult:
    """Draw every figure of ``sections`` (default: all) into ``out_dir`` and index them."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
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
    collected = _collect(names)
    total = sum(len(f) for _, _, f in collected)
    files: list[Path] = []
    md = ["# gradhealth gallery", "",
          "Every picture below was computed by gradhealth; rerun `gradhealth demo` to redraw it.", ""]
    body_html = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), disable=not progress, transient=False) as bar:
        task = bar.add_task("drawing the gallery", total=total)
        for title, intro, figs in collected:
            md += [f"## {title}", ""] + ([intro, ""] if intro else [])
            body_html.append(f"<h2>{html.escape(title)}</h2>")
            if intro:
                body_html.append(f"<p>{html.escape(intro)}</p>")
            for fig in figs:
                bar.update(task, description=f"drawing {fig.slug}")
                md += [f"### {fig.title}", ""]
                body_html.append(f"<h3>{html.escape(fig.title)}</h3>")
                if fig.draw is not None:
                    f = fig.draw()
                    path = out / f"{fig.slug}.png"
                    f.savefig(path, dpi=110, bbox_inches="tight")
                    plt.close(f)
                    files.append(path)
                    md += [f"![{fig.title}]({path.name})", ""]
                    body_html.append(f'<img src="{html.escape(path.name)}" alt="{html.escape(fig.title)}">')
                md += [fig.caption, ""]
                body_html.append(f"<p>{html.escape(fig.caption)}</p>")
                if fig.table is not None:
                    t = fig.table()
                    md += [t, ""]
                    body_html.append(f"<pre>{html.escape(t)}</pre>")
                bar.advance(task)
        bar.update(task, description="gallery done")
    index_md = out / "index.md"
    index_md.write_text("\n".join(md), encoding="utf-8")
    index_html = out / "index.html"
    index_html.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>gradhealth gallery</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "img{max-width:100%}pre{background:#f6f6f6;padding:.5rem;overflow-x:auto}</style></head><body>"
        "<h1>gradhealth gallery</h1>" + "\n".join(body_html) + "</body></html>", encoding="utf-8")
    return GalleryResult(out, files, index_md, index_html)
