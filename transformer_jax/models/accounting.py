"""Parameter count and training FLOPs per token for a model config.

FLOPs follow the accounting of nanoGPT and PaLM (appendix B): every weight used
in a matmul costs 6 FLOPs per token forward+backward (2 forward, 4 backward),
plus the attention scores and weighted sums, counted as computed:
- full: 12 * d_model * keys per layer, the keys' real length (the full row, as
  the masked matrix is computed);
- local: the same with the keys of a query's block neighbours, 2c (causal) or
  3c, c = min(window, length), plus the global tokens' columns and rows;
- linear (FAVOR+): per head and token 2 m k for each of phi(q), phi(k), the
  state phi(k) v^T and phi(q) S, plus the c x c chunk products (2 c (m + k)),
  the sums doubled without a causal mask (a forward and a reversed pass).
Shared key/value heads shrink W^K and W^V. Encoder-decoder attention is full.
Embedding lookups are free; a tied output projection still costs its matmul,
and BERT's MLM head transform (`head_transform`) its d x d dense.
For seq2seq the count is per target token, with a source as long as the target.
An image model (ViT) adds the patch projection E per token, and its rows are its
image_length tokens (patches, plus [CLS]).
"""

import flax.linen as nn
import jax

from transformer_jax import config as config_lib
from transformer_jax.models.attention import LINEAR_CHUNK
from transformer_jax.models.transformer import build_model, init_inputs


def count_params(cfg) -> int:
  """Trainable parameters of the model, from shapes alone (nothing is allocated)."""
  model = build_model(cfg)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *init_inputs(cfg, 2)))
  return int(sum(x.size for x in jax.tree_util.tree_leaves(nn.unbox(shapes['params']))))


def _matmul_weights(cfg) -> dict:
  """Weights each token multiplies through, per part of the model."""
  cfg = config_lib.ModelConfig.of(cfg)
  d, ff = cfg.d_model, config_lib.d_ff(cfg)
  attention = 2 * d * d + 2 * d * cfg.kv_heads * cfg.head_dim  # W^Q, W^O; W^K, W^V
  ffn = (3 if cfg.activation == 'swiglu' else 2) * d * ff
  parts = {}
  if cfg.patch_size:  # E, per patch token (the [CLS] token has none: an upper bound).
    parts['patch_embedding'] = cfg.patch_size**2 * cfg.num_channels * d
  if cfg.variant in ('encoder', 'seq2seq'):
    parts['encoder'] = config_lib.encoder_layers(cfg) * (attention + ffn)
  if cfg.variant in ('decoder', 'seq2seq'):
    cross = attention if cfg.variant == 'seq2seq' else 0
    parts['decoder'] = config_lib.decoder_layers(cfg) * (attention + cross + ffn)
  if cfg.variant != 'encoder' or cfg.encoder_head == 'mlm':
    parts['output_projection'] = d * cfg.vocab_size + (d * d if cfg.head_transform else 0)
  else:  # pooler and classifier, per sequence, counted per token: an upper bound.
    parts['classifier'] = (d * d if cfg.pooler else 0) + d * cfg.num_classes
  return parts


def attention_flops_per_token(cfg, seq_len: int, causal: bool, kind: str) -> float:
  """Forward+backward FLOPs of one attention sublayer's scores and sums, per query."""
  cfg = config_lib.ModelConfig.of(cfg)
  d, h, k = cfg.d_model, cfg.num_heads, cfg.head_dim
  if kind == 'local':
    c = min(cfg.attention_window, seq_len)
    keys = (2 if causal else 3) * c
    if not causal and cfg.global_tokens:  # global key columns; global query rows per token.
      keys += 2 * min(cfg.global_tokens, seq_len)
    return 12.0 * d * keys
  if kind == 'linear':
    m, c = cfg.num_random_features, min(LINEAR_CHUNK, seq_len)
    sums = 2 * m * k + 2 * m * k + 2 * c * (m + k)  # state, its read, chunk products.
    passes = 1 if causal else 2
    return 3.0 * h * (2 * 2 * m * k + passes * sums)
  return 12.0 * d * seq_len


def flops_per_token(cfg, seq_len: int) -> float:
  """Forward+backward FLOPs per (target) token at context length `seq_len` (an
  image model's rows are its image_length tokens whatever `seq_len` says)."""
  seq_len = config_lib.ModelConfig.of(cfg).row_length(seq_len)
  weights = sum(_matmul_weights(cfg).values())
  attention = 0.0
  if cfg.variant in ('encoder', 'seq2seq'):
    attention += config_lib.encoder_layers(cfg) * attention_flops_per_token(
        cfg, seq_len, False, cfg.attention)
  if cfg.variant in ('decoder', 'seq2seq'):
    per_layer = attention_flops_per_token(cfg, seq_len, True, cfg.attention)
    if cfg.variant == 'seq2seq':
      per_layer += attention_flops_per_token(cfg, seq_len, False, 'full')
    attention += config_lib.decoder_layers(cfg) * per_layer
  return float(6 * weights + attention)


def describe(cfg, seq_len: int) -> dict:
  """A JSON-ready summary of the model: what `--mode=describe` prints."""
  frozen = config_lib.ModelConfig.of(cfg)
  return {
      'variant': cfg.variant,
      'params': count_params(cfg),
      'flops_per_token': flops_per_token(cfg, seq_len),
      'seq_len': frozen.row_length(seq_len),
      **({'patch_size': cfg.patch_size, 'image_size': cfg.image_size,
          'num_channels': cfg.num_channels, 'num_patches': frozen.num_patches,
          'pooling': cfg.pooling} if cfg.patch_size else {}),
      'num_encoder_layers': config_lib.encoder_layers(cfg) if cfg.variant != 'decoder' else 0,
      'num_decoder_layers': config_lib.decoder_layers(cfg) if cfg.variant != 'encoder' else 0,
      'd_model': cfg.d_model,
      'num_heads': cfg.num_heads,
      'num_kv_heads': config_lib.ModelConfig.of(cfg).kv_heads,
      'attention': cfg.attention,
      **({'attention_window': cfg.attention_window, 'global_tokens': cfg.global_tokens}
         if cfg.attention == 'local' else {}),
      **({'num_random_features': cfg.num_random_features} if cfg.attention == 'linear' else {}),
      'head_dim': cfg.d_model // cfg.num_heads,
      'ffn_ratio': cfg.ffn_ratio,
      'd_ff': config_lib.d_ff(cfg),
      'vocab_size': cfg.vocab_size,
      'position': cfg.position,
      'norm': cfg.norm,
      'activation': cfg.activation,
  }
