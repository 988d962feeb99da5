# Short names for the project's commands. Everything runs from a local virtualenv (.venv).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DATA ?= data/demo
DEMO_RUN ?= runs/demo
DEMO_USERS ?= 600
DEMO_ITEMS ?= 400
# Epochs of the demo run and of its retrains; empty = configs/demo.yaml's (make demo DEMO_EPOCHS=3).
DEMO_EPOCHS ?=
ARTIFACTS ?= artifacts
PORT ?= 8000
ADMIN_TOKEN ?= demo-token
TIKTOK ?= ../shared/data/tiktok
# The evaluation split of the quality benchmarks (score a held-out file with EVAL=path/test.json).
EVAL ?= $(TIKTOK)/val.json

.PHONY: install demo demo-reset serve test mutation lint typecheck validate-docker topology compose-test lock-docker bench-train bench-quality bench-coldstart bench-sensitivity bench-serve bench-scale soak clean

install: $(VENV)/.installed

# pip >= 25 relays setuptools' notice about editable installs of a flat layout as a warning: it is
# about how editable installs work, not about this project, so a first install stays quiet.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/python -m pip install -q -e '.[train,serve,dev,bench,data]'
	touch $@

## The main job, end to end on built-in synthetic data: data -> train -> artifact -> API on :$(PORT).
## A second run serves what $(ARTIFACTS)/CURRENT names (the last promoted model, a retrained one
## included) and trains nothing; `make demo-reset` trains from scratch and promotes that model.
define demo_train
	$(BIN)/python -m training synth --out $(DEMO_DATA) --users $(DEMO_USERS) --items $(DEMO_ITEMS) --seed 0
	$(BIN)/python -m training train --data $(DEMO_DATA) --config configs/demo.yaml --out $(DEMO_RUN) \
		--no-progress --export-to $(ARTIFACTS) --promote $(1) $(if $(DEMO_EPOCHS),epochs=$(DEMO_EPOCHS))
endef

# A quiet stop: scripts/serve.py exits 0 on Ctrl-C / SIGTERM, `exec` leaves no shell in between to
# die of the signal, and demo inlines this (a sub-make dying of it makes make print "Interrupt").
SERVE = exec env ARTIFACT_ROOT=$(ARTIFACTS) RETRAIN_DATA_DIR=$(DEMO_DATA) RETRAIN_CONFIG=configs/demo.yaml \
	$(if $(DEMO_EPOCHS),RETRAIN_OVERRIDES='{"epochs": $(DEMO_EPOCHS)}') ADMIN_TOKEN=$(ADMIN_TOKEN) $(BIN)/python scripts/serve.py --port $(PORT)

demo: install
	$(call demo_train,--keep-current)
	$(SERVE)

demo-reset: install
	rm -rf $(DEMO_RUN)
	$(call demo_train,)
	$(SERVE)

serve: install
	$(SERVE)

## Lint, type-check and the whole test suite (what CI runs). The Redis tests use the server on
## 127.0.0.1:6379 (TEST_REDIS_URL), or else a private redis-server that scripts/with_redis.py starts.
## Two pytest-xdist workers, one per core, a test file at a time (module fixtures such as the
## topology are built once); TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: install lint typecheck
	$(BIN)/python scripts/with_redis.py -- $(BIN)/python -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

## Mutation testing of the core modules (not in CI: tens of minutes on 2 cores; see docs/TESTING.md)
mutation: install
	nice -n 10 $(BIN)/python scripts/mutation.py $(MUTATION_ARGS) $(MODULES)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

## Deployment checks (also run by the test suite)
validate-docker: install
	$(BIN)/python scripts/validate_docker.py

topology: install
	$(BIN)/python scripts/topology.py

## The stack built and run for real in Docker (needs root or the docker group): docs/DEPLOY.md
compose-test: install
	$(BIN)/python scripts/compose_test.py

lock-docker: install
	$(BIN)/python scripts/lock_requirements.py

## Benchmarks (not tests): see docs/BENCHMARKS.md
bench-train: install
	$(BIN)/python -m training train --data $(TIKTOK) --config configs/tiktok.yaml --out runs/tiktok

bench-quality: install
	$(BIN)/python -m benchmarks.quality --data $(TIKTOK) --eval-split $(EVAL) --config configs/tiktok.yaml \
		--seeds 1 2 3 --variants full id_only no_asl no_cl no_gt --jobs 2 num_threads=1
	$(BIN)/python -m benchmarks.content_signal --data $(TIKTOK) --eval-split $(EVAL)

bench-coldstart: install
	$(BIN)/python -m benchmarks.coldstart --data $(TIKTOK) --config configs/tiktok.yaml --seed 1 \
		--report test --content bpr ridge --ordinary --out benchmarks/results/coldstart num_threads=1

bench-sensitivity: install
	$(BIN)/python -m benchmarks.sensitivity --data $(TIKTOK) --eval-split $(EVAL) --config configs/tiktok.yaml \
		--seeds 1 --jobs 2 --sweep n_layers=1,2,3 --sweep zeta=0,1,100 --sweep cl_temperature=0.2,0.5,1.0 \
		--sweep embed_dim=32,64,128 num_threads=1

bench-serve: install
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m benchmarks.serve.load
	$(BIN)/python -m benchmarks.serve.faults
	$(BIN)/python -m benchmarks.serve.hostile

bench-scale: install
	$(BIN)/python -m benchmarks.serve.scale

soak: install
	$(BIN)/python -m benchmarks.serve.soak

clean:
	rm -rf runs $(ARTIFACTS) $(DEMO_DATA) .pytest_cache .mypy_cache .ruff_cache
