"""engine/ is the product: it never imports the packages that build, train or measure it (only engine/cli.py
dispatches to them), so a serving install needs none of them and their code cannot leak into a stream."""

import ast
from pathlib import Path

import engine

FORBIDDEN = ("export", "train", "rl", "benchmarks")
ROOT = Path(engine.__file__).parent


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_engine_never_imports_export_train_rl_or_benchmarks():
    files = sorted(ROOT.rglob("*.py"))
    assert len(files) > 40  # the whole package was walked
    offenders = {f"{path.relative_to(ROOT.parent)}: {name}" for path in files if path.name != "cli.py" or
                 path.parent != ROOT for name in imported(path) if name.split(".")[0] in FORBIDDEN}
    assert not offenders, f"engine/ must not import {FORBIDDEN}: {sorted(offenders)}"


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from export.runtime import prepare\n    import train.dataset\n")
    assert imported(sample) == {"export.runtime", "train.dataset"}
