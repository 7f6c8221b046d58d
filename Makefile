# genlab: `make run` trains the main job (SPEC §1), `make test` runs the test suite.
# Both set up .venv, install genlab and obtain the data first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.genlab-installed
# torch==2.13.0 is the CPU build on the project's machines; with a CUDA machine use the
# CUDA wheel of the same version (pip install torch==2.13.0 --index-url ...).
TORCH ?= torch==2.13.0

.PHONY: run test data install bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(STAMP)

data: $(STAMP)
	PY=$(PY) bash scripts/get_data.sh

run: data
	$(VENV)/bin/genlab run dcgan

test: data
	$(PY) -m pytest -q

bench: data
	$(VENV)/bin/genlab bench dcgan --steps 40

clean:
	rm -rf $(VENV) runs
