# `make run`: set up and train the embedded default job. `make test`: set up and run the tests.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: run test test-fast crds bench clean cluster cluster-down cluster-bin s3-bin

$(STAMP): pyproject.toml setup.py
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

run: $(STAMP)
	RAY_AUTH_MODE=disabled $(VENV)/bin/shardwright run examples/tiny-train.yaml

test: $(STAMP) cluster-bin s3-bin
	RAY_AUTH_MODE=disabled $(VENV)/bin/python -m pytest

test-fast: $(STAMP)
	RAY_AUTH_MODE=disabled $(VENV)/bin/python -m pytest -m "not slow"

crds: $(STAMP)
	$(VENV)/bin/shardwright crds

# The local Kubernetes control plane (docs/testing.md): binaries built from Go modules into
# ~/.cache/shardwright (a no-op when cached), then started on loopback until cluster-down.
cluster-bin:
	bash e2e/cluster/build.sh >/dev/null

# The S3-compatible server the checkpoint tests start (e2e/s3server: gofakes3), cached the same way.
s3-bin:
	bash e2e/s3server/build.sh >/dev/null

cluster: $(STAMP) cluster-bin
	RAY_AUTH_MODE=disabled $(VENV)/bin/python -m e2e.cluster up

cluster-down:
	$(VENV)/bin/python -m e2e.cluster down

clean:
	rm -rf $(VENV) .shardwright .cluster build *.egg-info
