# Two commands do all set-up on a fresh machine (see README.md):
#   make demo   - the main job on embedded defaults
#   make test   - the test suite (offline, CPU)
# Both create .venv with Python >= 3.12 and install the three distributions once;
# a second run skips what already exists.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEPS   := pyproject.toml policies/pyproject.toml envs/pyproject.toml

# First Python >= 3.12 found (pyenv shims honour .python-version).
PYTHON ?= $(shell for p in python3.12 python3.13 python3 $$HOME/.pyenv/versions/3.12.*/bin/python3.12; do \
	  $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { echo $$p; break; }; done)

export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: demo test setup bench clean

setup: $(STAMP)

$(STAMP): $(DEPS)
	@test -n "$(PYTHON)" || { echo "error: need Python >= 3.12 (python3.12 not found on PATH)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# One pip command so the resolver sees every pin at once (Meta-World needs mujoco 3.3.0).
	$(PY) -m pip install --quiet -e ".[dev]" -e ./policies -e ./envs
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m lerobot_env_vla_dino.demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

bench: $(STAMP)
	$(PY) benchmarks/bench_encoder.py

clean:
	rm -rf $(VENV) outputs
