"""notebooks/quickstart.ipynb runs top to bottom (nbclient) on a tiny melody MusicGen built here."""
import json
import os
import sys

import nbformat

from conftest import ROOT
from test_generation import _build


def _register_kernel(where) -> str:
    """A kernelspec for this interpreter (the .venv python) in a private Jupyter path; no network."""
    name = "lightning-musicgen-test"
    folder = where / "kernels" / name
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "lightning_musicgen (test)", "language": "python"}))
    return name


def test_quickstart_notebook_executes(tmp_path_factory, tmp_path, monkeypatch):
    from nbclient import NotebookClient
    _, _, ckpt = _build(tmp_path_factory, "notebook", melody=True)
    jupyter = tmp_path / "jupyter"
    kernel = _register_kernel(jupyter)
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))
    monkeypatch.setenv("QUICKSTART_CKPT", str(ckpt))
    monkeypatch.setenv("QUICKSTART_DURATION", "0.6")
    monkeypatch.setenv("MPLBACKEND", "agg")
    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    client = NotebookClient(nb, kernel_name=kernel, timeout=300, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "torch.Size([2, 1, 19200])" in text  # 2 texts x 0.6 s at 32 kHz
    assert "melody: True" in text and "chroma agreement" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 6  # waveform/mel/chroma figures and the token pattern
    assert sorted(os.listdir(tmp_path / "quickstart_samples")) == ["000.wav", "001.wav"]
