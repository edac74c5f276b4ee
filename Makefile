# Two commands from a fresh clone: `make demo` and `make test`.
# The CPU build of PyTorch is installed first; override for a GPU, e.g. `make demo TORCH=torch`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install install-test demo test bench clean

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install -e ".[all]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

demo: install
	$(BIN)/galcae demo -o demo_output --overwrite

test: install-test
	$(BIN)/ruff check galcae tests benchmarks tools examples
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/simulation_speed.py
	$(BIN)/python benchmarks/training_speed.py
	$(BIN)/python benchmarks/r2_table.py
	$(BIN)/python benchmarks/inference_speed.py
	$(BIN)/python benchmarks/classical_comparison.py --run bench_output/run
	$(BIN)/python benchmarks/survey_model.py

clean:
	rm -rf $(VENV) demo_output bench_output
