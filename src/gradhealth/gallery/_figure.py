"""One entry of the gallery (what a section's ``figures()`` returns)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Figure"]


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
