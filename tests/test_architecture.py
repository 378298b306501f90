"""The package keeps its shape (issue #12): layers, module and function sizes, one owner per file name.

The rules and the drawing live in tools/package_map.py (``.venv/bin/python tools/package_map.py --modules``);
this test runs them, so a change that imports the Spark layer from the library, spells a contract's file name
outside imagenet_spark/layout.py, or grows a function past 80 lines fails here with the rule it broke.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _package_map():  # tools/ is not a package: load the script as a module
    spec = importlib.util.spec_from_file_location("package_map", ROOT / "tools" / "package_map.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["package_map"] = module
    spec.loader.exec_module(module)
    return module


def test_the_package_keeps_its_layers_sizes_and_owners() -> None:
    pm = _package_map()
    modules = pm.scan(ROOT)
    assert "layout" in modules and "jobs" in modules
    broken = pm.violations(modules)
    assert not broken, "\n".join(broken)


def test_the_rules_catch_what_they_name(tmp_path: Path) -> None:
    """The checker itself: an upward import, a spelled file name and a long function are each reported."""
    pm = _package_map()
    pkg = tmp_path / "imagenet_spark"
    (pkg / "data").mkdir(parents=True)
    (pkg / "spark").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "layout.py").write_text('SAVED = "saved_model"\n')
    (pkg / "spark" / "__init__.py").write_text("")
    (pkg / "spark" / "session.py").write_text("def f():\n    return 1\n")
    body = "\n".join(f"    x{i} = {i}" for i in range(pm.MAX_FUNCTION_LINES))
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "bad.py").write_text(
        f'from imagenet_spark.spark.session import f\nNAME = "metrics.json"\n\ndef long():\n{body}\n')
    broken = pm.violations(pm.scan(tmp_path))
    assert any("data.bad imports spark.session" in b for b in broken), broken
    assert any("spells 'metrics.json'" in b for b in broken), broken
    assert any("data.bad.long:" in b for b in broken), broken
    assert not any(b.startswith("layout") for b in broken), broken
