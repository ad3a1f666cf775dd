"""The house's rooms: orchestrator/ is six subpackages whose imports run one way, only the CLI parses the command
line, and the core imports none of the orchestration's stack. Read from the source with `ast`, lazy imports
(inside functions) included."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("runtime", "tracking", "retrain", "search", "analysis", "cli")  # each may import only those before it


def imported_modules(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            package = path.relative_to(ROOT).parent.parts  # a relative import, resolved from the file's package
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            found += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return found


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "orchestrator" and parts[1] in ROOMS else None


def test_orchestrator_holds_rooms_and_at_most_two_files_of_its_own():
    own = sorted(p.name for p in (ROOT / "orchestrator").glob("*.py"))
    assert len(own) <= 2, own
    assert {p.name for p in (ROOT / "orchestrator").iterdir() if (p / "__init__.py").exists()} == set(ROOMS)


def test_imports_between_rooms_run_one_way():
    upward = []
    for room in ROOMS:
        for path in (ROOT / "orchestrator" / room).rglob("*.py"):
            for module in imported_modules(path):
                other = room_of(module)
                if other is not None and ROOMS.index(other) > ROOMS.index(room):
                    upward.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not upward, upward


def test_the_verbs_dispatched_by_name_are_cli_modules():
    """The CLI imports each verb's module by name when it runs: every handler names a function of orchestrator/cli/."""
    import importlib

    from orchestrator.cli.main import build_parser
    parser = build_parser()
    verbs = next(a for a in parser._actions if a.dest == "verb").choices  # argparse's own table of sub-parsers
    for verb, sub in verbs.items():
        module, _, name = sub.get_default("handler").partition(":")
        assert callable(getattr(importlib.import_module(f"orchestrator.cli.{module}"), name)), verb


def test_only_the_cli_parses_the_command_line():
    readers = [str(path.relative_to(ROOT)) for folder in ("orchestrator", "search_space", "workers", "storage")
               for path in (ROOT / folder).rglob("*.py")
               if "argparse" in imported_modules(path) and not path.is_relative_to(ROOT / "orchestrator" / "cli")]
    assert not readers, readers


def test_the_core_imports_no_orchestration_stack():
    stack = ("ray", "mlflow", "boto3", "orchestrator", "optuna")
    found = [f"{path.relative_to(ROOT)}: {module}" for folder in ("search_space", "workers")
             for path in (ROOT / folder).rglob("*.py") for module in imported_modules(path)
             if module.split(".")[0] in stack]
    assert not found, found
