"""Issue 13, item 4: each part imports only what it needs, checked in fresh interpreters.

The core and tracking never import Horovod or a framework; the CLI imports a subcommand's
dependencies only when that subcommand runs; ``hvdtrain run`` and the horovodrun it starts never
import TensorFlow (or torch); an example run with ``--no-tracking`` never imports MLflow.
How fast ``hvdtrain --help`` answers is measured with farm-bench (docs/cli.md), not here.

Issue 23, item 3: the package's layers, read from the source (every import statement, those
inside functions too): no module outside ``cli`` imports ``cli``, no import cycle, no package
imports one of a layer above it.
"""

import ast
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import hvdtrain.core
import hvdtrain.tracking
from tests.launch import REPO

FRAMEWORKS = ("horovod", "torch", "tensorflow", "keras")
# hvdtrain's packages and top-level modules, lowest layer first: each imports only from its own
# and from lower layers (and none from another of its own layer).
LAYERS = (
    ("core",),  # framework-free policy, the contracts (tracker, errors)
    ("tracking", "cudastack"),  # MLflow; the CUDA stack's facts
    ("launch", "elastic"),  # starting and watching workers; Horovod's elastic state
    ("torch", "keras", "spark"),  # the adapters; training on Spark
    ("datasets",),  # the examples' data (digits may come from Spark)
    ("models",),  # the models the examples and the benchmark share
    ("bench",),  # the benchmark
    ("cli", "demo"),  # the command and the demo
    ("__main__",),  # python -m hvdtrain
)


def imported_after(code: str, watched: tuple[str, ...], **kwargs) -> dict:
    """Run ``code`` in a fresh interpreter;
    it sets ``found`` (a dict), printed as JSON at the end."""
    report = "\nimport json, sys\nprint(json.dumps(found))"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", f"WATCHED = {watched!r}\n{code}{report}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        **kwargs,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_core_and_tracking_modules_import_no_horovod_or_framework():
    modules = [
        f"{package.__name__}.{m.name}"
        for package in (hvdtrain.core, hvdtrain.tracking)
        for m in pkgutil.iter_modules(package.__path__)
    ]
    assert "hvdtrain.core.elastic" in modules and "hvdtrain.tracking.sync" in modules
    code = (
        "import importlib, sys\nfound = {}\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "    found[name] = [w for w in WATCHED if w in sys.modules]\n"
    )
    found = imported_after(code, FRAMEWORKS)
    assert {name: pulled for name, pulled in found.items() if pulled} == {}


def test_the_cli_imports_no_tracking_plotting_or_framework():
    code = (
        "import sys\nimport hvdtrain.cli\n"
        "found = {'pulled': [w for w in WATCHED if w in sys.modules]}"
    )
    assert imported_after(code, ("mlflow", "matplotlib", *FRAMEWORKS))["pulled"] == []


@pytest.mark.slow
def test_the_launcher_and_its_horovodrun_never_import_tensorflow_or_torch(tmp_path):
    """Every process the launcher starts reports its imports (``PYTHONPROFILEIMPORTTIME``): the
    launcher's, horovodrun's and the one worker's (a script that imports nothing), unprefixed."""
    script = tmp_path / "hello.py"
    script.write_text("print('hello')\n")
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "hvdtrain"), "run", "-np", "1", str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("hello\n"), proc.stderr[-3000:]
    own = [
        line.rsplit("|", 1)[-1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    ]
    assert "horovod.runner.launch" in own  # horovodrun's imports are here too
    assert [name for name in own if name.split(".")[0] in ("tensorflow", "torch", "keras")] == []


EXAMPLES = {
    "torch": [
        ("torch_examples/digits.py", ["--epochs", "1", "--train-samples", "50"]),
        (
            "torch_examples/gpt.py",
            [
                "--epochs",
                "1",
                "--max-bytes",
                "40000",
                "--val-bytes",
                "4000",
                "--windows",
                "64",
                "--block",
                "16",
                "--d-model",
                "16",
                "--layers",
                "1",
                "--heads",
                "2",
                "--sample-bytes",
                "4",
            ],
        ),
        (
            "torch_examples/token_tagging.py",
            [
                "--epochs",
                "1",
                "--files",
                "6",
                "--train-lines",
                "200",
                "--heldout-lines",
                "50",
                "--dim",
                "16",
                "--layers",
                "1",
            ],
        ),
    ],
}
EXAMPLES["keras"] = [
    (path.replace("torch_examples", "tf_examples"), args) for path, args in EXAMPLES["torch"]
]


@pytest.mark.slow
@pytest.mark.parametrize("framework", sorted(EXAMPLES))
def test_examples_without_tracking_never_import_mlflow(tmp_path, framework):
    """Each example with a tiny budget, one after the other in one fresh single-worker process."""
    runs = [(str(REPO / path), [*args, "--no-tracking"]) for path, args in EXAMPLES[framework]]
    code = (
        "import runpy, sys\nfound = {}\n"
        f"for path, args in {runs!r}:\n"
        "    sys.argv = [path, *args]\n"
        "    runpy.run_path(path, run_name='__main__')\n"
        "    found[path] = [w for w in WATCHED if w in sys.modules]\n"
    )
    found = imported_after(code, ("mlflow",), cwd=tmp_path)
    assert found == {path: [] for path, _ in runs}


def import_graph() -> dict[str, set[str]]:
    """Module -> the hvdtrain modules it imports (at any depth of its code), from the source."""
    files = {}
    for path in (REPO / "hvdtrain").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def module_of(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(module_of(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                found.update(module_of(f"{base}.{alias.name}") for alias in node.names)
        graph[module] = {name for name in found if name and name != module}
    return graph


def unit(module: str) -> str:
    """The package (or top-level module) of hvdtrain that ``module`` belongs to."""
    return (module.split(".") + ["__init__"])[1]


def test_no_module_outside_cli_imports_cli():
    graph = import_graph()
    assert "hvdtrain.launch.job" in graph and "hvdtrain.cli.run" in graph
    assert {
        module: sorted(name for name in imported if unit(name) == "cli")
        for module, imported in graph.items()
        if unit(module) not in ("cli", "__main__") and any(unit(name) == "cli" for name in imported)
    } == {}


def test_no_import_cycle():
    graph = import_graph()
    done: set[str] = set()
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append(path[path.index(module) :] + [module])
            return
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert cycles == []


def test_no_package_imports_a_layer_above_it():
    layer = {name: number for number, names in enumerate(LAYERS) for name in names}
    graph = import_graph()
    units = {unit(module) for module in graph} - {"__init__"}
    assert units == set(layer)  # a new package gets its place here
    upward = sorted(
        f"{module} imports {name}"
        for module, imported in graph.items()
        for name in imported
        if unit(module) != unit(name)
        and unit(name) != "__init__"
        and layer[unit(name)] >= layer[unit(module)]
    )
    assert upward == []
