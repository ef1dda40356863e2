"""Grapheme-to-phoneme conversion on the CMU Pronouncing Dictionary (seq2seq).

The encoder reads a word's letters, the decoder writes its ARPAbet phonemes
(stress removed; --config.data.keep_stress=True keeps it). Split: words in
dictionary order, every 20th to dev, positions 17 and 18 mod 20 to test, the
rest to train. The model is the size of the CMU Sphinx g2p-seq2seq Transformer
(3 layers, size 256), whose published word error rate on this dictionary is 30.2%.

  python -m transformer_jax.main --config=cmudict_g2p --workdir=runs/g2p
  python -m transformer_jax.main --config=cmudict_g2p:cpu \
      --workdir=runs/g2p_cpu                                   # the same model, sized for a CPU
  python -m transformer_jax.main --config=cmudict_g2p:quick \
      --workdir=/tmp/g2p_quick                                 # a CPU smoke run

The :cpu run resumed with --config.total_steps=4500 (a longer cosine schedule,
3.4 CPU-hours in all) reaches 29.1% test WER: experiments/results/cmudict_g2p_cpu.

Evaluate the test split (every word, beam search) from a run's last checkpoint:

  python -m transformer_jax.main --config=cmudict_g2p:cpu \
      --workdir=runs/g2p_cpu --mode=eval --config.data.eval_split=test
"""

from transformer_jax import config as config_lib
from transformer_jax import configs

ARGS = {'cpu': 'the same model in under 2 CPU-hours', 'quick': 'a CPU smoke run'}


def get_config(arg: str = ''):
  """arg: '' (the full run) or one of ARGS."""
  arg = configs.parse_arg(arg, ARGS)
  c = config_lib.base_config()
  c.model.variant = 'seq2seq'
  c.model.num_layers = 3
  c.model.d_model = 256
  c.model.num_heads = 4
  c.model.ffn_ratio = 4.0
  c.model.dropout_rate = 0.1
  c.model.vocab_size = 128  # one table: 4 special ids, 29 letters, 39 phonemes (72 used).
  c.model.share_embeddings = True
  c.model.max_len = 64
  c.data.name = 'cmudict'
  c.data.task = 'seq2seq'
  c.data.bucketing = True
  c.seq_len = 32  # the longest word has 28 letters and 28 phonemes, plus <eos>.
  c.batch_size = 256
  c.total_steps = 30_000
  c.warmup_steps = 4000
  c.learning_rate = 2.0
  c.optimizer.label_smoothing = 0.1
  c.eval_every = 2000
  c.checkpoint_every = 2000
  c.log_every = 100
  if arg == 'cpu':
    # Words packed ~7 to a 64-token row (no padding to the longest word), pre-LN
    # and a cosine schedule, which learn faster in few epochs than the paper's
    # post-LN and rsqrt warmup; 64 rows a step, 2000 steps: about 8 epochs.
    c.model.norm = 'pre'
    c.data.bucketing = False
    c.data.packing = True
    c.seq_len = 64
    c.batch_size = 64
    c.total_steps = 2000
    c.warmup_steps = 200
    c.learning_rate = 2e-3
    c.optimizer.schedule = 'cosine'
    c.eval_every = 1000
    c.checkpoint_every = 250
    c.log_every = 50
  elif arg == 'quick':
    c.model.num_layers = 2
    c.model.d_model = 64
    c.batch_size = 64
    c.total_steps = 200
    c.warmup_steps = 100
    c.eval_every = 200
    c.eval_steps = 20
    c.checkpoint_every = 200
    c.log_every = 50
  return c
