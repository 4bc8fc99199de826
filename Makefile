# releasetrain: the two front-door commands are `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-extended test-distributed test-faults test-install test-fast bench lint schema lock clean venv screenshots FORCE

venv: $(STAMP)

# The package's file list: rewritten only when a file is added or removed, so that the
# strict editable install (below) links it, and only then.
SRC_FILES := $(shell find src/releasetrain -type f -not -path '*/__pycache__/*' -not -name '*.pyc' | sort)
$(VENV)/.src-files: FORCE
	@mkdir -p $(VENV)
	@echo "$(SRC_FILES)" | cmp -s - $@ || echo "$(SRC_FILES)" > $@
FORCE:

$(STAMP): pyproject.toml constraints.txt $(VENV)/.src-files
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "releasetrain needs Python 3.11+, found " + sys.version.split()[0]'
	@echo "==> [1/3] creating $(VENV) (once)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "==> [2/3] installing Airflow 3.3, its providers and releasetrain into $(VENV) (first time: 2-4 minutes)"
	@$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	@# strict: the package is linked from build/, never by putting src/ (and the metadata
	@# setuptools writes there) on sys.path, where Airflow would find the plugin's entry point twice
	@$(BIN)/python -m pip install --quiet --progress-bar off -c constraints.txt -e ".[test]" \
	  --config-settings editable_mode=strict
	@echo "==> [3/3] installed: $$($(BIN)/python -m releasetrain --version), $$($(BIN)/python -c 'import airflow; print("apache-airflow", airflow.__version__)')"
	touch $(STAMP)

## make demo: the demo fleet and Airflow on SQLite, a storefront release waiting for approval
demo: $(STAMP)
	$(BIN)/python -m releasetrain.demo

## make test: unit and adapter tests, then the end-to-end tests on real Airflow processes (the
## gates attacked over REST, a release of each kind, the cockpit in a browser); 20 minutes on 2 cores
test: $(STAMP)
	bash scripts/ensure-debian.sh
	@# unit and adapter tests on both cores (pytest-xdist), then the end-to-end session: one
	@# stack, its test modules in two workers (the stack is CPU-bound on 2 cores: three workers
	@# took 35 minutes and lost Airflow 3.3's deferral races; four were slower still)
	$(BIN)/python -m pytest -m "not e2e and not distributed and not faults and not install" -n 2
	$(BIN)/python -m tests.e2e.session -m "e2e and not extended and not distributed and not faults" -n 2 \
	  --dist loadfile --no-loadscope-reorder --durations=20

## make test-extended: the long end-to-end scenarios (migrations, suites, freezes, hotfix trains,
## modular units, trends) and the distributed stack; CI runs them after make test
test-extended: $(STAMP)
	bash scripts/ensure-debian.sh
	$(BIN)/python -m tests.e2e.session -m "e2e and extended and not distributed and not faults" -n 2 \
	  --dist loadfile --no-loadscope-reorder --durations=20
	@if [ "$$RELEASETRAIN_E2E_DB" = sqlite ]; then \
	  echo "no PostgreSQL: the distributed end-to-end test (make test-distributed) is not run" >&2; \
	else $(MAKE) test-distributed; fi

## make test-distributed: the end-to-end tests on Airflow's distributed shape (Celery, Redis, PostgreSQL)
test-distributed: $(STAMP)
	$(BIN)/python -m pytest -m distributed

## make test-faults: the fault tests on the distributed stack (workers, schedulers killed; target errors),
## and the benchmarks that start stacks of their own, once at a tiny size
test-faults: $(STAMP)
	$(BIN)/python -m pytest -m faults

## make test-install: docs/install.md done as written into a new Airflow 3.3 venv (wheel, config,
## connections, pools), then the storefront release end to end on it (PostgreSQL)
test-install: $(STAMP)
	bash scripts/ensure-debian.sh postgresql-client:psql
	$(BIN)/python -m pytest -m install -p no:cacheprovider

## make test-fast: everything but the end-to-end tests
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not e2e and not distributed and not faults and not install" -n 2

## make screenshots: the release cockpit's pages in Debian's Chromium, written to docs/cockpit/
screenshots: $(STAMP)
	bash scripts/ensure-debian.sh chromium:chromium
	RELEASETRAIN_SCREENSHOTS=$(CURDIR)/docs/cockpit $(BIN)/python -m pytest -m e2e tests/e2e/test_cockpit_e2e.py -p no:cacheprovider

## make bench: benchmarks, reported as ratios to baselines measured in the same run
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_windows.py
	$(BIN)/python benchmarks/bench_ledger.py
	$(BIN)/python benchmarks/bench_waiting.py
	$(BIN)/python benchmarks/bench_overhead.py
	$(BIN)/python benchmarks/bench_distributed.py
	bash scripts/ensure-prometheus.sh
	$(BIN)/python benchmarks/bench_rollback.py
	$(BIN)/python benchmarks/bench_rollback.py --distributed

lint: $(STAMP)
	$(BIN)/ruff check src tests dags include benchmarks

## make schema: export the release spec's JSON Schema
schema: $(STAMP)
	$(BIN)/python -m releasetrain schema > include/schema/release-spec.schema.json
	$(BIN)/python -m releasetrain schema --reference > docs/spec-reference.md

## make lock: regenerate constraints.txt from the current environment
lock: $(STAMP)
	{ head -n 2 constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v '^releasetrain'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .airflow .pytest_cache
