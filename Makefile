# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export WANDB_MODE ?= disabled

DEMO_DATA := data/generated/receipts
DEMO_MODEL := artifacts/tiny-qwen2-vl

.PHONY: venv demo test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# One intra-op thread: the replica's 128-wide matrices gain nothing from two, and on a busy 2-core machine
# two threads made training ~20x slower (30 steps: 92 s with 2 threads, 4 s with 1).
demo: venv
	$(PY) -m vlm_lightning.replicas qwen2_vl $(DEMO_MODEL) --hidden-size 128
	$(PY) -m vlm_lightning.data.synthetic receipts --out $(DEMO_DATA) --n 400 --seed 0 --split train=0.9,val=0.05,test=0.05 --max-items 2
	OMP_NUM_THREADS=1 $(PY) scripts/demo.py --config configs/quickstart.yaml

# The suite runs on one worker per core (pytest-xdist, at most 4), each with one intra-op thread: on a 2-core
# machine 583 s against 2,177 s serially (2026-12-04). PYTEST_WORKERS=0 runs it serially.
PYTEST_WORKERS ?= auto
test: venv
	$(PY) -m ruff check vlm_lightning tests scripts
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -x -n $(PYTEST_WORKERS) --maxprocesses 4 --dist load --timeout 900 --durations=25

lint: venv
	$(PY) -m ruff check vlm_lightning tests scripts
	$(PY) -m ruff format --check vlm_lightning tests scripts

clean:
	rm -rf runs artifacts data/generated
