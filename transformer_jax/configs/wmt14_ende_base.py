"""The paper's base model on WMT 2014 English-German (Table 3, "base").

N=6, d_model=512, h=8, d_ff=2048, P_drop=0.1, label smoothing 0.1, shared
~37k-token vocabulary and shared embeddings; 100k steps of ~25k tokens.

  python -m transformer_jax.main --config=wmt14_ende_base \
      --workdir=runs/wmt14_base
  python -m transformer_jax.main --config=wmt14_ende_base --mode=describe
  python -m transformer_jax.main --config=wmt14_ende_base:quick \
      --workdir=/tmp/wmt14_quick          # CPU smoke run: small model, the first 10k pairs

The TFDS builder downloads and prepares WMT14 on first use (several GB, in
array_record format: training streams the 4.5M pairs record by record);
--config.data.data_dir points at an existing TFDS data directory (one prepared
as tfrecord needs `tfds build wmt14_translate/de-en --file_format=array_record`).
"""

from transformer_jax import config as config_lib
from transformer_jax import configs

ARGS = {'quick': 'a CPU smoke run: small model, the first 10k pairs'}


def get_config(arg: str = ''):
  """arg: '' (the paper's base model) or one of ARGS."""
  arg = configs.parse_arg(arg, ARGS)
  c = config_lib.base_config()
  c.model.variant = 'seq2seq'
  c.model.num_layers = 6
  c.model.d_model = 512
  c.model.num_heads = 8
  c.model.ffn_ratio = 4.0
  c.model.dropout_rate = 0.1
  c.model.vocab_size = 37000
  c.model.share_embeddings = True
  c.data.name = 'tfds:wmt14_translate/de-en'
  c.data.task = 'seq2seq'
  c.data.source_language = 'en'
  c.data.target_language = 'de'
  c.data.tokenizer = 'sentencepiece'  # shared source-target vocabulary, as the paper's BPE.
  c.data.spm_model_type = 'bpe'
  c.data.vocab_size = 37000
  c.data.packing = True
  c.data.overflow = 'drop'  # counted and reported in the run's data info.
  c.seq_len = 256
  c.total_steps = 100_000
  c.warmup_steps = 4000
  c.batch_size = 96  # ~25k source + ~25k target tokens per step at 256 packed tokens a row.
  c.eval_every = 5000
  c.checkpoint_every = 5000
  if arg == 'quick':
    c.model.update(num_layers=2, d_model=128, num_heads=4, vocab_size=4000)
    c.data.update(vocab_size=4000, max_examples=10_000)
    c.update(seq_len=128, batch_size=32, total_steps=200, warmup_steps=100, eval_every=200,
             eval_steps=20, checkpoint_every=200, log_every=50)
    c.decode.max_examples = 200  # BLEU of --mode=eval on the first 200 test sentences.
  return c
