# `make demo` and `make test` each create .venv when missing, install the package, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-tf32 bench-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m benchmarks.quickstart

test: $(STAMP)
	$(PY) -m pytest tests -m "not slow" -n auto --dist loadfile

# Longer end-to-end runs (benchmarks at --quick size, full notebooks), outside `make test`.
test-slow: $(STAMP)
	FEDJAX_TEST_OPTIMIZED=1 $(PY) -m pytest tests -m slow -n auto --dist loadfile

# The fast suite with float32 matmuls and convolutions rounded as a TF32 GPU does (tests/tf32.py): checks on any
# machine that no result depends on the device's default precision.
test-tf32: $(STAMP)
	FEDJAX_EMULATE_TF32=1 $(PY) -m pytest tests -m "not slow" -n auto --dist loadfile

# Optional: PyTorch (CPU build on disk) for the baselines in benchmarks/.
bench-deps: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"

clean:
	rm -rf $(VENV) results

# Mutation testing (outside `make test`): cosmic-ray's mutants of each listed module against that module's own fast
# tests (tests/mutation/run_mutation.py holds the mapping); `make mutation MODULES="rl/gae.py fl/config.py"` runs
# some. Writes results/mutation/scores.json and survivors.txt; equivalent mutants: tests/mutation_equivalent.txt.
.PHONY: mutation
mutation: $(STAMP)
	$(PY) -m pip install -q -e ".[mutation]"
	$(PY) tests/mutation/run_mutation.py $(MODULES)
