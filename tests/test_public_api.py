"""The curated top-level API: lazy, torch-free on import, functions stay functions."""

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_gradhealth_does_not_import_torch():
    proc = _run("import sys, gradhealth, gradhealth.theory; print('torch' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_entry_points_stay_callable_after_submodule_imports():
    proc = _run(
        "import gradhealth\n"
        "from gradhealth.probe import ProbeResult\n"
        "from gradhealth.watch import Watcher\n"
        "import gradhealth.store\n"
        "assert callable(gradhealth.probe) and callable(gradhealth.watch), (gradhealth.probe, gradhealth.watch)\n"
        "assert gradhealth.ProbeResult is ProbeResult and gradhealth.Watcher is Watcher\n"
        "assert callable(gradhealth.remedies.he_) and callable(gradhealth.load_run)\n"
        "print('ok')\n")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_unknown_attribute_is_an_attribute_error():
    import gradhealth

    try:
        gradhealth.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")


def test_every_name_in_all_resolves():
    import gradhealth

    for name in gradhealth.__all__:
        assert getattr(gradhealth, name) is not None, name
