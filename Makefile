# Two commands: `make demo` and `make test`. Both create .venv when missing and
# install every package by name from the registries.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= spark,ml,server,k8s,test,bench
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	# The Java helpers (Parquet KMS client, tml:// file system, Kubernetes pod-spec check)
	# are compiled once against the installed pyspark's jars, and the cluster preflight's
	# class archive made, side by side.
	$(PY) scripts/build_java_helpers.py
	# Cluster workers preload a bind shim built with the machine's C compiler (a worker
	# start without one says so; the rest of trusted-ml does not need it).
	$(PY) -c 'from trustedml.cluster._bindaddr import bind_shim; bind_shim()' \
		|| echo "warning: no bind shim built: cluster workers need gcc (or cc)"
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/pipeline.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Three workers on two cores, whole files each (a file's module fixtures start once): the
# tests wait on JVMs, subprocesses and daemons becoming ready, so with two workers the
# cores were idle 40% of the time (pytest 10 min 10 s, 12 min 18 s of CPU). xdist would
# hand out files by their number of tests; --no-loadscope-reorder keeps the order of
# tests/conftest.py's LONGEST_FIRST, so the one-test cluster files start first instead
# of last.
# The files sharing one cluster go to one worker (tests/conftest.py's LOCAL_CLUSTER).
# PYTHONDONTWRITEBYTECODE, set in some shells, would have each of the hundreds of Python
# processes a run starts compile trusted-ml again and each worker rewrite every test
# module's asserts again (collection 9.4 CPU s a worker instead of 5.7; the CLI tests
# 35 CPU s instead of 29): cleared here, the bytecode goes to __pycache__ (ignored by git).
WORKERS ?= 3
unit: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -n $(WORKERS) --dist loadfile --no-loadscope-reorder

test: lint typecheck unit

bench: $(STAMP)
	$(PY) -m bench spark_overhead
	$(PY) -m bench encrypted_io
	$(PY) -m bench tpch
	$(PY) -m bench ml --only lenet
	$(PY) -m bench cluster

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache bench/results
