# `make run`: set up and train the embedded default job. `make test`: set up and run the tests.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: run test test-fast crds bench clean

$(STAMP): pyproject.toml setup.py
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

run: $(STAMP)
	RAY_AUTH_MODE=disabled $(VENV)/bin/shardwright run examples/tiny-train.yaml

test: $(STAMP)
	RAY_AUTH_MODE=disabled $(VENV)/bin/python -m pytest

test-fast: $(STAMP)
	RAY_AUTH_MODE=disabled $(VENV)/bin/python -m pytest -m "not slow"

crds: $(STAMP)
	$(VENV)/bin/shardwright crds

clean:
	rm -rf $(VENV) .shardwright build *.egg-info
