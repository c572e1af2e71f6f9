"""The import graph of lightning_musicgen (read from the source with `ast`) is acyclic and points down:
every module is in a layer of `lightning_musicgen.layers.LAYERS` and imports only from its own layer or a
lower one. The checker itself is tested on synthetic packages: an upward import, a cycle, a module in no
layer and a name gathered by a package's __init__ are each caught."""
from pathlib import Path

import lightning_musicgen
from lightning_musicgen.layers import LAYERS, check, import_graph, layer_of, package_modules

ROOT = Path(lightning_musicgen.__file__).parent


def test_package_imports_are_acyclic_and_point_down():
    mods = package_modules(ROOT)
    edges = import_graph(mods)
    assert len(mods) > 80 and len(edges) > 150  # the graph was read, not an empty walk
    assert check(mods, edges) == []


def test_layers_are_listed_once():
    entries = [entry for _, layer in LAYERS for entry in layer]
    assert len(entries) == len(set(entries))
    assert len({name for name, _ in LAYERS}) == len(LAYERS)
    mods = package_modules(ROOT)
    for entry in entries:  # every entry names something that exists
        assert entry in mods, entry


def test_function_level_imports_and_verb_strings_are_edges():
    mods = package_modules(ROOT)
    edges = {(e.source, e.target) for e in import_graph(mods)}
    assert ("generation.musicgen", "model_files.read") in edges      # inside MusicGen.from_checkpoint
    assert ("__main__", "data.prepare") in edges                       # "lightning_musicgen.data.prepare:..."
    assert ("data.tokenize", "model_files.codec") in edges


def _package(tmp_path: Path, files: dict[str, str]) -> dict:
    root = tmp_path / "lightning_musicgen"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package_modules(root)


SYNTHETIC = [("low", ["low"]), ("mid", ["mid", "pkg"]), ("high", ["high", "pkg.top"])]


def test_checker_rejects_an_upward_import(tmp_path):
    mods = _package(tmp_path, {"low.py": "", "mid.py": "import lightning_musicgen.low\n", "high.py": "",
                               "pkg/__init__.py": "", "pkg/top.py": ""})
    assert check(mods, import_graph(mods), SYNTHETIC) == []
    (tmp_path / "lightning_musicgen" / "low.py").write_text(
        "def f():\n    from lightning_musicgen.high import g  # function level counts too\n")
    problems = check(mods, import_graph(mods), SYNTHETIC)
    assert problems == ["low:2 imports high: layer 'high' is above 'low'"]


def test_checker_rejects_a_cycle_within_a_layer(tmp_path):
    mods = _package(tmp_path, {"low.py": "", "high.py": "", "mid.py": "from . import pkg\n",
                               "pkg/__init__.py": "from lightning_musicgen import mid\n", "pkg/top.py": ""})
    problems = check(mods, import_graph(mods), SYNTHETIC)
    assert problems == ["import cycle: mid -> pkg"]


def test_checker_rejects_a_module_in_no_layer(tmp_path):
    mods = _package(tmp_path, {"low.py": "", "mid.py": "", "high.py": "", "stray.py": ""})
    assert check(mods, import_graph(mods), SYNTHETIC) == ["stray: in no layer of lightning_musicgen.layers.LAYERS"]


def test_a_name_gathered_by_a_package_resolves_to_its_submodule(tmp_path):
    """`from pkg import Top` where pkg/__init__ takes Top from pkg.top (a higher layer) is an upward
    import from `mid`; the __init__ itself may gather it (lazily here)."""
    mods = _package(tmp_path, {
        "low.py": "", "high.py": "",
        "mid.py": "from lightning_musicgen.pkg import Top\n",
        "pkg/__init__.py": "def __getattr__(name):\n    from lightning_musicgen.pkg.top import Top\n    return Top\n",
        "pkg/top.py": "class Top: ...\n"})
    assert check(mods, import_graph(mods), SYNTHETIC) == [
        "mid:1 imports pkg.top: layer 'high' is above 'mid'"]
