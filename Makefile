# The two commands a new user runs: `make demo` and `make test`.
# Every target sets up what it needs: Debian packages (when root), the
# virtualenv in .venv, and the project installed into it.

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
# Test workers (pytest-xdist): the suite waits on git-annex, ssh and S3 processes
# most of the time, so two workers halve its wall time on CI's two cores.
TEST_JOBS ?= 2
# Tests and the demo find git-annex (PyPI) and git-annex-remote-cluster here.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: help demo test test-full lint venv sysdeps sysdeps-test sysdeps-bench clean bench bench-proxy bench-s3 bench-scale bench-http

help:
	@echo "make demo       set up and run a cluster demo on three local directories"
	@echo "make test       set up and run lint plus the test suite (fast matrix)"
	@echo "make test-full  also the slow suites (full git annex testremote)"
	@echo "make lint       ruff and mypy"
	@echo "make bench-proxy  our gateway against direct access (and native git-annex's proxy)"
	@echo "make bench-s3   our S3 node against git-annex's native S3 remote (moto_server)"
	@echo "make bench-scale  how costs grow with nodes, clients, object size and keys (plots)"
	@echo "make bench-http  our HTTP server against native git annex p2phttp"

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
	@touch $@

sysdeps:
	@scripts/sysdeps.sh git

sysdeps-test:
	@scripts/sysdeps.sh git gnupg openssh-server git-annex nginx nftables

# GNU time measures the benchmarks' peak RSS (bench/harness.py, Harness.measured).
sysdeps-bench:
	@scripts/sysdeps.sh git gnupg openssh-server git-annex nginx nftables time

demo: sysdeps venv
	@scripts/demo.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: sysdeps-test venv lint
	$(PY) -m pytest -m "not slow" -n $(TEST_JOBS)

test-full: sysdeps-test venv lint
	$(PY) -m pytest -n $(TEST_JOBS)

bench: sysdeps-bench venv
	$(PY) bench/cluster_vs_native.py $(BENCH_ARGS)

bench-proxy: sysdeps-bench venv
	$(PY) bench/proxy_overhead.py $(BENCH_ARGS)

bench-s3: sysdeps-bench venv
	$(PY) bench/s3_vs_native.py $(BENCH_ARGS)

bench-scale: sysdeps-bench venv
	$(PY) bench/scale.py $(BENCH_ARGS)

bench-http: sysdeps-bench venv
	$(PY) bench/http_vs_native.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
