# ovss-d2: `make setup` installs everything into .venv; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test quickstart lint clean gpu-check

setup: $(VENV)/.setup-done

INSTALL_DEPS := requirements.txt setup.py tools/install_env.sh tools/detectron2_ops_stub.c tools/detectron2_fixes.py

$(VENV)/.setup-done: $(INSTALL_DEPS) requirements-web.txt
	PYTHON=$(PYTHON) VENV=$(VENV) bash tools/install_env.sh

# everything but the web demo's dependencies: all the quickstart needs
$(VENV)/.core-done: $(INSTALL_DEPS)
	PYTHON=$(PYTHON) VENV=$(VENV) WEB=0 bash tools/install_env.sh

test: setup
	$(VPY) -m pytest tests $(PYTEST_ARGS)

quickstart: $(VENV)/.core-done
	$(VPY) tools/quickstart.py

# on a GPU machine: CUDA tests, golden tests on CUDA, benchmarks (docs/performance.md, "make gpu-check");
# GPU_CHECK_ARGS: e.g. --quick, --sed-checkout PATH --err-seg-checkout PATH
GPU_CHECK_ARGS ?=
gpu-check: $(VENV)/.core-done
	$(VPY) tools/gpu_check.py $(GPU_CHECK_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf build $(VENV) *.egg-info
