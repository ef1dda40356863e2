"""Masked language model on Shakespeare (encoder-only, BERT-style).

Characters are masked at config.data.mask_rate (15%) with BERT's 80/10/10
corruption ([MASK] / random / unchanged); the loss and accuracy count only the
masked positions. Split as the LM: first 90% of the corpus trains, last 10%
evaluates.

  python -m transformer_jax.main --config=shakespeare_mlm --workdir=runs/mlm
  python -m transformer_jax.main --config=shakespeare_mlm:quick \
      --workdir=/tmp/mlm_quick
"""

from transformer_jax import config as config_lib
from transformer_jax import configs

ARGS = {'quick': 'a short smoke run'}


def get_config(arg: str = ''):
  """arg: '' (the full run) or one of ARGS."""
  arg = configs.parse_arg(arg, ARGS)
  c = config_lib.base_config()
  c.model.variant = 'encoder'
  c.model.encoder_head = 'mlm'
  c.model.num_layers = 4
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.ffn_ratio = 4.0
  c.model.dropout_rate = 0.1
  c.model.vocab_size = 96
  c.model.norm = 'pre'
  c.model.activation = 'gelu'
  c.model.max_len = 128
  c.data.name = 'shakespeare'
  c.data.task = 'mlm'
  c.data.tokenizer = 'char'
  c.seq_len = 128
  c.batch_size = 32
  c.total_steps = 3000
  c.warmup_steps = 300
  c.optimizer.label_smoothing = 0.0
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.log_every = 100
  if arg == 'quick':
    c.total_steps = 200
    c.eval_every = 200
    c.eval_steps = 20
    c.checkpoint_every = 200
    c.log_every = 50
  return c
