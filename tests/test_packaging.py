"""The package list in pyproject.toml names every subpackage (a missing one installs without it,
and only a fresh-venv install shows it)."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_subpackage_is_listed_in_pyproject():
    text = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    listed = set(re.findall(r'"([a-z_.]+)"', re.search(r"packages = \[(.*?)\]", text).group(1)))
    found = set()
    for top in ("minitx", "minitx_c"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            if "__init__.py" in files and "__pycache__" not in dirpath:
                found.add(os.path.relpath(dirpath, ROOT).replace(os.sep, "."))
    assert found <= listed, f"not in pyproject.toml's packages: {sorted(found - listed)}"
