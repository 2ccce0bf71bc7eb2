"""The package's shape: no import cycle anywhere in app/, and the declared layer contracts hold."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent


def test_no_module_of_app_imports_itself_back():
    graph = grimp.build_graph("app")
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain is not None:
                cycles.append(" -> ".join((module, *chain)))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_layer_contracts_hold():
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    assert "broken" in done.stdout and "0 broken" in done.stdout


def test_engines_and_runners_are_not_probed_for_what_they_can_do():
    """What the scheduler and the service need is declared (app/engine/base.py), never guessed with getattr."""
    probe = re.compile(r"(getattr|hasattr)\(\s*(self\.)?_?(engine|runner|batching)\b")
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "app").rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if probe.search(line)
    ]
    assert not found, "\n".join(found)
