# Two entry points on a fresh clone: `make run` (the main job on embedded defaults) and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test bench clean browser

$(STAMP): pyproject.toml search_space/ops/csrc/acla_aggregate.cpp
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m search_space.ops
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/acla-orch search --budget 50GFLOPs --task car

# Headless Chromium from the distribution's packages, for the tests that load pages in a real browser.
browser:
	@command -v chromium >/dev/null || ! command -v apt-get >/dev/null || \
		(apt-get install -y -q chromium >/dev/null || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) || \
		echo "chromium could not be installed: the browser tests will say so"

# Two test workers, one file at a time each, in tests/conftest.py's order (longest first: without
# --no-loadscope-reorder, xdist puts the files with the most tests first), and one torch thread per process
# (OMP_NUM_THREADS=1, which trials and Ray Train workers honour): the two workers share two cores.
test: $(STAMP) browser
	MLFLOW_DISABLE_TELEMETRY=true OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

bench: $(STAMP)
	$(PY) benchmarks/attention.py

clean:
	rm -rf $(VENV) acla-runs
