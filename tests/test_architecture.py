"""The dependency direction of the code base: no import cycle, and every module imports only from layers below it.

Imports are read from the source (module level and inside functions alike), so an import hidden in a function to
dodge a cycle is caught too. The layers (a module may import its own layer and those below):

    0  errors, settings                  what every module may raise, and every BIOGPT_* variable
    1  devices, hub, validation, native  devices and dtypes; finding checkpoint files; checks of untrusted input;
                                         our compiled CPU kernels
    2  configuration, tokenization, bpe, cache, outputs, kernels, quantization, catalog
    3  access                            who may load what, download limits, login, uploads
    4  generation, fairseq               decoding on any model object; converting fairseq checkpoints
    5  loading                           from_pretrained / save_pretrained (a mixin: knows no model class)
    6  modeling                          the nn.Modules, with the loading and generation mixins
    7  auto, pipelines, tasks, batching, explain   what runs on a model
    8  serving, annotate                 serving one model to many callers; corpus annotation
    9  manager                           loading, sharing and unloading models for an app
    10 cli                               the `biogpt` command
    20 ui, 30 app                        the Gradio workbench
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYERS = {
    "biogpt.errors": 0, "biogpt.settings": 0,
    "biogpt.devices": 1, "biogpt.hub": 1, "biogpt.validation": 1, "biogpt.native": 1,
    "biogpt.configuration": 2, "biogpt.tokenization": 2, "biogpt.bpe": 2, "biogpt.cache": 2, "biogpt.outputs": 2,
    "biogpt.kernels": 2, "biogpt.quantization": 2, "biogpt.catalog": 2,
    "biogpt.access": 3,
    "biogpt.generation": 4, "biogpt.fairseq": 4,
    "biogpt.loading": 5,
    "biogpt.modeling": 6,
    "biogpt.auto": 7, "biogpt.pipelines": 7, "biogpt.tasks": 7, "biogpt.batching": 7, "biogpt.explain": 7,
    "biogpt.serving": 8, "biogpt.annotate": 8,
    "biogpt.manager": 9,
    "biogpt.cli": 10, "biogpt.__main__": 10,
    "ui": 20, "app": 30,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _internal_imports(path: Path, name: str) -> set[str]:
    """Modules of this project that `path` imports, at any depth of its code."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # `from . import catalog`
    return {m for m in found if m.split(".")[0] in ("biogpt", "ui", "app")}


def _graph() -> dict[str, set[str]]:
    paths = [*(REPO / "biogpt").rglob("*.py"), *(REPO / "ui").rglob("*.py"), REPO / "app.py"]
    modules = {_module_name(path): path for path in paths}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _internal_imports(path, name):
            # the longest known module that `imported` names (`biogpt.tasks.classify.classify` -> the module)
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                targets.add(imported)
        graph[name] = targets
    return graph


def _layer(module: str) -> int:
    while module:
        if module in LAYERS:
            return LAYERS[module]
        module = module.rpartition(".")[0]
    raise AssertionError(f"{module!r} has no layer in tests/test_architecture.py: add it to LAYERS")


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for module, targets in _graph().items():
        if module in ("biogpt", "ui"):  # the packages' own __init__: biogpt's is lazy re-exports only
            continue
        for target in targets:
            if target not in ("biogpt", "ui") and _layer(target) > _layer(module):
                wrong.append(f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_library_never_imports_the_app_or_gradio() -> None:
    for path in (REPO / "biogpt").rglob("*.py"):
        imported = _internal_imports(path, _module_name(path))
        source = path.read_text(encoding="utf-8")
        assert not any(m.split(".")[0] in ("ui", "app") for m in imported), path
        assert "import gradio" not in source and "from gradio" not in source, path
