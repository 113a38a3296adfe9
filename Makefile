# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test docs benchmarks clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bodil demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --durations=15

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

benchmarks: $(STAMP)
	$(VENV)/bin/python benchmarks/map_solvers.py
	$(VENV)/bin/python benchmarks/inference.py
	$(VENV)/bin/python benchmarks/tumor_calibration.py
	$(VENV)/bin/python benchmarks/tumor.py
	test -f benchmarks/fk32-test/manifest.json || $(VENV)/bin/bodil dataset --out benchmarks/fk32-test --size 32 \
		--spacing 4 --train 0 --val 0 --test 100   # the shipped surrogate's held-out test split (same seed)
	$(VENV)/bin/python benchmarks/surrogate.py --data benchmarks/fk32-test

clean:
	rm -rf $(VENV) site bodil-demo .pytest_cache
