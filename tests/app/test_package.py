"""The package's shape: one import package `sessiontap` from addons/ and reports/, and imports pointing one way."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
DEMO_CODE = ("sessiontap.simulator", "sessiontap.samples")


def package_dirs() -> dict[str, Path]:
    """Every import package of the wheel and the folder it comes from (pyproject's package-dir mapping)."""
    out = {}
    for top, folder in PYPROJECT["package-dir"].items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            out[".".join((top, *rel))] = init.parent
    return out


def imports(path: Path) -> list[str]:
    """The modules a file imports, absolute names only."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def test_every_package_folder_is_listed_once_under_sessiontap():
    assert sorted(PYPROJECT["packages"]) == sorted(package_dirs())
    assert all(name.split(".")[0] == "sessiontap" for name in PYPROJECT["packages"])


def test_code_imports_sessiontap_never_the_folder_names():
    for path in [*ROOT.joinpath("addons").rglob("*.py"), *ROOT.joinpath("reports").rglob("*.py")]:
        bad = [m for m in imports(path) if m.split(".")[0] in ("addons", "reports")]
        assert not bad, f"{path}: imports {bad} (use sessiontap.*)"


def test_no_product_module_imports_the_simulator_or_the_samples():
    product = [p for p in ROOT.joinpath("addons").rglob("*.py")
               if not {"simulator", "samples"} & set(p.relative_to(ROOT).parts)]
    for path in product:
        found = [m for m in imports(path) if m.startswith(DEMO_CODE)]
        if path.relative_to(ROOT).as_posix() in ("addons/app/cli.py", "addons/probe/tap.py"):
            continue  # `demo`, `simulate`, and the default upstream of client replay, probe and the pytest fixture
        assert not found, f"{path}: imports {found}"


def test_the_core_imports_no_mitmproxy_click_or_jinja2():
    code = ("import sys, pkgutil, importlib, sessiontap.core as core\n"
            "for m in pkgutil.iter_modules(core.__path__): importlib.import_module('sessiontap.core.' + m.name)\n"
            "print(sorted(n for n in ('mitmproxy', 'click', 'jinja2', 'aiohttp') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_python_dash_m_sessiontap_is_the_command_line(tmp_path: Path):
    out = subprocess.run([sys.executable, "-m", "sessiontap", "--help"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0 and "Usage: sessiontap" in out.stdout and "addon-path" in out.stdout
