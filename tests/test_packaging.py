"""The distribution installs one import name, ``keygate``, and nothing else top-level."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"keygate.gateway": "gateway", "keygate.admin": "admin", "keygate.config": "config"}


def _pyproject() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed() -> None:
    tool = _pyproject()["tool"]["setuptools"]
    listed = set(tool["packages"])
    found = {"keygate"}
    for name, folder in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert listed == found
    assert tool["package-dir"] == {"keygate": "src/keygate", **FOLDERS}


def test_no_module_imports_a_bare_folder_name() -> None:
    # Every module imported in a fresh interpreter: none may load gateway.*,
    # admin.* or config.* under the bare folder name (a second copy of it).
    code = (
        "import pkgutil, sys, keygate\n"
        "for m in pkgutil.walk_packages(keygate.__path__, 'keygate.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        __import__(m.name)\n"
        f"bare = [n for n in sys.modules if n.split('.')[0] in {sorted(FOLDERS.values())!r}]\n"
        "print(len(sys.modules)); assert not bare, bare\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_distribution_has_one_top_level_name() -> None:
    top = metadata.distribution("keygate").read_text("top_level.txt")
    assert top is not None and top.split() == ["keygate"]


def test_console_script_and_module_entry_point() -> None:
    scripts = _pyproject()["project"]["scripts"]
    assert scripts == {"keygate": "keygate.gateway.cli:main"}
    assert (ROOT / "src" / "keygate" / "__main__.py").is_file()


def test_console_files_are_package_data_and_served() -> None:
    # Every file of the console ships (package-data globs) and is on the allow-list.
    from keygate.admin.handlers.console import ASSETS, CONSOLE_DIR, INDEX

    globs = _pyproject()["tool"]["setuptools"]["package-data"]["keygate.admin"]
    files = {p.name for p in (ROOT / "admin" / "console").iterdir() if p.is_file()}
    assert files == {INDEX, *ASSETS}
    for name in files:
        assert any(Path("console", name).match(glob) for glob in globs), name
    assert CONSOLE_DIR.is_dir()
