"""One version source: ``gradhealth.__version__`` and ``gradhealth --version`` are the installed
distribution's version (pyproject.toml), and an uninstalled source tree says ``0+unknown``.

Oracle: ``importlib.metadata.version("gradhealth")``, read by the test itself.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gradhealth

SRC = Path(gradhealth.__file__).resolve().parents[1]


def test_version_is_the_installed_distributions():
    want = importlib.metadata.version("gradhealth")
    assert gradhealth.__version__ == want
    from gradhealth import __version__

    assert __version__ == want


def test_cli_prints_the_version():
    want = importlib.metadata.version("gradhealth")
    script = shutil.which("gradhealth", path=os.path.dirname(sys.executable))
    cmd = [script] if script else [sys.executable, "-m", "gradhealth"]
    proc = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"gradhealth {want}"


def test_uninstalled_source_tree_says_unknown():
    # the package imported from its source folder while the distribution metadata is missing
    code = ("import importlib.metadata as md\n"
            "def missing(name):\n"
            "    raise md.PackageNotFoundError(name)\n"
            "md.version = missing\n"
            "import gradhealth, sys\n"
            "print(gradhealth.__version__, 'torch' in sys.modules)\n")
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0+unknown", "False"]
