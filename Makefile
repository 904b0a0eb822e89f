# make test     - create/reuse .venv, install the project, run the tests
# make figures  - run the notebook batch (full profile) -> figures/, build/full/executed/
# make smoke    - the same batch on a few dozen images -> build/smoke/
# make lab      - JupyterLab on notebooks/ (LAB_IP=127.0.0.1, LAB_PORT=8888, no browser: open the
#                 printed URL; LAB_IP=0.0.0.0 to reach it from another machine; --allow-root as root)
# make bench    - extraction (ONNX Runtime vs its raw forward), training (1 vs 2 workers), the learned tail's
#                 step (float32 vs bfloat16 depthwise) and fine-tuning step benchmarks; benchmarks/bench_batch.py times the whole batch per notebook (--cold: a fresh cache)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Data root: $QFM_DATA_ROOT if set, else ../shared/data if it exists, else ./data
QFM_DATA_ROOT ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),$(CURDIR)/data)
export QFM_DATA_ROOT

.PHONY: venv test figures smoke lab bench clean
venv: $(VENV)/.installed

# -qq: errors only. A machine-wide pip configuration with local package indexes that lack some
# packages makes -q print one "Location ... is ignored" warning per package.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -e '.[test]'
	touch $@

test: venv
	$(PY) -m pytest

figures: venv
	$(PY) -m qfm_lib.batch --profile full

smoke: venv
	$(PY) -m qfm_lib.batch --profile smoke

LAB_IP ?= 127.0.0.1
LAB_PORT ?= 8888
# encrypted kernel sockets (CurveZMQ): no "Kernel is running over TCP without encryption" warning
LAB_FLAGS ?= --no-browser --MappingKernelManager.transport_encryption=auto \
	$(if $(filter 0,$(shell id -u)),--allow-root)
lab: venv
	$(VENV)/bin/jupyter lab --ip=$(LAB_IP) --port=$(LAB_PORT) $(LAB_FLAGS) notebooks/

bench: venv
	$(PY) benchmarks/bench_features.py
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_tail.py
	$(PY) benchmarks/bench_finetune.py

clean:
	rm -rf build .pytest_cache
