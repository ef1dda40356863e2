"""Parameter count and training FLOPs per token for a model config.

FLOPs follow the accounting of nanoGPT and PaLM (appendix B): every weight used
in a matmul costs 6 FLOPs per token forward+backward (2 forward, 4 backward),
plus the attention scores and weighted sums, 12 * d_model * keys per layer,
with the keys' real length (the full row, as the masked matrix is computed).
Embedding lookups are free; a tied output projection still costs its matmul.
For seq2seq the count is per target token, with a source as long as the target.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer_jax import config as config_lib
from transformer_jax.models.transformer import build_model


def count_params(cfg) -> int:
  """Trainable parameters of the model, from shapes alone (nothing is allocated)."""
  model = build_model(cfg)
  tokens = jnp.ones((1, 2), jnp.int32)
  args = (tokens, tokens) if cfg.variant == 'seq2seq' else (tokens,)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args))
  return int(sum(x.size for x in jax.tree_util.tree_leaves(nn.unbox(shapes['params']))))


def _matmul_weights(cfg) -> dict:
  """Weights each token multiplies through, per part of the model."""
  d, ff = cfg.d_model, config_lib.d_ff(cfg)
  attention = 4 * d * d  # W^Q, W^K, W^V, W^O
  ffn = (3 if cfg.activation == 'swiglu' else 2) * d * ff
  parts = {}
  if cfg.variant in ('encoder', 'seq2seq'):
    parts['encoder'] = config_lib.encoder_layers(cfg) * (attention + ffn)
  if cfg.variant in ('decoder', 'seq2seq'):
    cross = attention if cfg.variant == 'seq2seq' else 0
    parts['decoder'] = config_lib.decoder_layers(cfg) * (attention + cross + ffn)
  if cfg.variant != 'encoder' or cfg.encoder_head == 'mlm':
    parts['output_projection'] = d * cfg.vocab_size
  return parts


def flops_per_token(cfg, seq_len: int) -> float:
  """Forward+backward FLOPs per (target) token at context length `seq_len`."""
  d = cfg.d_model
  weights = sum(_matmul_weights(cfg).values())
  attention_layers = 0
  if cfg.variant in ('encoder', 'seq2seq'):
    attention_layers += config_lib.encoder_layers(cfg)
  if cfg.variant in ('decoder', 'seq2seq'):
    cross = 2 if cfg.variant == 'seq2seq' else 1
    attention_layers += cross * config_lib.decoder_layers(cfg)
  return float(6 * weights + 12 * d * seq_len * attention_layers)


def describe(cfg, seq_len: int) -> dict:
  """A JSON-ready summary of the model: what `--mode=describe` prints."""
  return {
      'variant': cfg.variant,
      'params': count_params(cfg),
      'flops_per_token': flops_per_token(cfg, seq_len),
      'seq_len': seq_len,
      'num_encoder_layers': config_lib.encoder_layers(cfg) if cfg.variant != 'decoder' else 0,
      'num_decoder_layers': config_lib.decoder_layers(cfg) if cfg.variant != 'encoder' else 0,
      'd_model': cfg.d_model,
      'num_heads': cfg.num_heads,
      'head_dim': cfg.d_model // cfg.num_heads,
      'ffn_ratio': cfg.ffn_ratio,
      'd_ff': config_lib.d_ff(cfg),
      'vocab_size': cfg.vocab_size,
      'position': cfg.position,
      'norm': cfg.norm,
      'activation': cfg.activation,
  }
