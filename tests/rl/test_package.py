import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_engine_never_imports_rl():
    """DESIGN: engine/ runs without rl/ (only engine/cli.py may dispatch to it)."""
    offenders = []
    for path in (ROOT / "engine").rglob("*.py"):
        if path.name == "cli.py" and path.parent.name == "engine":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n == "rl" or n.startswith("rl.")]
    assert not offenders, offenders


def test_the_default_reward_config_ships_with_the_package():
    from rl.configs import DEFAULT_REWARD

    assert DEFAULT_REWARD.is_file()
