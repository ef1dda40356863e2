"""The paper's big model on WMT 2014 English-German (Table 3, "big").

The base model's config (wmt14_ende_base) with N=6, d_model=1024, h=16,
d_ff=4096, P_drop=0.3; 300k steps.

  python -m transformer_jax.main --config=wmt14_ende_big --workdir=runs/wmt14_big
  python -m transformer_jax.main --config=wmt14_ende_big --mode=describe
  python -m transformer_jax.main --config=wmt14_ende_big:quick \
      --workdir=/tmp/wmt14_big_quick      # CPU smoke run: the base model's quick run, P_drop 0.3
"""

from transformer_jax import configs
from transformer_jax.configs import wmt14_ende_base

ARGS = wmt14_ende_base.ARGS


def get_config(arg: str = ''):
  """arg: '' (the paper's big model) or one of ARGS."""
  c = wmt14_ende_base.get_config(configs.parse_arg(arg, ARGS))
  c.model.dropout_rate = 0.3
  if not arg:
    c.model.update(d_model=1024, num_heads=16, ffn_ratio=4.0)
    c.total_steps = 300_000
  return c
