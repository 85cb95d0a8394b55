"""The house's layering, read from the source (no JAX): the library never imports ``launch/``, no
two modules import each other (directly or round a circle), and launchers only import the
library, their shared ``launch.cli`` helper and configs."""

from __future__ import annotations

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("deinforeg_jax", "launch")


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
  _module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")
}


def _imports(path: pathlib.Path, module_level_only: bool) -> set[str]:
  """The project modules ``path`` imports.  ``from package import submodule`` depends on the
  submodule only (the package's ``__init__`` is already being imported, not a circle)."""
  tree = ast.parse(path.read_text())
  nodes = tree.body if module_level_only else list(ast.walk(tree))
  found = set()
  for node in nodes:
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      submodules = {f"{node.module}.{alias.name}" for alias in node.names}
      found.update(submodules & MODULES.keys())
      if not submodules <= MODULES.keys():
        found.add(node.module)
  return found & MODULES.keys()


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, circles = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        circles.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return circles


def test_the_module_list_is_read():
  assert {"deinforeg_jax.train", "deinforeg_jax.run", "launch.train", "launch.cli"} <= MODULES.keys()
  assert "deinforeg_jax.data.loader" in _imports(MODULES["deinforeg_jax.run"], True)


def test_no_import_circle():
  graph = {name: _imports(path, module_level_only=True) for name, path in MODULES.items()}
  assert _circles(graph) == []


def test_a_circle_is_found():
  assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_library_never_imports_launch():
  upward = {
    name: sorted(m for m in _imports(path, module_level_only=False) if m.startswith("launch"))
    for name, path in MODULES.items()
    if name.startswith("deinforeg_jax")
  }
  assert {name: found for name, found in upward.items() if found} == {}


def test_launchers_import_only_the_library_their_helper_and_configs():
  for name, path in MODULES.items():
    if name.startswith("launch.") and not name.startswith("launch.configs"):
      imported = _imports(path, module_level_only=False)
      other = {m for m in imported if m.startswith("launch")} - {"launch", "launch.cli"}
      assert all(m.startswith("launch.configs") for m in other), (name, sorted(other))
