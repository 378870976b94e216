#!/usr/bin/env bash
# Downloads, on a machine with network, the wheels that the offline GPU machine lacks into .gpu_wheels/
# (git-ignored; pass it to the device run with carry=[".gpu_wheels"]). run_gpu.sh installs them with --no-deps:
# the GPU image already has torch, transformers and numpy, which must not be replaced.
# The list is what the H100 runs of 2026-11-22 needed; versions are those of the project's .venv (made by `make setup`), plus the peers the benchmarks compare against.
#   bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
pins=$("$PY" - <<'PY'
import importlib.metadata as metadata
names = ["lerobot", "draccus", "mergedeep", "toml", "gymnasium", "farama-notifications", "termcolor", "datasets",
         "dill", "multiprocess", "pyyaml-include", "av", "diffusers"]
def pin(name: str) -> str:  # the venv's version where it has the package
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name
print(" ".join(pin(name) for name in names))
PY
)
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 -d .gpu_wheels $pins "lightly==1.6.0" 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
ls .gpu_wheels
