"""The package's layers: imports point one way, and history, the gate and the report load no torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "quantbench"
SHARED = {"errors", "paths", "offline", "environment", "specs", "measure", "registry", "dispatch", "side_by_side",
          "child"}  # what every layer may use
# Each sub-package and the sub-packages it may import. history, gate and report read results only;
# formats (what lies on disk) know no runtime; a runtime opens a format's checkpoint and executes it;
# bench (the plugin side) drives formats, runtimes and kernels, and reads the history's ceilings.
ALLOWED = {
    "history": set(),
    "gate": {"history"},
    "report": {"history", "gate"},
    "formats": set(),
    "runtimes": {"formats"},
    "kernels": {"formats"},
    # a server (measured under load, not opened as a model) loads a format's checkpoint as an engine would
    "servers": {"formats", "runtimes"},
    "bench": {"formats", "runtimes", "kernels", "history", "servers"},
    # a bisection names its case by the registered formats and runtimes, runs the suite, decides with the gate
    "bisect": {"formats", "runtimes", "gate"},
}


def _imported(path: Path) -> set[str]:
    """The quantbench modules a file imports, each named by its first component below quantbench."""
    package = list(path.relative_to(PACKAGE).parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            found.update([parts[0]] if parts else [alias.name for alias in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("quantbench."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("quantbench."))
    return found


@pytest.mark.stack_independent
@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(layer):
    wrong = {}
    for path in sorted((PACKAGE / layer).glob("*.py")):
        bad = _imported(path) - SHARED - ALLOWED[layer] - {layer}
        if bad:
            wrong[path.name] = sorted(bad)
    assert not wrong, f"{layer}/ imports layers it must not: {wrong}"


@pytest.mark.stack_independent
def test_shared_modules_import_no_layer():
    for name in sorted(SHARED):
        assert not (_imported(PACKAGE / f"{name}.py") - SHARED), name


@pytest.mark.stack_independent
def test_history_gate_and_report_import_no_torch():
    code = ("import sys\nimport quantbench.history, quantbench.gate, quantbench.report\n"
            "import quantbench.gate.export, quantbench.report.crossover, quantbench.history.ceilings\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))[:3])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr[-2000:]
