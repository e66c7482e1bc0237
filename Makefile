# Two commands on a fresh machine with Python 3.11:
#   make run    set up .venv, then run the whole pipeline on the embedded default (digits)
#   make test   set up .venv, then run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Snakemake and DVC run `python -m lq ...`: the venv must come first on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: setup run test test-long test-all test-faults test-slurm dag dvc.yaml check lint bench

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	touch $(STAMP)

run: setup
	snakemake --cores 8 all

test: setup
	python -m pytest -q

# the end-to-end runs `make test` leaves out to stay under 10 minutes (marked `long`): INQ and pow2
# through the pipeline, queued DVC experiments, the kills at a random moment, paths with spaces and
# quotes, a 2-method x 2-seed grid run to its summary table and report, an overlay recorded by
# dvc commit, a PTQ edit rerunning only the PTQ stages, the fashion-cpu preset from Debian's dataset-fashion-mnist (skipped without it;
# .ci/run installs it); about 12 minutes on 2 cores.
# Run by .ci/run after `make test`.
test-long: setup
	python -m pytest -q -m long

# everything, including the slow fault-injection runs
test-all: setup
	python -m pytest -q -m ""

# the SLURM profile on a real one-node SLURM (Debian's slurm-wlm and munge, installed with apt-get
# when missing: needs root) that the test starts and stops: about 5 minutes on 2 cores. Run by
# .ci/run after `make test`; prints a line with Snakemake's wall time and every sbatch job's id.
test-slurm: setup
	python -m pytest -q -m slurm

# the fault-injection suite in full: 24 seeded SIGKILLs through both tools, concurrency, odd paths
test-faults: setup
	python -m pytest -q -m "" tests/integration/test_faults.py

# the stage graph, as both tools see it
dag: setup
	snakemake --rulegraph dot all
	dvc dag

dvc.yaml: setup
	python -m lq.pipeline write

BENCH_STAMP := $(VENV)/.bench-stamp

# the `bench` extra (Avalanche, for the peer comparison) on top of the test setup
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test,bench]'
	touch $(BENCH_STAMP)

# speed benchmarks (not part of the tests): prints ratios, writes bench/results.json and bench/RESULTS.md
bench: setup $(BENCH_STAMP)
	python bench/run.py

lint: setup
	python -m lq.pipeline check
	snakemake --lint
