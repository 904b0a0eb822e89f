# make test     - create/reuse .venv, install the project, run the tests
# make figures  - run the notebook batch (full profile) -> figures/, build/full/executed/
# make smoke    - the same batch on a few dozen images -> build/smoke/
# make lab      - JupyterLab on notebooks/
# make bench    - feature-extraction benchmark
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Data root: $QFM_DATA_ROOT if set, else ../shared/data if it exists, else ./data
QFM_DATA_ROOT ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),$(CURDIR)/data)
export QFM_DATA_ROOT

.PHONY: venv test figures smoke lab bench clean
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

test: venv
	$(PY) -m pytest

figures: venv
	$(PY) -m qfm_lib.batch --profile full

smoke: venv
	$(PY) -m qfm_lib.batch --profile smoke

lab: venv
	$(VENV)/bin/jupyter lab notebooks/

bench: venv
	$(PY) benchmarks/bench_features.py

clean:
	rm -rf build .pytest_cache
