# Two set-up-free entry points: `make demo` (serve a model locally, show what the operator would create)
# and `make test`. Both create the virtualenv on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch wheels: CPU-only machines and CUDA nodes both take these pins (see README "Installing").
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo demo-train test lint bench e2e e2e-existing crds clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[server,operator,dev]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/python -m deepdetect_server.demo

# generate a toy labelled set -> train -> evaluate on held-out images -> serve, a few minutes on 2 CPUs
demo-train: venv
	$(BIN)/python -m deepdetect_server.demo_train

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not e2e" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .

# crds/ is generated from api.py; kustomize (load restrictor) and Helm (.Files) cannot read outside their
# roots, so the packaging keeps byte-identical copies, checked by tests/packaging.
CRD_COPIES := manifests/base/crds charts/deepdetect-operator/files/crds
crds: venv
	$(BIN)/deepdetect-operator crd > crds/deepdetectservices.deepdetect.io.yaml
	for d in $(CRD_COPIES); do cp crds/deepdetectservices.deepdetect.io.yaml $$d/; done

bench: venv
	$(BIN)/python bench/server.py
	$(BIN)/python bench/operator.py

e2e: venv
	$(BIN)/python -m pytest -v -rs -m e2e e2e/

e2e-existing: venv
	E2E_EXISTING_CLUSTER=1 $(BIN)/python -m pytest -v -rs -m e2e e2e/

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
