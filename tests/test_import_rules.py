"""The layering of docs/ARCHITECTURE.md, enforced: no module imports a layer above its own
or another module's private names. Read from the source (ast), so lazy imports count too."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lowest first; a module may import its own layer and those below it. A module is placed by
# its longest matching prefix.
LAYERS = [
    ("kernels",),
    ("mmalign", "mmalign.retrieval", "mmalign.errors", "mmalign.registry", "mmalign.utils", "mmalign.workdir", "mmalign.plots",
     "mmalign.settings", "mmalign.mesh"),
    ("mmalign.data", "mmalign.models", "mmalign.losses", "mmalign.checkpoints", "mmalign.matching", "mmalign.alignment",
     "mmalign.retrieval.vectors", "mmalign.retrieval.manifest", "mmalign.retrieval.base",
     "mmalign.retrieval.scann_index", "mmalign.retrieval.exact_index",
     "mmalign.retrieval.searchers", "mmalign.retrieval.contact_sheet", "mmalign.retrieval.sharded",
     "mmalign.eval.retrieval_metrics", "mmalign.eval.metrics"),
    ("mmalign.retrieval.tuning", "mmalign.tasks.probe", "mmalign.tasks.zero_shot",
     "mmalign.tasks.annotation", "mmalign.tasks.shapes_tasks", "mmalign.tasks"),
    ("mmalign.experiment",),
    ("mmalign.train",),
    ("mmalign.eval", "mmalign.retrieval.search", "mmalign.retrieval.cli"),
    ("mmalign.run",),
    ("launch", "experiments", "benchmarks"),
]
# Where the settings module's lazy registry look-ups go: names only, resolved at check time.
ALLOWED_UPWARD = {("mmalign.settings", "mmalign.data.sources"),
                  ("mmalign.settings", "mmalign.data.sampling"),
                  ("mmalign.settings", "mmalign.models.build"),
                  ("mmalign.settings", "mmalign.losses.objective"),
                  ("mmalign.settings", "mmalign.retrieval.searchers"),
                  ("mmalign.settings", "mmalign.eval.evaluators"),
                  ("mmalign.settings", "mmalign.checkpoints.importers")}


def _layer(module: str) -> int | None:
  best, found = -1, None
  for index, prefixes in enumerate(LAYERS):
    for prefix in prefixes:
      if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
        best, found = len(prefix), index
  return found


def _modules():
  for base in ("mmalign", "kernels"):
    for directory, _, files in os.walk(os.path.join(ROOT, base)):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(directory, name)
          module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
          yield module.removesuffix(".__init__"), path


def _imports(path: str):
  """(imported module, imported name or None) for every import statement of the file."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, None
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:
        yield node.module, alias.name


def _project(name: str) -> bool:
  return name.split(".")[0] in ("mmalign", "kernels", "experiments", "benchmarks", "launch")


def _target(module: str, name: str | None) -> str:
  """`from mmalign import experiment` imports the module mmalign.experiment."""
  if name and _layer(f"{module}.{name}") is not None and (
      os.path.exists(os.path.join(ROOT, *f"{module}.{name}".split(".")) + ".py")
      or os.path.isdir(os.path.join(ROOT, *f"{module}.{name}".split(".")))):
    return f"{module}.{name}"
  return module


def test_every_module_has_a_layer():
  missing = [m for m, _ in _modules() if _layer(m) is None]
  assert not missing


def test_kernels_import_nothing_of_mmalign():
  offenders = [(m, t) for m, path in _modules() if m.startswith("kernels")
               for t, _ in _imports(path) if t.split(".")[0] == "mmalign"]
  assert not offenders


def test_no_module_imports_a_layer_above_its_own():
  offenders = []
  for module, path in _modules():
    for imported, name in _imports(path):
      if not _project(imported):
        continue
      target = _target(imported, name)
      if target.split(".")[0] in ("experiments", "benchmarks", "launch"):
        offenders.append((module, target))
        continue
      if (module, target) in ALLOWED_UPWARD or target.startswith(module + "."):
        continue
      if _layer(target) > _layer(module):
        offenders.append((module, target))
  assert not offenders, "\n".join(f"{m} imports {t}" for m, t in offenders)


@pytest.mark.parametrize("lower", ["mmalign.models", "mmalign.losses"])
def test_models_and_losses_do_not_import_train(lower):
  offenders = [(m, t) for m, path in _modules() if m.startswith(lower)
               for t, n in _imports(path) if _target(t, n).startswith("mmalign.train")]
  assert not offenders


def test_no_module_imports_another_modules_private_names():
  offenders = [(m, t, n) for m, path in _modules() for t, n in _imports(path)
               if _project(t) and n and n.startswith("_") and n != "__version__"]
  assert not offenders
