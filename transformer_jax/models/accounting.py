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
The normalisation and logit options (`norm_type`, `norm_bias`, `qk_norm`, the soft-caps,
and the z-loss) multiply no weight matrix, so, like the LayerNorms, softmaxes and
activations here and in PaLM's count, they add no FLOPs: a capped run's MFU is comparable
with an uncapped one's. Their parameters (RMSNorm has no bias, nor a LayerNorm with
norm_bias=False; QK-norm's scales) are counted.
"""

from typing import Any, Dict, List, Sequence

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
  d, ff = cfg.d_model, cfg.d_ff
  attention = 2 * d * d + 2 * d * cfg.kv_heads * cfg.head_dim  # W^Q, W^O; W^K, W^V
  ffn = (3 if cfg.activation == 'swiglu' else 2) * d * ff
  parts = {}
  if cfg.patch_size:  # E, per patch token (the [CLS] token has none: an upper bound).
    parts['patch_embedding'] = cfg.patch_size**2 * cfg.num_channels * d
  if cfg.has_encoder:
    parts['encoder'] = cfg.encoder_layers * (attention + ffn)
  if cfg.has_decoder:
    cross = attention if cfg.has_encoder else 0
    parts['decoder'] = cfg.decoder_layers * (attention + cross + ffn)
  if not cfg.classifies:
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
  cfg = config_lib.ModelConfig.of(cfg)
  seq_len = cfg.row_length(seq_len)
  weights = sum(_matmul_weights(cfg).values())
  attention = 0.0
  if cfg.has_encoder:
    attention += cfg.encoder_layers * attention_flops_per_token(
        cfg, seq_len, False, cfg.attention)
  if cfg.has_decoder:
    per_layer = attention_flops_per_token(cfg, seq_len, True, cfg.attention)
    if cfg.has_encoder:
      per_layer += attention_flops_per_token(cfg, seq_len, False, 'full')
    attention += cfg.decoder_layers * per_layer
  return float(6 * weights + attention)


def describe(cfg, seq_len: int) -> dict:
  """A JSON-ready summary of the model: what `--mode=describe` prints."""
  cfg = config_lib.ModelConfig.of(cfg)
  return {
      'variant': cfg.variant,
      'params': count_params(cfg),
      'flops_per_token': flops_per_token(cfg, seq_len),
      'seq_len': cfg.row_length(seq_len),
      **({'patch_size': cfg.patch_size, 'image_size': cfg.image_size,
          'num_channels': cfg.num_channels, 'num_patches': cfg.num_patches,
          'pooling': cfg.pooling} if cfg.patch_size else {}),
      'num_encoder_layers': cfg.encoder_layers if cfg.has_encoder else 0,
      'num_decoder_layers': cfg.decoder_layers if cfg.has_decoder else 0,
      'd_model': cfg.d_model,
      'num_heads': cfg.num_heads,
      'num_kv_heads': cfg.kv_heads,
      'attention': cfg.attention,
      **({'attention_window': cfg.attention_window, 'global_tokens': cfg.global_tokens}
         if cfg.attention == 'local' else {}),
      **({'num_random_features': cfg.num_random_features} if cfg.attention == 'linear' else {}),
      'head_dim': cfg.head_dim,
      'ffn_ratio': cfg.ffn_ratio,
      'd_ff': cfg.d_ff,
      'vocab_size': cfg.vocab_size,
      'position': cfg.position,
      'norm': cfg.norm,
      'norm_type': cfg.norm_type,
      'norm_bias': cfg.norm_bias,
      'qk_norm': cfg.qk_norm,
      'attn_logit_softcap': cfg.attn_logit_softcap,
      'final_logit_softcap': cfg.final_logit_softcap,
      'activation': cfg.activation,
      'init': cfg.init,
  }


def fixed_params_grid(base, ffn_ratios: Sequence[float], scale: str = 'num_layers',
                      seeds: Sequence[int] = (0,)) -> List[Dict[str, Any]]:
  """Runs that vary ffn_ratio while holding the parameter count about fixed: a
  sweep's grid (sweep.py), as a list of override dicts, one per ratio and seed.

  For each ratio, `scale` ('num_layers' or 'd_model') is set to the value whose
  parameter count is closest to the base config's, so d_ff is traded against
  depth or width. Parameters grow with either, so the value is found by bisection.
  """
  target = count_params(base.model)
  runs = []
  for ratio in ffn_ratios:
    def params_at(value, ratio=ratio):
      m = base.model.copy_and_resolve_references()
      m.ffn_ratio, m[scale] = ratio, value
      return count_params(m)

    if scale == 'num_layers':
      candidates = list(range(1, 4 * base.model.num_layers + 1))
    else:
      step = base.model.num_heads
      candidates = [d for d in range(step, 4 * base.model.d_model + 1, step)
                    if abs(ratio * d - round(ratio * d)) < 1e-9]
    lo, hi = 0, len(candidates) - 1
    while lo < hi:  # first candidate with at least the target's parameters.
      mid = (lo + hi) // 2
      if params_at(candidates[mid]) < target:
        lo = mid + 1
      else:
        hi = mid
    nearby = candidates[max(lo - 1, 0):lo + 1]
    best = min(nearby, key=lambda v: abs(params_at(v) - target))
    for seed in seeds:
      runs.append({'model.ffn_ratio': ratio, f'model.{scale}': best, 'seed': seed})
  return runs
