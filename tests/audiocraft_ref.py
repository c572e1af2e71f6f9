"""audiocraft 1.3.0's own source as a test-time reference, imported without its heavy dependencies.

audiocraft is installed with `--no-deps` (plus the small pure-Python packages its tested paths
run: einops, flashy, dora-search). Its package `__init__`s still import hydra, spacy, xformers,
av, torchaudio, demucs, ... at module level; `import_audiocraft` puts a stub in `sys.modules` for
every such package that is missing, imports the requested audiocraft modules, and takes the stubs
out again. A stub satisfies `import x`, `from x import y` and class definitions; *using* one (a
call or an instantiation that is then used; decorating at import time is allowed) raises
`StubUsed`, so a test whose path touches a stubbed dependency fails
loudly instead of comparing against something that is not audiocraft.

The one exception is `substitutes`: a caller may hand in real implementations for a few names
of a missing package (e.g. torchaudio's Spectrogram, whose wheels do not load against this
torch); the test that does so says so.

    msstftd, balancer = import_audiocraft("audiocraft.adversarial.discriminators.msstftd",
                                          "audiocraft.losses.balancer")
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest

SUBSTITUTES: dict[str, object] = {}  # dotted name inside a missing package -> real object (see import_audiocraft)


class StubUsed(RuntimeError):
    """A stubbed dependency was used by the code under test."""


class _StubMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stub_class(f"{cls.__qualname__}.{name}")

    def __call__(cls, *args, **kwargs):
        return _call_stub(cls.__qualname__, args, kwargs)

    def __getitem__(cls, item):  # typing-style subscripts at import time (tp.Optional[stub.X])
        return cls


def _is_decoratee(args, kwargs) -> bool:
    return len(args) == 1 and not kwargs and (isinstance(args[0], type) or isinstance(args[0], types.FunctionType))


def _call_stub(name: str, args, kwargs):
    """Decorating at import time (`@stub` or `@stub(...)`) leaves the function as it is; any other
    use raises StubUsed, now or when the returned placeholder is used."""
    if _is_decoratee(args, kwargs):
        return args[0]
    return _Deferred(name)


class _Deferred:
    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)

    def __call__(self, *args, **kwargs):
        if _is_decoratee(args, kwargs):
            return args[0]
        raise StubUsed(f"{self._name}(...) is a stub (its package is not installed): the tested path uses it")

    def __getattr__(self, attr):
        raise StubUsed(f"{self._name}(...).{attr}: a stub (its package is not installed) is used")


def _stub_class(qualname: str) -> type:
    return _StubMeta(qualname.rsplit(".", 1)[-1], (), {"__qualname__": qualname, "__module__": "stub"})


class _StubModule(types.ModuleType):
    def __init__(self, name: str):
        super().__init__(name)
        self.__path__ = []  # a package: `import name.sub` works
        self.__spec__ = importlib.util.spec_from_loader(name, loader=None, is_package=True)

    def __getattr__(self, name):  # looked up at use time: substitutes registered later still apply
        if name.startswith("__"):
            raise AttributeError(name)
        full = f"{self.__name__}.{name}"
        if full in SUBSTITUTES:
            return SUBSTITUTES[full]
        if any(key.startswith(full + ".") for key in SUBSTITUTES):
            return _StubModule(full)
        return _stub_class(full)


class _StubFinder:
    """Meta-path finder: `prefixes` (missing top-level packages) import as stub modules."""

    def __init__(self, prefixes: set[str]):
        self.prefixes, self.created = prefixes, []

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] not in self.prefixes:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=True)

    def create_module(self, spec):
        self.created.append(spec.name)
        return _StubModule(spec.name)

    def exec_module(self, module):
        pass


# audiocraft's install requirements (and theirs) that its package __init__s import at module level
AUDIOCRAFT_OPTIONAL = {"av", "hydra", "hydra_colorlog", "num2words", "spacy", "torchaudio", "xformers",
                       "demucs", "librosa", "gradio", "encodec", "torchvision", "torchtext", "submitit",
                       "treetable", "retrying", "colorlog", "laion_clap", "sentencepiece", "pesq", "pystoi",
                       "dac", "audioseal", "soundfile", "huggingface_hub", "tqdm", "scipy", "sklearn"}


def _load_leaf(name: str) -> types.ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    root = importlib.util.find_spec("audiocraft").submodule_search_locations[0]
    path = f"{root}/{name.split('.', 1)[1].replace('.', '/')}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def import_audiocraft(*modules: str, substitutes: dict | None = None, leaf_only: bool = False
                      ) -> list[types.ModuleType]:
    """Import audiocraft modules (skipping the test when audiocraft or einops/flashy/dora are
    missing). Stubs stand in for the missing packages of AUDIOCRAFT_OPTIONAL while importing;
    `substitutes` maps dotted names inside a missing package (e.g.
    "torchaudio.transforms.Spectrogram") to real objects. `leaf_only`: load each module's file
    without running audiocraft's package `__init__`s (fast; for modules without relative imports)."""
    if not _installed("audiocraft"):
        pytest.skip("audiocraft 1.3.0 is not installed (pip install --no-deps audiocraft==1.3.0)")
    for dep in ("einops", "flashy", "dora"):
        if not _installed(dep):
            pytest.skip(f"{dep} is not installed: audiocraft's tested paths run it "
                        "(pip install --no-deps einops flashy dora-search)")
    SUBSTITUTES.update(substitutes or {})
    missing = {name for name in AUDIOCRAFT_OPTIONAL if not _installed(name)}
    finder = _StubFinder(missing)
    sys.meta_path.insert(0, finder)
    try:
        imported = [_load_leaf(m) if leaf_only else importlib.import_module(m) for m in modules]
    finally:
        sys.meta_path.remove(finder)
        # stubs leave sys.modules so other tests import the real packages (or fail as they should);
        # the audiocraft modules keep their references to the stubs they were built with
        for name in finder.created:
            sys.modules.pop(name, None)
    return imported
