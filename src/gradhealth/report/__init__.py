"""Turning measurements into something a person looks at: terminal tables, plots, HTML.

Measuring is separate from showing: these modules read a :class:`~gradhealth.probe.ProbeResult`
or a stored run, never live model state. :class:`Report` is the one object for a person:
``Report.from_run(run_dir)`` / ``Report.from_probe(result)``, then ``.to_html(path)``,
``rich.print(report)`` or a notebook cell.
"""

from __future__ import annotations

__all__ = ["Report", "write_demo_report", "visible"]


def __getattr__(name):
    # lazy: importing gradhealth.report (e.g. for run_view in the CLI) stays free of jinja2
    if name in __all__:
        from . import html

        return getattr(html, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
