"""The paper's big model on WMT 2014 English-German (Table 3, "big").

N=6, d_model=1024, h=16, d_ff=4096, P_drop=0.3, shared ~37k-token vocabulary
and shared embeddings; 300k steps.

  python -m transformer_jax.main --config=experiments/configs/wmt14_ende_big.py \
      --workdir=runs/wmt14_big
  python -m transformer_jax.main --config=experiments/configs/wmt14_ende_big.py --mode=describe
"""

from transformer_jax import config as config_lib


def get_config():
  c = config_lib.base_config()
  c.model.variant = 'seq2seq'
  c.model.num_layers = 6
  c.model.d_model = 1024
  c.model.num_heads = 16
  c.model.ffn_ratio = 4.0
  c.model.dropout_rate = 0.3
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
  c.total_steps = 300_000
  c.warmup_steps = 4000
  c.batch_size = 96  # ~25k source + ~25k target tokens per step at 256 packed tokens a row.
  c.eval_every = 5000
  c.checkpoint_every = 5000
  return c
