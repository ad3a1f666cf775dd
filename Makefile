# Two entry points on a fresh clone: `make run` (the main job on embedded defaults) and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test bench clean

$(STAMP): pyproject.toml search_space/ops/csrc/acla_aggregate.cpp
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m search_space.ops
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/acla-orch search --budget 50GFLOPs --task car

test: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/attention.py

clean:
	rm -rf $(VENV) acla-runs
