"""Decoder-only language model on the One Billion Word benchmark (TFDS lm1b).

A GPT-style model over a 32k SentencePiece vocabulary trained on the fly from
1M sentences of the training split (cached in the workdir). Needs the TFDS
data: on a machine with internet TFDS downloads and prepares it (array_record,
read record by record while training) into config.data.data_dir.

  python -m transformer_jax.main --config=lm1b --workdir=runs/lm1b
  python -m transformer_jax.main --config=lm1b:quick --workdir=/tmp/lm1b
"""

from transformer_jax import config as config_lib
from transformer_jax import configs

ARGS = {'quick': 'a short run on the first 10k sentences'}


def get_config(arg: str = ''):
  """arg: '' (the full run) or one of ARGS."""
  arg = configs.parse_arg(arg, ARGS)
  c = config_lib.base_config()
  c.model.variant = 'decoder'
  c.model.num_layers = 6
  c.model.d_model = 512
  c.model.num_heads = 8
  c.model.ffn_ratio = 4.0
  c.model.dropout_rate = 0.1
  c.model.vocab_size = 32000
  c.model.norm = 'pre'
  c.model.max_len = 128
  c.data.name = 'tfds:lm1b'
  c.data.task = 'lm'
  c.data.tokenizer = 'sentencepiece'
  c.data.vocab_size = 32000
  c.data.packing = True
  c.data.overflow = 'truncate'
  c.seq_len = 128
  c.batch_size = 256
  c.total_steps = 100_000
  c.warmup_steps = 4000
  c.optimizer.label_smoothing = 0.0
  c.eval_every = 2000
  c.eval_steps = 100
  c.checkpoint_every = 2000
  if arg == 'quick':
    c.model.num_layers = 2
    c.model.d_model = 128
    c.model.num_heads = 4
    c.model.vocab_size = 4000
    c.data.vocab_size = 4000
    c.data.max_examples = 10_000
    c.batch_size = 32
    c.total_steps = 200
    c.eval_every = 200
    c.eval_steps = 20
    c.checkpoint_every = 200
  return c
