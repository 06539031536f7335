# Developer entry points. Every target uses the project's .venv (made by `make venv` or by
# ./scripts/test.sh) and the buf pinned in package.json (npm ci).
PY ?= .venv/bin/python
BUF ?= node_modules/.bin/buf
# `make breaking` compares the protos with this git ref (default: the previous commit).
BASE ?= HEAD~1

.PHONY: venv lint format protos typescript test test-fast breaking check-deploy

venv:
	./scripts/install.sh

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(BUF) lint
	$(BUF) format --diff --exit-code
	$(PY) scripts/generate_protos.py --check

format:
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .
	$(BUF) format -w

protos:
	$(PY) scripts/generate_protos.py

breaking:
	./scripts/buf_breaking.sh $(BASE)

# Generates TypeScript from protos/ (buf.gen.yaml) and compiles it with strict tsc.
typescript:
	./scripts/check_typescript.sh

# The README's test command: installs what it needs, then every test.
test:
	./scripts/test.sh

# The inner loop: skips the tests that run Meta's sam3 code (marker `sam3`) and the replicas
# behind a real Envoy (marker `envoy`); about 1.5 minutes here against 3.5 for everything.
test-fast:
	$(PY) -m pytest -m "not sam3 and not envoy" -q

# Offline checks of deploy/ (Envoy config, kustomize rendering, manifests); CI runs it.
check-deploy:
	PY=$(PY) ./scripts/check_deploy.sh
