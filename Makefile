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
# The console's browser tests drive Debian's Chromium (Playwright's own browser download is unreachable).
BROWSER_PACKAGE := chromium

.PHONY: setup system-deps browser-deps test demo bench clean robosuite gpu-check lerobot-venv lerobot-check arm-venv franka-sim franka-venvs ray-deps

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	@$(MAKE) --no-print-directory browser-deps
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

# Optional: without Chromium the console's browser tests skip and say why; setup goes on.
browser-deps:
	@if command -v chromium >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "installing $(BROWSER_PACKAGE) (for the console's browser tests)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BROWSER_PACKAGE) >/dev/null; } \
			|| echo "could not install $(BROWSER_PACKAGE): the console's browser tests will be skipped"; \
	else \
		echo "the console's browser tests need: sudo apt-get install -y $(BROWSER_PACKAGE)"; \
	fi

# robosuite pins mujoco 3.3.x and numpy 1.26: its arm runs from its own torch-free environment.
ROBOSUITE_VENV := .venv-robosuite
robosuite: $(ROBOSUITE_VENV)/.installed

$(ROBOSUITE_VENV)/.installed: pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	$(PYTHON) -m venv $(ROBOSUITE_VENV)
	$(ROBOSUITE_VENV)/bin/pip install -q --upgrade pip
	$(ROBOSUITE_VENV)/bin/pip install -q robosuite==1.5.2 mujoco==3.3.7 "pyzmq>=25" "msgpack>=1.0" "httpx>=0.27" "imageio>=2.34" "matplotlib>=3.8" "pyarrow>=15,<20" "tqdm>=4.60" "pyyaml>=6"
	$(ROBOSUITE_VENV)/bin/pip install -q --no-deps -e .
	@touch $@

# The robosuite smoke test skips (with the reason) when its environment could not be made.
test: setup
	@$(MAKE) --no-print-directory ray-deps || echo "Ray Serve not installed: the scale-out tests will skip"
	@$(MAKE) --no-print-directory robosuite || echo "robosuite environment not made: its tests will skip"
	@$(MAKE) --no-print-directory lerobot-venv || echo "LeRobot environment not made: its tests will skip"
	@$(MAKE) --no-print-directory franka-venvs || echo "franka venvs not installed: the franka-sim tests will skip"
	LEROBOT_VENV=$(LEROBOT_VENV) $(BIN)/pytest -q

# The optional [ray] extra (serve --replicas) in .venv: ~25 s and ~360 MB, so not in `setup` (dev) but in
# `make test`, whose scale-out tests need it; torch is already the pinned one, so pip keeps it.
ray-deps: $(VENV)/.ray-installed

$(VENV)/.ray-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev,ray]'
	@touch $@

demo: setup
	$(BIN)/jepa-planner demo

bench: setup
	$(BIN)/jepa-planner bench world-model
	$(BIN)/jepa-planner bench plan
	$(BIN)/jepa-planner bench server

# On a CUDA machine: parity + bf16 on CUDA, ViT-g planning and fleet benchmarks, one JSON (< 8 min).
gpu-check: setup
	$(BIN)/jepa-planner gpu-check

clean:
	rm -rf $(VENV) $(ROBOSUITE_VENV) $(LEROBOT_VENV) $(ARM_VENV) $(FRANKA_SIM_VENV) build *.egg-info .pytest_cache

# LeRobot 0.4.4 itself, in its own venv, reading our datasets (tests/lerobot_check.py; issue 12).
# lerobot's pins (torch<2.11) are skipped with --no-deps: only its dataset module is used.
LEROBOT_VENV ?= .lerobot-venv
LEROBOT_LIBS := datasets huggingface_hub pandas pyarrow av jsonlines packaging accelerate draccus torchvision==0.28.0

lerobot-venv: $(LEROBOT_VENV)/.installed

$(LEROBOT_VENV)/.installed:
	$(PYTHON) -m venv $(LEROBOT_VENV)
	$(LEROBOT_VENV)/bin/pip install -q "torch==2.13.0"
	$(LEROBOT_VENV)/bin/pip install -q --no-deps lerobot==0.4.4
	$(LEROBOT_VENV)/bin/pip install -q $(LEROBOT_LIBS)
	@touch $@

lerobot-check: setup lerobot-venv
	LEROBOT_VENV=$(LEROBOT_VENV) $(BIN)/pytest -q tests/test_lerobot_real.py

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
