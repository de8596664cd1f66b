# The two commands of the README, plus the pieces they are made of.
# Both set everything up on a fresh machine; scripts/install.sh is idempotent and reuses the
# cached Horovod build, so a second run costs seconds.
PY := $(or $(filter-out system,$(HVDTRAIN_VENV)),.venv)/bin/python

.PHONY: demo test install lint docs image gpu-check
demo: install
	$(PY) -m hvdtrain.demo

test: install
	bash scripts/system-packages.sh test
	bash scripts/run-tests.sh $(PY)

install:
	bash scripts/install.sh

# The Docker image (Dockerfile): FLAVOR=cpu|gpu, EXTRAS="spark", TAG=...; see scripts/image.sh.
image:
	EXTRAS="$(EXTRAS)" TAG="$(or $(TAG),hvdtrain:$(or $(FLAVOR),cpu))" bash scripts/image.sh $(or $(FLAVOR),cpu)

# ruff (pyproject.toml) and hadolint (.hadolint.yaml); CI runs it before the tests. Most findings
# are fixed by `ruff check --fix .` and `ruff format .`.
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(dir $(PY))hadolint --config .hadolint.yaml Dockerfile

# The documentation site (mkdocs.yml: docs/, with README.md as its home page) into site/; --strict
# makes a broken link or anchor, or an API reference entry that no longer resolves, an error.
docs: install
	$(PY) -m mkdocs build --strict

# On a host with NVIDIA GPUs: installs the gpu flavour into .venv-gpu and runs the acceptance checks
# (gpu-check-results/). Without a GPU it says so in one line. Never part of demo or test.
gpu-check:
	@bash scripts/gpu-check.sh
