# genlab: `make run` trains the main job (SPEC §1), `make test` runs the test suite.
# Both set up .venv, install genlab and obtain the data first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.genlab-installed
# torch==2.13.0 is the CPU build on the project's machines; with a CUDA machine use the
# CUDA wheel of the same version (pip install torch==2.13.0 --index-url ...).
TORCH ?= torch==2.13.0

.PHONY: run test test-parity-avx2 test-parity-baseline data install browser bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(STAMP) browser

data: $(STAMP)
	PY=$(PY) bash scripts/get_data.sh

# Debian's chromium renders the report in the browser tests (tests/test_report.py); skipped without it.
browser:
	@command -v chromium >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium with apt-get"; \
	    apt-get install -y -qq chromium >/dev/null 2>&1 \
	      || { apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null; } \
	      || echo "apt-get could not install chromium; the browser tests will be skipped"; \
	  else echo "no root apt-get: chromium not installed, the browser tests will be skipped"; fi; }

run: data
	$(VENV)/bin/genlab run dcgan

# The suite on one pytest-xdist worker per core (at most 4): most tests wait on a `genlab`
# subprocess's start-up or run small single-threaded tensor code, so two workers on two cores
# overlap them. Tests that start a Ray cluster share one worker (xdist_group "ray").
test: data browser
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadgroup

# The parity tests (two code paths compared: stacked/alone, fast/plain, cached/uncached,
# resumed/straight) again on a second kernel path: ATen's AVX2 kernels and oneDNN capped at AVX2,
# whatever this CPU has. CI runs both targets.
test-parity-avx2: data
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(PY) -m pytest -q -m parity -n auto --maxprocesses 4 --dist loadgroup

# The same tests on the x86-64 baseline path (ATen's default kernels, oneDNN at SSE4.1), as on a CPU
# without AVX2. Not in CI (it adds 2 minutes); run it after changing a parity test's tolerance.
test-parity-baseline: data
	ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 $(PY) -m pytest -q -m parity -n auto --maxprocesses 4 --dist loadgroup

bench: data
	$(VENV)/bin/genlab bench dcgan

clean:
	rm -rf $(VENV) runs
