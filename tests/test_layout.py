"""Package layout: configs name classes by their public package path (`lightning_musicgen.<package>.<Class>`)
and every such name resolves; the package keeps no alias of an old path (it is unreleased: one name for
each thing); `data` imports nothing from `training` (tests/test_import_layers.py checks every arrow)."""
import importlib
import re
import subprocess
import sys
import textwrap

import yaml

from conftest import ROOT, run_cli

CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
PUBLIC = re.compile(r"lightning_musicgen\.([a-z_]+)\.([A-Z][A-Za-z0-9]*)")


def _our_class_names(node):
    """Every string of a parsed config that names something of this package (`class_path` values, callback
    shorthands, layer class lists)."""
    if isinstance(node, dict):
        for value in node.values():
            yield from _our_class_names(value)
    elif isinstance(node, list):
        for value in node:
            yield from _our_class_names(value)
    elif isinstance(node, str) and node.startswith("lightning_musicgen."):
        yield node


def test_every_config_class_path_is_public_and_resolves():
    named = {(cfg.relative_to(ROOT), name) for cfg in CONFIGS for name in _our_class_names(yaml.safe_load(cfg.read_text()))}
    assert len({name for _, name in named}) >= 10, named  # the trainer, model, data and callback configs
    for cfg, name in sorted(named):
        m = PUBLIC.fullmatch(name)
        assert m, f"{cfg}: {name}: expected lightning_musicgen.<package>.<Class>"
        package = importlib.import_module(f"lightning_musicgen.{m.group(1)}")
        assert hasattr(package, "__path__"), f"{cfg}: {name}: lightning_musicgen.{m.group(1)} is not a package"
        assert m.group(2) in package.__all__, f"{cfg}: {name}: not exported by lightning_musicgen.{m.group(1)}"
        assert isinstance(getattr(package, m.group(2)), type), f"{cfg}: {name}: not a class"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_no_alias_of_an_old_path_is_importable():
    out = _python("""
        import importlib.util, os
        import lightning_musicgen
        here = lightning_musicgen.__path__[0] + os.sep  # (an editable install elsewhere may still find its copy)
        for old in ["lightning_musicgen.callbacks", "lightning_musicgen.cluster", "lightning_musicgen.moved",
                    "lightning_musicgen.lm.checkpoint"]:
            spec = importlib.util.find_spec(old)
            if spec is not None and (spec.origin or "").startswith(here):
                print(old)
        from lightning_musicgen.codec import CompressionModel
        print([n for n in ("num_codebooks", "total_codebooks", "cardinality") if hasattr(CompressionModel, n)])
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_data_imports_nothing_from_training():
    out = _python("""
        import sys
        import lightning_musicgen.data.datamodule, lightning_musicgen.data.prepare, lightning_musicgen.data.tokenize
        print(sorted(m for m in sys.modules if m.startswith("lightning_musicgen.training")))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_readme_package_layout_lists_every_subpackage_and_top_level_module():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Package layout", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in block.splitlines() if ln.startswith("      ")]
    listed, parent = set(), ""
    for row in rows:
        name = row.split()[0]
        indent = len(row) - len(row.lstrip())
        if indent == 6:
            parent = name if name.endswith("/") else ""
            listed.add(name)
        else:  # a nested subpackage, indented under its parent
            listed.add(parent + name)
    package = ROOT / "lightning_musicgen"
    actual = {f"{p.parent.relative_to(package)}/" for p in package.rglob("__init__.py") if p.parent != package}
    actual |= {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
    assert listed == actual, (sorted(listed - actual), sorted(actual - listed))


def test_config_checks_and_verbs_raise_typed_errors():
    """A check in a constructor (`__init__`/`__post_init__`: config values) or in a verb (`*_command`) raises an
    `errors.py` type, never a bare ValueError/FileNotFoundError/RuntimeError, so the command line prints it as
    one line without needing to guess. Bare built-ins stay for contract violations inside the library."""
    import ast
    bare = ("ValueError", "FileNotFoundError", "RuntimeError", "TypeError", "KeyError")
    found = []
    for path in sorted((ROOT / "lightning_musicgen").rglob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, ast.FunctionDef) and (fn.name in ("__init__", "__post_init__")
                                                    or fn.name.endswith("_command")):
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {fn.name}" for node in ast.walk(fn)
                          if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
                          and getattr(node.exc.func, "id", None) in bare]
    assert not found, found


def test_user_errors_are_typed_where_they_are_raised(tmp_path):
    import pytest
    from lightning_musicgen.data.shards import expand_shards, read_index
    from lightning_musicgen.errors import CheckpointError, CheckpointNotFoundError, ConfigError, MissingFileError
    from lightning_musicgen.lm.lora import LoRASettings
    from lightning_musicgen.model_files.adapters import read_adapters
    from lightning_musicgen.lm.model import LMConfig
    from lightning_musicgen.lm.patterns import get_pattern
    from lightning_musicgen.optim import WarmupCosineLR
    import torch
    with pytest.raises(ConfigError, match="unknown pattern 'nope'"):
        get_pattern("nope", 4)
    with pytest.raises(ConfigError, match="dim"):
        LMConfig(n_q=4, card=16, dim=0)
    with pytest.raises(ConfigError, match="lora.r=0"):
        LoRASettings(r=0)
    with pytest.raises(ConfigError, match="min_lr_ratio"):
        WarmupCosineLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), 0, 10, min_lr_ratio=2.0)
    with pytest.raises(MissingFileError, match="no shard index"):
        read_index(tmp_path / "index.json")
    with pytest.raises(MissingFileError, match="no shard matches"):
        expand_shards(str(tmp_path / "x-*.tar"))
    with pytest.raises(CheckpointNotFoundError, match="no such adapters file"):
        read_adapters(tmp_path / "a.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        read_adapters(tmp_path / "bad.safetensors")
