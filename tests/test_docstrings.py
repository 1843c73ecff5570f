"""Every public function and class of every public gradhealth module has a docstring at runtime.

A docstring built with ``+`` (``\"\"\"...\"\"\" + _COMMON_ARGS``) is an expression, not a
docstring: ``__doc__`` is ``None`` and ``help()`` shows nothing (issue 8 found he_, xavier_,
orthogonal_ and critical_ that way). The public surface of a module is its ``__all__``; a
module without one exposes its top-level functions and classes whose names do not start
with ``_``. Modules whose path has a component starting with ``_`` are private and skipped.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import gradhealth

# (module, name) -> why it is skipped for now. Keep this list short and say who fixes it.
_REPORT_HELPER = ("new in the report work (cli/report.py, cli/top.py) that another helper owns and is "
                  "still changing; that helper adds the docstrings, then these entries go")
SKIPPED: dict[tuple[str, str], str] = {
    ("gradhealth.cli.report", "add_arguments"): _REPORT_HELPER,
    ("gradhealth.cli.report", "run"): _REPORT_HELPER,
    ("gradhealth.cli.top", "add_arguments"): _REPORT_HELPER,
    ("gradhealth.cli.top", "run"): _REPORT_HELPER,
}


def _public_modules() -> list[str]:
    names = ["gradhealth"]
    for info in pkgutil.walk_packages(gradhealth.__path__, "gradhealth."):
        parts = info.name.split(".")[1:]
        if any(p.startswith("_") for p in parts):  # private modules and __main__
            continue
        names.append(info.name)
    return sorted(names)


def _auto_dataclass_doc(obj) -> bool:
    """True when ``__doc__`` is the signature ``dataclasses`` writes for a class without one."""
    try:
        sig = str(inspect.signature(obj)).replace(" -> None", "")
    except (TypeError, ValueError):
        return False
    return obj.__doc__ == obj.__name__ + sig


def _public_objects(mod) -> list[tuple[str, object]]:
    if hasattr(mod, "__all__"):
        names = list(mod.__all__)
    else:
        names = [n for n, v in vars(mod).items()
                 if not n.startswith("_") and (inspect.isfunction(v) or inspect.isclass(v))
                 and getattr(v, "__module__", None) == mod.__name__]
    out = []
    for n in names:
        v = getattr(mod, n)
        if inspect.isfunction(v) or inspect.isclass(v) or inspect.isbuiltin(v):
            out.append((n, v))
    return out


def _missing(modname: str) -> list[str]:
    mod = importlib.import_module(modname)
    bad = []
    for name, obj in _public_objects(mod):
        if (modname, name) in SKIPPED:
            continue
        doc = obj.__doc__
        if not (isinstance(doc, str) and doc.strip()) or (inspect.isclass(obj) and _auto_dataclass_doc(obj)):
            bad.append(name)
    return bad


@pytest.mark.parametrize("modname", _public_modules())
def test_public_objects_have_docstrings(modname):
    assert _missing(modname) == [], f"{modname}: public names without a docstring at runtime"


def test_the_walk_sees_the_remedies_that_had_none():
    """The oracle is not vacuous: the four initialisers issue 8 named are checked, and a
    function whose docstring is built with ``+`` is caught."""
    from gradhealth import remedies

    checked = {n for n, _ in _public_objects(remedies)}
    assert {"he_", "xavier_", "orthogonal_", "critical_"} <= checked
    assert "gradhealth.remedies" in _public_modules()

    def concatenated():
        """A docstring """ + "built with +"  # noqa: B018 - the bug this test exists for

    assert concatenated.__doc__ is None


def test_skips_are_still_needed():
    """A skipped name that has gained a docstring must leave the list."""
    fixed = []
    for (modname, name) in SKIPPED:
        obj = getattr(importlib.import_module(modname), name)
        if isinstance(obj.__doc__, str) and obj.__doc__.strip():
            fixed.append((modname, name))
    assert fixed == [], "remove these from SKIPPED"
