"""The project's layering: no import cycle, the config at the bottom, the envs under metarl's name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Module name -> source file, for every module of the project (envs/ installs as metarl.envs).
PACKAGES = {"metarl": ROOT / "metarl", "metarl.envs": ROOT / "envs"}


def project_modules() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            if package == "metarl" and path.is_relative_to(ROOT / "metarl" / "envs"):
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def _type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``module`` imports at run time: at the top, inside functions (lazy imports
    count: they cycle just the same when called), but not under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_block(node):
            return
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            # `from a import b`: the module a.b if there is one, else a (b is a name in it).
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for name in names:
            # `import a.b.c` imports a, a.b and a.b.c; keep the deepest project module named.
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def test_the_project_has_no_import_cycle():
    graph = import_graph()
    assert "metarl.run.loop" in graph and "metarl.envs.locomotion" in graph  # the walk found the project
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_config_is_the_bottom_layer():
    graph = import_graph()
    assert graph["metarl.config"] == set()
    assert graph["metarl.run.rundir"] <= {"metarl.config", "metarl.checkpoint"}


def test_tools_use_the_factory_and_the_run_directory_never_the_loop():
    graph = import_graph()

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    for tool in ("metarl.render", "metarl.bench", "metarl.baselines", "metarl.run.evaluation"):
        assert "metarl.run.loop" not in reaches(tool), tool
        assert "metarl.train" not in reaches(tool), tool
    # The sweep only starts `metarl train` processes, and the report only reads run directories.
    for tool in ("metarl.sweep", "metarl.report", "metarl.stats"):
        assert not reaches(tool) & {"metarl.run.loop", "metarl.train", "metarl.maml", "metarl.sampler"}, tool


def test_choices_in_the_config_match_their_implementations():
    from metarl import config as cfg
    from metarl.maml import INNER_LOSSES
    from metarl.policy import NONLINEARITIES

    assert tuple(INNER_LOSSES) == cfg.INNER_LOSSES
    assert tuple(NONLINEARITIES) == cfg.NONLINEARITIES


def test_a_users_own_envs_package_does_not_shadow_metarls(tmp_path):
    """From a directory with its own ``envs`` package, metarl's families still register and a
    user's ``envs.my_tasks`` module imports."""
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "__init__.py").write_text("")
    (tmp_path / "envs" / "my_tasks.py").write_text("MARK = 'users'\n")
    code = (
        "import sys; sys.path.insert(0, '.')\n"
        "import envs.my_tasks, metarl, gymnasium as gym\n"
        "assert envs.my_tasks.MARK == 'users'\n"
        "assert 'metarl/Navigation2D-v0' in gym.registry\n"
        "import metarl.envs; assert metarl.envs.__name__ == 'metarl.envs'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "metarl.cli", "envs", "--import", "envs.my_tasks"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "metarl/HalfCheetahVel-v0" in proc.stdout


def test_no_top_level_envs_module_is_installed(tmp_path):
    """metarl installs ``metarl`` and ``metarl.envs``, no ``envs`` a user's package could collide with."""
    code = "import importlib.util, sys; print(importlib.util.find_spec('envs'))"
    proc = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None"


def test_every_package_folder_is_installed():
    """pyproject.toml lists the packages by hand (envs/ maps to metarl.envs): a new subpackage that
    is not listed would be missing from a wheel, though an editable install still finds it."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {name for name, path in project_modules().items() if path.name == "__init__.py"}
    assert listed == found
