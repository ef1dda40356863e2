#!/usr/bin/env bash
# Install check: the wheel alone, in a fresh virtual environment (no system
# site-packages, so every dependency comes from setup.cfg), from an empty
# directory with no repository on PYTHONPATH: the default experiment trains and
# evaluates without TensorFlow, and a notebook's install cell finds the package.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS
step() { echo "[install_check $((SECONDS - start))s] $*"; }

# Built from a copy of the tracked and unignored files: a build/ left in the
# checkout could carry files that no longer exist into the wheel.
mkdir "$WORK/src"
git -C "$REPO" ls-files -z --cached --others --exclude-standard |
  (cd "$REPO" && xargs -0 tar -cf - --ignore-failed-read) | tar -xf - -C "$WORK/src"
pip wheel --no-deps -q -w "$WORK/dist" "$WORK/src"
WHEEL="$(ls "$WORK"/dist/transformer_jax-*.whl)"
CONTENTS="$(unzip -Z1 "$WHEEL")"
grep -qx 'transformer_jax/configs/shakespeare_char.py' <<< "$CONTENTS" ||
  { echo "$WHEEL lacks transformer_jax/configs/; check setup.cfg's packages."; exit 1; }
grep -qx 'transformer_jax/data/shakespeare/README.md' <<< "$CONTENTS" ||
  { echo "$WHEEL lacks the Shakespeare data; check setup.cfg's package_data."; exit 1; }
step "built $(basename "$WHEEL") (configs and data inside)"

python -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q "$WHEEL"
step "installed the wheel and its dependencies into a fresh venv"

mkdir "$WORK/empty" && cd "$WORK/empty"
unset PYTHONPATH
PY="$WORK/venv/bin/python"
"$PY" -c 'import importlib.util as u; assert u.find_spec("tensorflow") is None, "TF installed"'
"$PY" -m transformer_jax.main --config=shakespeare_char:quick --workdir="$WORK/x" \
    --config.total_steps=5 --config.eval_steps=2 | tail -n 1
grep -q '"split": "eval"' "$WORK/x/metrics.jsonl" || { echo 'no eval record'; exit 1; }
step "trained and evaluated shakespeare_char:quick without TensorFlow"

# A notebook's first code cell; PIP_NO_INDEX makes any install attempt fail.
PIP_NO_INDEX=1 PIP_FIND_LINKS= "$PY" - "$REPO/notebooks/02_train_and_generate.ipynb" <<'PYTHON'
import json
import sys

cell = next(c for c in json.load(open(sys.argv[1]))['cells'] if c['cell_type'] == 'code')
exec(''.join(cell['source']))
import transformer_jax
assert transformer_jax.__file__.startswith(sys.prefix), transformer_jax.__file__
print('notebook install cell: nothing to install; transformer_jax from', transformer_jax.__file__)
PYTHON
step "done"
