"""Light modules stay light: importing them does not drag in the models, timm or faiss."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["dva.metrics", "dva.config"])
def test_light_modules_do_not_import_timm_or_faiss(module):
    # A fresh interpreter: this test process has long imported everything.
    heavy = ("timm", "faiss", "dva.models", "dva.index")
    code = f"import sys, {module}; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_the_package_still_offers_its_api():
    code = "import dva; print(dva.__version__, dva.Run.__name__, dva.create_model.__name__, dva.metrics.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    from dva._version import __version__

    assert out.stdout.split() == [__version__, "Run", "create_model", "dva.metrics"]
