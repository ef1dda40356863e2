"""The paper's big model on WMT 2014 English-German (Table 3, "big").

The base model's config (wmt14_ende_base.py) with N=6, d_model=1024, h=16,
d_ff=4096, P_drop=0.3; 300k steps.

  python -m transformer_jax.main --config=experiments/configs/wmt14_ende_big.py \
      --workdir=runs/wmt14_big
  python -m transformer_jax.main --config=experiments/configs/wmt14_ende_big.py --mode=describe
  python -m transformer_jax.main --config=experiments/configs/wmt14_ende_big.py:quick \
      --workdir=/tmp/wmt14_big_quick      # CPU smoke run: the base model's quick run, P_drop 0.3
"""

import importlib.util
import os


def _base_config(arg: str):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'wmt14_ende_base.py')
  spec = importlib.util.spec_from_file_location('wmt14_ende_base', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_config(arg: str = ''):
  """arg: '' (the paper's big model) or 'quick' (a CPU smoke run)."""
  c = _base_config(arg)
  c.model.dropout_rate = 0.3
  if not arg:
    c.model.update(d_model=1024, num_heads=16, ffn_ratio=4.0)
    c.total_steps = 300_000
  return c
