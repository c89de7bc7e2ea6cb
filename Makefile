# Two commands for a newcomer: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Without a GPU, install the small local CPU wheel first; with one, let pip pick a CUDA build.
ifeq ($(shell command -v nvidia-smi 2>/dev/null),)
TORCH_SPEC ?= torch==2.13.0
else
TORCH_SPEC ?= torch>=2.4
endif
MUJOCO_GL ?= egl
export MUJOCO_GL
DEBIAN_PACKAGES := libegl1 libgl1-mesa-dri libosmesa6

.PHONY: setup system-deps test demo bench clean arm-venv franka-sim franka-venvs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

# MuJoCo renders headless through EGL (or OSMesa); these come from Debian.
system-deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "MuJoCo needs: sudo apt-get install -y $$missing"; \
	fi

test: setup
	-@$(MAKE) --no-print-directory franka-venvs || echo "franka venvs not installed: the franka-sim tests will skip"
	$(BIN)/pytest -q

demo: setup
	$(BIN)/jepa-planner demo

bench: setup
	$(BIN)/jepa-planner bench world-model
	$(BIN)/jepa-planner bench plan
	$(BIN)/jepa-planner bench server

clean:
	rm -rf $(VENV) $(ARM_VENV) $(FRANKA_SIM_VENV) build *.egg-info .pytest_cache

# A real Franka's side (issue 11). `arm-venv`: robot_bridge without torch plus franky-control and
# pylibfranka (the `arm` extra's list, then the package itself with --no-deps). `franka-sim`: the
# Franka network-protocol simulator in its own venv (it pins mujoco 3.2.7 and numpy 1.26).
ARM_VENV ?= .venv-arm
FRANKA_SIM_VENV ?= .venv-franka-sim
FRANKA_SIM_SPEC ?= franka-sim==1.1.7

franka-venvs: arm-venv franka-sim

arm-venv: $(ARM_VENV)/.installed

$(ARM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(ARM_VENV)
	$(ARM_VENV)/bin/pip install -q --upgrade pip
	$(PYTHON) -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['arm']))" > $(ARM_VENV)/requirements.txt
	$(ARM_VENV)/bin/pip install -q -r $(ARM_VENV)/requirements.txt
	$(ARM_VENV)/bin/pip install -q --no-deps -e .
	@touch $@

franka-sim: $(FRANKA_SIM_VENV)/.installed

$(FRANKA_SIM_VENV)/.installed:
	$(PYTHON) -m venv $(FRANKA_SIM_VENV)
	$(FRANKA_SIM_VENV)/bin/pip install -q --upgrade pip
	$(FRANKA_SIM_VENV)/bin/pip install -q "$(FRANKA_SIM_SPEC)"
	@touch $@
