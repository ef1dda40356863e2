"""Passage genre classification on Shakespeare (encoder-only).

Each passage of seq_len characters is labelled with its work's First Folio
genre (comedy / history / tragedy / poem, from genres.tsv); works are split
so that no play is in both train and test. The classifier pools the encoder's
outputs over real tokens (config.model.pooling) into a linear layer.

  python -m transformer_jax.main --config=shakespeare_genre --workdir=runs/genre
  python -m transformer_jax.main --config=shakespeare_genre:quick \
      --workdir=/tmp/genre_quick
"""

from transformer_jax import config as config_lib
from transformer_jax import configs

ARGS = {'quick': 'a short smoke run'}


def get_config(arg: str = ''):
  """arg: '' (the full run) or one of ARGS."""
  arg = configs.parse_arg(arg, ARGS)
  c = config_lib.base_config()
  c.model.variant = 'encoder'
  c.model.encoder_head = 'classify'
  c.model.num_classes = 4
  c.model.pooling = 'mean'
  c.model.num_layers = 4
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.ffn_ratio = 4.0
  c.model.dropout_rate = 0.1
  c.model.vocab_size = 96
  c.model.norm = 'pre'
  c.model.activation = 'gelu'
  c.model.max_len = 256
  c.data.name = 'shakespeare'
  c.data.task = 'classify'
  c.data.tokenizer = 'char'
  c.seq_len = 256
  c.batch_size = 32
  c.total_steps = 2000
  c.warmup_steps = 200
  c.optimizer.label_smoothing = 0.0
  c.eval_every = 500
  c.checkpoint_every = 500
  c.log_every = 100
  if arg == 'quick':
    c.total_steps = 100
    c.eval_every = 100
    c.eval_steps = 10
    c.checkpoint_every = 100
    c.log_every = 50
  return c
