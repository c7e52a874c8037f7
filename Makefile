# signature-pipeline: `make demo` runs the pipeline offline on generated data, `make test` runs the tests.
# Both create .venv and install the project on first use. `make help` lists every target.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(abspath $(VENV))/bin
EXTRAS ?= cpu,dev,spark,team
PYTEST_ARGS ?=
TEST_WORKERS ?= auto

export PATH := $(BIN):$(PATH)
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TF_CPP_MIN_LOG_LEVEL := 2
# MLflow 3's server starts a GenAI job runner (eight Python processes, about 23 s of CPU at each start on
# 2 cores) that this classic-ML project never uses: off for every `mlflow server`/`mlflow ui` make starts.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false
# Prefect's database of runs and its settings stay in this workspace (.prefect/), not in the
# ~/.prefect that every checkout shares, unless PREFECT_HOME is set; a profiles file in ~/.prefect
# (a server's URL, a Cloud login) is still read. The stage entry points do the same (flows/__init__.py).
ifndef PREFECT_HOME
export PREFECT_HOME := $(CURDIR)/.prefect
ifneq ($(wildcard $(HOME)/.prefect/profiles.toml),)
export PREFECT_PROFILES_PATH ?= $(HOME)/.prefect/profiles.toml
endif
endif

.DEFAULT_GOAL := help
.PHONY: help venv demo test test-fast lint typecheck format status clean up down team-up team-down screenshots local-credentials

RUN_DIR := .run
PREFECT_PORT ?= 4200
MLFLOW_PORT ?= 5000
SCORER_PORT ?= 5001
PREFECT_URL := http://127.0.0.1:$(PREFECT_PORT)/api
WORK_POOL := signature-pool
# How often make up's worker asks for scheduled runs: a deployment run starts within 2 s, not Prefect's 10.
PREFECT_WORKER_QUERY_SECONDS ?= 2
# make up's credentials (docs/team.md, Security: credentials): generated into .run/credentials.env the
# first time (mode 0600 from creation; `source` it for a client). tasks/services/local_services.py reads them from
# that file and gives them to every service it starts through its environment; none is on a command line.
LOCAL_CREDENTIALS := $(RUN_DIR)/credentials.env

help: ## List the targets.
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --constraint constraints.txt --editable ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed ## Create .venv and install the project (EXTRAS=cpu,dev,spark,team by default; cuda, gdrive, kaggle too).

demo: venv ## Run the whole pipeline offline on the generated dataset through the Prefect flow, then show the metrics.
	python -m flows.pipeline
	@echo
	@echo "Metrics:        dvc metrics show (headline), metrics/*_details.json (all), plots/*.png (dvc plots show)"
	@echo "Manifest:       data/prepared/manifest.csv"
	@echo "Data report:    data/prepared/data_report.md"
	@echo "Classifier:     models/classifier.keras (labels: models/labels.json)"
	@echo "Learning curve: plots/learning_curve.png; evaluation plots: plots/*.png"
	@echo "Registered:     models:/utsig-inceptionv3@champion (metrics/register_details.json)"
	@echo "Try:            the two sigpipe commands at the end of the report above (a test signature)"
	@echo "MLflow UI:      $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host 127.0.0.1 --workers 1"

# Tests run on every core (pytest-xdist; TEST_WORKERS=0 runs them in one process). Modules that share
# an expensive session fixture carry the same xdist_group mark, so it is built once, on one worker
# (pytest stays below 9.2 for that: pyproject.toml). More workers than cores measured slower here: each
# builds its own fixtures and Prefect API, and the end-to-end tests are CPU-bound (bench/README.md).
# --no-loadscope-reorder: xdist hands the tests out in the order tests/conftest.py gives them (the
# trained workspace's builder first, a unit that does not need it second, so no worker waits on it).
test: venv ## Run every test, the slow end-to-end ones included, on every core.
	pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: venv ## Run the tests without the slow end-to-end ones, on every core.
	pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder -m "not slow" $(PYTEST_ARGS)

lint: venv ## Check style with ruff.
	ruff check flows tasks tests bench
	ruff format --check flows tasks tests bench

typecheck: venv ## Check types with mypy (flows/ and tasks/, configured in pyproject.toml).
	mypy

format: venv ## Format the code with ruff.
	ruff format flows tasks tests bench
	ruff check --fix flows tasks tests bench

local-credentials: venv
	@python -m tasks.services.team local-credentials $(RUN_DIR) > /dev/null

# make up and make down are tasks/services/local_services.py, on the one supervisor of the project's processes
# (tasks/services/supervisor.py: pid files and logs in .run/, health checks, TERM then KILL of each process group).
up: venv ## Start, on 127.0.0.1, the Prefect server, a worker with the deployment, the MLflow UI and the champion's model server (all requiring .run/credentials.env).
	python -m tasks.services.local_services up --run-dir $(RUN_DIR) --prefect-port $(PREFECT_PORT) --mlflow-port $(MLFLOW_PORT) \
	  --scorer-port $(SCORER_PORT) --worker-query-seconds $(PREFECT_WORKER_QUERY_SECONDS) --work-pool $(WORK_POOL)
	@echo "Started:    Prefect server (runs kept in $(PREFECT_HOME)), a worker on pool '$(WORK_POOL)' for deployment"
	@echo "            'signature-pipeline/local', MLflow server; no other terminal is needed. make down stops them."
	@echo "Prefect UI: http://127.0.0.1:$(PREFECT_PORT)   MLflow UI: http://127.0.0.1:$(MLFLOW_PORT)   logs: $(RUN_DIR)/"
	@echo "Log in:     source $(LOCAL_CREDENTIALS)   (Prefect UI: the value of PREFECT_API_AUTH_STRING; MLflow UI: admin, MLFLOW_TRACKING_PASSWORD)"
	@echo "Run:        PREFECT_API_URL=$(PREFECT_URL) $(BIN)/prefect deployment run 'signature-pipeline/local' --watch"
	@echo "Predict:    $(BIN)/sigpipe predict --server http://127.0.0.1:$(SCORER_PORT) IMAGE   (follows the champion as register moves it; log $(RUN_DIR)/scorer.log)"

down: ## Stop what `make up` started (TERM, then KILL after 10 s).
	@python -m tasks.services.local_services down --run-dir $(RUN_DIR)

team-up: venv ## Start PostgreSQL-backed Prefect and MLflow servers, the shared DVC remote and the deployment's worker (tasks/services/team.py).
	python -m tasks.services.team up

team-down: ## Stop what `make team-up` started (the worker first); the databases are kept for the next team-up.
	python -m tasks.services.team down

screenshots: venv ## After make up and a deployment run: the Prefect run and MLflow runs table as PNGs in docs/images (needs chromium).
	python docs/ui_screenshots.py --prefect-url http://127.0.0.1:$(PREFECT_PORT) --mlflow-url http://127.0.0.1:$(MLFLOW_PORT)

status: venv ## Show what DVC would rerun.
	dvc status

clean: ## Remove stage outputs (data, models, metrics, plots); keeps downloads, mlruns and .venv.
	rm -rf data/raw data/raw.incoming data/prepared data/embeddings data/scores data/checkpoints
	rm -f data/embed_run.json metrics/*.json models/*.keras models/*.json models/*.npz plots/*.png
