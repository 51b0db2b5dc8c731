# The README's commands. Each target sets up what it needs itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= $(HOME)/tensorflow_datasets
WORKDIR ?= workdirs/avt_ca_synthetic
STAMP := $(VENV)/.installed
# Test and preset-check processes at once (XLA compiles on one thread).
JOBS ?= 2

.PHONY: train test test-all check-presets bench clean-venv

$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# Builds synthetic_av if missing, trains AVT-CA, evaluates the best checkpoint on test.
train: $(STAMP)
	$(PY) -m mer_jax.main --config=configs/avt_ca.py:synthetic --workdir=$(WORKDIR) \
	  --config.dataset.data_dir=$(DATA_DIR)

# The default tier: unit tests and the training loop's policy in-process (< 10 min on 2 cores).
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n $(JOBS) --durations=15

# Every test, with the end-to-end subprocess runs (kill and resume, 1 vs 8 devices,
# two processes, the experiment runner).
test-all: $(STAMP)
	$(PY) -m pytest -q -n $(JOBS) --durations=15

# Every preset and variant of the five configs: one train and one eval step on its
# dataset's real format (../shared/data or official-layout fixtures).
check-presets: $(STAMP)
	$(PY) -m experiments.check_presets --jobs=$(JOBS)

# AVT-CA training throughput at the paper's input shapes, both convolution paths.
bench: $(STAMP)
	$(PY) -m mer_jax.benchmark --config=configs/avt_ca.py:paper_shapes --impls=xla,matmul

clean-venv:
	rm -rf $(VENV)
