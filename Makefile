# Two commands for a newcomer: `make demo` and `make test`. Everything else is here for users
# who want the pieces: the environment, the embedded stack, the jobs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.seedstory-installed
CONFIG ?= tiny
STATE_DIR ?= .stack
OVERRIDES ?=
PYTEST_ARGS ?=

# The lock applies to every pip call, build environments included: without it, building
# DeepSpeed or resolving an unpinned torch pulls the multi-GB CUDA build of torch.
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1

STACK := $(BIN)/seedstory stack
STACK_ARGS := --config $(CONFIG) stack.state_dir=$(STATE_DIR) $(OVERRIDES)

.PHONY: help env demo test test-tools serve serve-down stack-up stack-down stack-status clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	@# torch first (the CPU wheel where the index serves one: the README), so that DeepSpeed's source
	@# build compiles against it.
	$(BIN)/python -m pip install -q "torch==2.13.0"
	@# DeepSpeed on CPU loads a shared-memory comm op at every engine start: built here once, not
	@# JIT-compiled (45 s, two workers waiting) by the first job, and again whenever another ninja built it.
	@# No pip cache: a wheel cached from a build without the op would be reused.
	DS_BUILD_SHM_COMM=1 $(BIN)/python -m pip install -q --no-build-isolation --no-cache-dir "deepspeed==0.19.8"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip check
	@touch $(STAMP)

env: $(STAMP)  ## create the virtual environment (.venv) if missing or stale

stack-up: $(STAMP)  ## start SeaweedFS (S3), MLflow and a Ray head on 127.0.0.1 (a no-op for what is up)
	$(STACK) up $(STACK_ARGS)

stack-down: $(STAMP)  ## stop exactly the processes stack-up started
	$(STACK) down $(STACK_ARGS)

stack-status: $(STAMP)  ## which stack services are up
	$(STACK) status $(STACK_ARGS)

# Jobs inherit the stack's endpoints from the Ray head; the commit is passed for MLflow lineage.
SUBMIT := source $(STATE_DIR)/env.sh && $(BIN)/ray job submit --working-dir . \
	--runtime-env-json '{"env_vars": {"SEEDSTORY_GIT_COMMIT": "$(shell git rev-parse HEAD 2>/dev/null)"}}' --

DEMO_CONFIG ?= demo
DEMO_JOBS := generate_toyworld prepare_data pretrain_bases detokenizer_pretrain story_instruct detokenizer_adapt

DEMO_STORY ?= out/demo-story

demo: stack-up  ## toy world, its prepared dataset, pretrained bases, the three stages (each a `ray job submit`), then a story from them
	@for job in $(DEMO_JOBS); do \
		echo "==> ray job submit ... python jobs/$$job.py --config $(DEMO_CONFIG) $(OVERRIDES)"; \
		$(SUBMIT) python jobs/$$job.py --config $(DEMO_CONFIG) $(OVERRIDES) || exit 1; \
	done
	@echo "==> seedstory generate --from-split test --segments 8 --out $(DEMO_STORY)"
	@source $(STATE_DIR)/env.sh && $(BIN)/seedstory generate --config $(DEMO_CONFIG) --from-split test \
		--segments 8 --out $(DEMO_STORY) $(OVERRIDES)
	@source $(STATE_DIR)/env.sh && printf '\n%s\n' \
		"Demo done. Where to look:" \
		"  MLflow runs:    $$MLFLOW_TRACKING_URI/#/experiments  (experiment tracking.experiment: toyworld + one run per stage)" \
		"  MLflow models:  $$MLFLOW_TRACKING_URI/#/models  (seedstory-base-{vae,clip,llm}, seedstory-detokenizer, seedstory-mllm, seedstory-adapted-detokenizer @candidate)" \
		"  Ray dashboard:  $$RAY_API_SERVER_ADDRESS  (jobs, logs)" \
		"  Object storage: $$AWS_ENDPOINT_URL  s3://$$SEEDSTORY_BUCKET/{toyworld,prepared,base,runs,exports}" \
		"  The story:      file://$(abspath $(DEMO_STORY))/index.html  (written by the models above)" \
		"  Stop the stack: make stack-down"

test: $(STAMP) test-tools  ## run the whole test suite (starts and stops its own stack)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The storybook page is tested in Debian's chromium, the KubeRay overlays rendered with kubectl
# kustomize, the GCS restart against Debian's redis-server; install them where we can, say so where
# we cannot.
TEST_TOOLS := chromium:chromium chromedriver:chromium-driver kubectl:kubectl redis-server:redis-server

test-tools:
	@for tool in $(TEST_TOOLS); do \
		command=$${tool%%:*}; package=$${tool##*:}; \
		if command -v $$command >/dev/null; then continue; fi; \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "==> apt-get install $$package (for the tests that need $$command)"; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$package >/dev/null) \
				|| echo "note: could not install $$package; the tests that need $$command will be skipped"; \
		else echo "note: the tests that need $$command will be skipped (apt-get install $$package as root)"; fi; \
	done

SERVE_FILE ?= serve/config.yaml

serve: stack-up  ## deploy the story service (serve/config.yaml: models of `make demo`) and print its URL
	source $(STATE_DIR)/env.sh && $(BIN)/seedstory serve deploy --file $(SERVE_FILE)

serve-down: $(STAMP)  ## take the story service down (the stack stays up)
	source $(STATE_DIR)/env.sh && $(BIN)/serve shutdown --yes --address $$RAY_API_SERVER_ADDRESS

clean: stack-down  ## stop the stack and remove its state (the venv stays)
	rm -rf $(STATE_DIR)
