# One-word entry points. `make demo` and `make test` work on a fresh clone with only Python 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.twotower/dagster_home

.PHONY: install instance browser wrk demo test ui serve bench bench-quick quality check server-stop clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP) instance

# The instance config (run monitoring on), kept in the package and copied on every install:
# Dagster's storage on PostgreSQL when TWOTOWER_DAGSTER_POSTGRES_URL is set, SQLite otherwise.
INSTANCE_CONFIG := twotower_pipeline/instance/$(if $(TWOTOWER_DAGSTER_POSTGRES_URL),dagster_postgres,dagster).yaml
instance:
	mkdir -p $(DAGSTER_HOME)
	cp $(INSTANCE_CONFIG) $(DAGSTER_HOME)/dagster.yaml

demo: install
	$(BIN)/twotower demo

# Two workers: most of a test's time is spent waiting on the server or a run's process (three were
# no faster on two cores: 982 s against 940 s on 2026-12-06). A module stays on one worker
# (--dist loadscope): the fault-injection module shares a server it kills.
# -rs: the summary lists each skipped test with its reason (no PostgreSQL, RabbitMQ or Chromium here).
test: install browser
	$(BIN)/python -m pytest -n 2 --dist loadscope -rs

# The browser test's Chromium: Debian's package where apt can install it (never a browser download);
# where it cannot, the test says it was skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 || \
	    echo "chromium could not be installed: the browser test will be skipped"; }

ui: install
	$(BIN)/dagster dev -w workspace.yaml

# The runtime, the PyTorch sidecar and the workbench API on 127.0.0.1:8010 (README "Serving")
serve: install
	$(BIN)/twotower serve --sidecar local --dagster-url http://127.0.0.1:3000

# faiss-cpu (the top-K benchmark's reference) and scikit-learn (the quality table's coupon baselines) are a
# benchmark extra, not dependencies of the project.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

# The serving benchmark's load generator (C, paced by benchmarks/wrk_paced.lua): Debian's package where apt can
# install it; where it cannot, the serving rows say they were skipped and the other rows still run.
wrk:
	@command -v wrk >/dev/null 2>&1 || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk) >/dev/null 2>&1 || \
	    echo "wrk could not be installed: the serving benchmark's service rows will be skipped"; }

bench: install $(BENCH_STAMP) wrk
	$(BIN)/python -m benchmarks.run

bench-quick: install $(BENCH_STAMP) wrk
	$(BIN)/python -m benchmarks.run --quick

# The README's quality table (MovieLens 100K implicit protocol, coupons against scikit-learn).
quality: install $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.quality

check: install
	$(BIN)/python -m flake8 twotower_pipeline twotower_pipeline_tests benchmarks
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg check defs

server-stop: install
	$(BIN)/twotower server stop

clean: server-stop
	rm -rf .twotower
