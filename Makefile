# The README's commands. Each target sets up what it needs itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= $(HOME)/tensorflow_datasets
WORKDIR ?= workdirs/avt_ca_synthetic
STAMP := $(VENV)/.installed

.PHONY: train test bench clean-venv

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

test: $(STAMP)
	$(PY) -m pytest -q --durations=15

# AVT-CA training throughput at the paper's input shapes, both convolution paths.
bench: $(STAMP)
	$(PY) -m mer_jax.benchmark --config=configs/avt_ca.py:paper_shapes --impls=xla,matmul

clean-venv:
	rm -rf $(VENV)
