# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
# Both install the exact versions in requirements/lock.txt (what CI verified); setup.cfg keeps the compatible
# ranges for `pip install bodil` into your own environment. `make lock` re-resolves those ranges into the lock,
# `make test-latest` runs the suite on a fresh unconstrained resolve (drift shows up there, not in CI).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt
EXTRAS := .[test,docs]

.PHONY: demo test test-latest docs benchmarks lock clean

# The lock pins pip, setuptools and wheel too; bodil is built by the venv's pinned setuptools (no isolated
# build environment that would resolve its own), and PIP_CONSTRAINT holds every dependency to the lock.
$(STAMP): setup.cfg pyproject.toml $(LOCK)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	PIP_CONSTRAINT=$(LOCK) $(VENV)/bin/python -m pip install --quiet pip setuptools wheel
	PIP_CONSTRAINT=$(LOCK) $(VENV)/bin/python -m pip install --quiet --no-build-isolation -e "$(EXTRAS)"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bodil demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --durations=15

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# A fresh resolve of setup.cfg's ranges (newest releases) written to the lock; then run `make test` and commit.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	.venv-lock/bin/python -m pip install --quiet --no-build-isolation -e "$(EXTRAS)"
	{ echo "# Exact versions that 'make test', 'make demo' and 'make docs' install (what CI verified)."; \
	  echo "# Made by 'make lock' (a fresh resolve of setup.cfg on Python 3.11); see README, 'Updating the lock'."; \
	  .venv-lock/bin/python -m pip freeze --all --exclude-editable | grep -v -i '^bodil'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf .venv-lock

# The suite against today's releases, unconstrained (not part of CI).
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	.venv-latest/bin/python -m pip install --quiet --no-build-isolation -e "$(EXTRAS)"
	.venv-latest/bin/python -m pip freeze --all --exclude-editable | grep -v -i "^bodil" > .venv-latest/resolved.txt
	diff $(LOCK) .venv-latest/resolved.txt | grep '^[<>] [^#]' || echo "test-latest: the resolve equals the lock"
	.venv-latest/bin/python -m pytest -q -n 2 --durations=15

benchmarks: $(STAMP)
	$(VENV)/bin/python benchmarks/map_solvers.py
	$(VENV)/bin/python benchmarks/inference.py
	$(VENV)/bin/python benchmarks/tumor_calibration.py
	$(VENV)/bin/python benchmarks/tumor.py
	test -f benchmarks/fk32-test/manifest.json || $(VENV)/bin/bodil dataset --out benchmarks/fk32-test --size 32 \
		--spacing 4 --train 0 --val 0 --test 100   # the shipped surrogate's held-out test split (same seed)
	$(VENV)/bin/python benchmarks/surrogate.py --data benchmarks/fk32-test

clean:
	rm -rf $(VENV) .venv-latest .venv-lock site bodil-demo .pytest_cache
