"""Old import paths of moved modules and names, kept working for one release with a `DeprecationWarning`.

An old package's `__init__` calls `alias_package(globals(), modules, names)`:
- `modules` {old submodule name: new module path}: `import old.sub` (and a YAML class path
  `old.sub.Class`) gives the new module object itself, so classes, `isinstance` checks and pickles agree;
- `names` {attribute: new package path}: `old.Name` (and `from old import Name`) gives `new.Name`.
The first use of each warns, naming the new path.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated and will be removed in the next release: use {new}",
                  DeprecationWarning, stacklevel=3)


class _ModuleAliases(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `old.sub` and loads it as the already-importable module `new.sub` (no second copy)."""

    def __init__(self, targets: dict[str, str]):
        self.targets = targets  # full old name -> full new name
        self._specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def find_spec(self, fullname, path=None, target=None):
        return importlib.machinery.ModuleSpec(fullname, self) if fullname in self.targets else None

    def create_module(self, spec):
        _warn(spec.name, self.targets[spec.name])
        module = importlib.import_module(self.targets[spec.name])
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        # the import system set module.__spec__ to the alias spec; the module keeps its own
        module.__spec__ = self._specs.pop(module.__spec__.name)


def alias_package(namespace: dict, modules: dict[str, str], names: dict[str, str]):
    """Make the package whose globals are `namespace` an alias; returns its module `__getattr__`."""
    package = namespace["__name__"]
    targets = {f"{package}.{old}": new for old, new in modules.items()}
    if not any(isinstance(f, _ModuleAliases) and f.targets == targets for f in sys.meta_path):
        sys.meta_path.append(_ModuleAliases(targets))

    def __getattr__(name):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        _warn(f"{package}.{name}", f"{names[name]}.{name}")
        namespace[name] = value = getattr(importlib.import_module(names[name]), name)  # warn once
        return value

    return __getattr__
