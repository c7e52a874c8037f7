# signature-pipeline: `make demo` runs the pipeline offline on generated data, `make test` runs the tests.
# Both create .venv and install the project on first use. `make help` lists every target.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(abspath $(VENV))/bin
EXTRAS ?= cpu,dev
PYTEST_ARGS ?=

export PATH := $(BIN):$(PATH)
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TF_CPP_MIN_LOG_LEVEL := 2

.DEFAULT_GOAL := help
.PHONY: help venv demo test test-fast lint format status clean

help: ## List the targets.
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --constraint constraints.txt --editable ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed ## Create .venv and install the project (EXTRAS=cpu,dev by default; cuda, gdrive, kaggle too).

demo: venv ## Run the whole pipeline offline on the generated dataset (dvc repro), then show the metrics.
	dvc repro
	@echo
	dvc metrics show
	@echo
	@echo "Manifest:       data/prepared/manifest.csv"
	@echo "Data report:    data/prepared/data_report.md"
	@echo "Classifier:     models/classifier.keras (labels: models/labels.json)"
	@echo "Learning curve: plots/learning_curve.png; evaluation plots: plots/*.png"
	@echo "Registered:     models:/utsig-inceptionv3@champion (metrics/register.json)"
	@echo "Try:            $(BIN)/sigpipe predict data/raw/UTSig/Genuine/1/1.tif"
	@echo "MLflow UI:      $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host 127.0.0.1 --workers 1"

test: venv ## Run every test, the slow end-to-end ones included.
	pytest $(PYTEST_ARGS)

test-fast: venv ## Run the tests without the slow end-to-end ones.
	pytest -m "not slow" $(PYTEST_ARGS)

lint: venv ## Check style with ruff.
	ruff check flows tasks tests bench
	ruff format --check flows tasks tests bench

format: venv ## Format the code with ruff.
	ruff format flows tasks tests bench
	ruff check --fix flows tasks tests bench

status: venv ## Show what DVC would rerun.
	dvc status

clean: ## Remove stage outputs (data, models, metrics, plots); keeps downloads, mlruns and .venv.
	rm -rf data/raw data/raw.incoming data/prepared data/features data/checkpoints
	rm -f metrics/*.json models/*.keras models/*.json plots/*.png
