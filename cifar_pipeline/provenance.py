"""What produced a result: the code that ran (found from the imports) and the package versions."""

from __future__ import annotations

import ast
import hashlib
import platform
import threading
from functools import cache
from importlib import metadata
from pathlib import Path

PACKAGE = "cifar_pipeline"
PACKAGE_DIR = Path(__file__).resolve().parent

# Modules that decide no result of their own: configuration enters every key by value, and the
# rest name folders, write files atomically or carry errors. Keeping them out means that adding a
# config field or a layout folder does not retrain every cached model.
NEUTRAL = frozenset({"config", "errors", "files", "layout", "provenance", "stage", "access"})
# ast.parse from two threads at once can fail in CPython 3.11 ("AST constructor recursion depth
# mismatch"), and Prefect computes cache keys in its task threads.
_PARSING = threading.Lock()


def _module_file(name: str) -> Path | None:
    """The source file of a cifar_pipeline module ("data.dataset"), or None when it is not one."""
    path = PACKAGE_DIR.joinpath(*name.split(".")) if name else PACKAGE_DIR
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _name_of(file: Path) -> str:
    rel = file.relative_to(PACKAGE_DIR).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


@cache
def _imported(file: Path) -> set[str]:
    """The cifar_pipeline modules `file` imports anywhere in its text (function-level imports too)."""
    here = _name_of(file).split(".") if _name_of(file) else []
    package = here if file.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            bases = [alias.name for alias in node.names]
            names: list[str] = []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
                bases = [PACKAGE + ("." + base if base else "")]
            else:
                bases = [node.module or ""]
            names = [alias.name for alias in node.names]
        else:
            continue
        for base in bases:
            if base != PACKAGE and not base.startswith(PACKAGE + "."):
                continue
            inner = base.removeprefix(PACKAGE).lstrip(".")
            found.add(inner)
            # `from ..data import augment` imports a module, not a name.
            found.update(f"{inner}.{n}".lstrip(".") for n in names if _module_file(f"{inner}.{n}".lstrip(".")))
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:`: an import made only for annotations runs no code."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


@cache
def code_files(module: str) -> tuple[str, ...]:
    """The source files a module runs: itself and every cifar_pipeline module it imports, transitively
    (less NEUTRAL), as paths relative to the package. `module` is dotted, e.g. "data.dataset"."""
    with _PARSING:
        return _code_files(module)


def _code_files(module: str) -> tuple[str, ...]:
    seen: set[str] = set()
    todo = [module.removeprefix(PACKAGE).lstrip(".")]
    while todo:
        name = todo.pop()
        if name in seen or name in NEUTRAL:
            continue
        file = _module_file(name)
        if file is None:
            raise ValueError(f"{PACKAGE}.{name} is not a module of this package")
        seen.add(name)
        # A package's __init__ runs whenever one of its modules is imported.
        parent = name.rpartition(".")[0]
        if parent and _module_file(parent) is not None:
            todo.append(parent)
        todo.extend(_imported(file))
    files = {_module_file(name) for name in seen}
    return tuple(sorted(f.relative_to(PACKAGE_DIR).as_posix() for f in files if f is not None))


@cache
def code_digest(module: str) -> str:
    """A digest of the source a module runs (code_files): any edit there changes it, nothing else does."""
    h = hashlib.sha256()
    for rel in code_files(module):
        h.update(rel.encode())
        h.update((PACKAGE_DIR / rel).read_bytes())
    return h.hexdigest()[:16]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("cifar-pipeline", "torch", "torchvision", "prefect", "numpy", "pandas", "pydantic"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
