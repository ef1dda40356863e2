"""The Transformer's components, one concept each, named as the paper names them.

Shapes: b = batch, l = query length, s = key/value length, h = heads,
d = d_model, k = head dim (d_k = d_v = d / h).

Every module takes the model config `cfg` (`config.ModelConfig`, the frozen
`config.model`), so an ablation is a config override, never a code change.
"""

import functools
import math
import zlib
from typing import Callable, Optional

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from transformer_jax import config as config_lib
# The attention kernels live in attention.py; named here too, as the paper's equation 1.
from transformer_jax.models.attention import (NEG_INF, attention,
                                              bidirectional_linear_attention,
                                              causal_linear_attention, favor_logits,
                                              local_mask, orthogonal_random_features, repeat_kv,
                                              scaled_dot_product_attention,
                                              sliding_window_attention, soft_cap)

GPT2_STDDEV = 0.02  # GPT-2's initialiser range (its released code; nanoGPT's model.py).


def compute_dtype(cfg):
  return jnp.bfloat16 if cfg.dtype == 'bfloat16' else jnp.float32


def matrix_init(cfg, residuals: int = 0) -> dict:
  """The `kernel_init` of a weight matrix under `cfg.init`, as keyword arguments.

  paper: {} (Flax's LeCun-normal default). gpt2: N(0, 0.02^2), and for a projection
  that writes into the residual stream N(0, 0.02^2 / N), N = `residuals`, the residual
  sublayers of its stack (Radford et al. 2019, section 2.3: "scale the weights of
  residual layers at initialization by a factor of 1/sqrt(N)"; 2 per layer in a GPT).
  """
  if cfg.init != 'gpt2':
    return {}
  stddev = GPT2_STDDEV / math.sqrt(residuals) if residuals else GPT2_STDDEV
  return {'kernel_init': nn.initializers.normal(stddev)}


class RMSNorm(nn.Module):
  """RMSNorm(x) = x / sqrt(mean(x^2) + epsilon) * g (Zhang & Sennrich 2019, "Root Mean
  Square Layer Normalization", eq. 4): LayerNorm without re-centring and without a bias.

  x [..., d] -> [..., d] in `dtype`; the statistics in float32; g [d] starts at 1.
  """
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return (x * scale).astype(self.dtype)


def norm_layer(cfg, name: str) -> nn.Module:
  """The model's normalisation, `cfg.norm_type`, over the last axis: LayerNorm (Ba et
  al. 2016; the paper's) or `RMSNorm`, each with epsilon `cfg.layer_norm_epsilon`.

  LayerNorm(x) = (x - mean(x)) / sqrt(var(x) + epsilon) * g + b, g [d] starting at 1
  and b [d] at 0; `cfg.norm_bias=False` leaves b out (nanoGPT's GPT with bias=False).
  """
  if cfg.norm_type == 'rmsnorm':
    return RMSNorm(cfg.layer_norm_epsilon, compute_dtype(cfg), name=name)
  return nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=compute_dtype(cfg),
                      use_bias=cfg.norm_bias, name=name)


class Dropout(nn.Module):
  """Inverted dropout, as nn.Dropout, with its mask drawn by XLA's RngBitGenerator.

  The mask comes from the ThreeFry generator keyed by the module's 'dropout'
  rng, so it is as reproducible as nn.Dropout's, and 4x cheaper on CPU than
  `jax.random.bernoulli` (24 vs 99 ms for a [12, 256, 1536] mask on one core;
  12% of a 6x6x384 training step).
  """
  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if self.rate == 0.0 or deterministic:
      return x
    seed = jax.random.bits(self.make_rng('dropout'), (4,), jnp.uint32)
    _, bits = jax.lax.rng_bit_generator(seed, x.shape, jnp.uint32,
                                        algorithm=jax.lax.RandomAlgorithm.RNG_THREE_FRY)
    keep = bits >= jnp.uint32(min(round(self.rate * 2**32), 2**32 - 1))
    return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros_like(x))


class TokenEmbedding(nn.Module):
  """Token embedding multiplied by sqrt(d_model) (paper section 3.4), or not
  (`scale=False`, as GPT-2 and BERT).

  `attend` reuses the same matrix as the pre-softmax linear transformation when
  embeddings are shared. The table starts N(0, stddev^2), by default N(0, 1 / d_model).
  """
  vocab_size: int
  d_model: int
  dtype: jnp.dtype = jnp.float32
  scale: bool = True
  stddev: Optional[float] = None

  def setup(self):
    stddev = self.d_model**-0.5 if self.stddev is None else self.stddev
    self.embedding = self.param('embedding', nn.initializers.normal(stddev),
                                (self.vocab_size, self.d_model), jnp.float32)

  def __call__(self, ids):  # [b, l] -> [b, l, d]
    x = jnp.take(self.embedding, ids, axis=0).astype(self.dtype)
    return x * math.sqrt(self.d_model) if self.scale else x

  def attend(self, x):  # [b, l, d] -> [b, l, vocab]
    return jnp.einsum('bld,vd->blv', x, self.embedding.astype(self.dtype))


class PatchEmbedding(nn.Module):
  """x_p E: an image cut into N = HW / P^2 non-overlapping P x P patches, each flattened
  (x_p in R^{N x (P^2 C)}) and linearly projected to d_model by E in R^{(P^2 C) x D}
  (Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words", section 3.1, eq. 1).

  images [b, H, W, C] -> [b, N, d], the patches in raster order (row by row, each row left
  to right). Computed as the ViT reference code does, as a convolution with a P x P kernel
  and stride P: `kernel` [P, P, C, d] reshaped to [P^2 C, d] is E, for patches flattened in
  (row, column, channel) order; `bias` [d] is added to every patch. E starts LeCun-normal,
  or N(0, stddev^2) with `stddev`.
  """
  patch_size: int
  d_model: int
  dtype: jnp.dtype = jnp.float32
  use_bias: bool = True
  stddev: Optional[float] = None

  @nn.compact
  def __call__(self, images):
    p, channels = self.patch_size, images.shape[-1]
    init = (nn.initializers.lecun_normal() if self.stddev is None else
            nn.initializers.normal(self.stddev))
    kernel = self.param('kernel', init,
                        (p, p, channels, self.d_model), jnp.float32)
    x = jax.lax.conv_general_dilated(images.astype(self.dtype), kernel.astype(self.dtype),
                                     window_strides=(p, p), padding='VALID',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))  # [b, H/P, W/P, d]
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros, (self.d_model,), jnp.float32)
      x = x + bias.astype(x.dtype)
    b, rows, cols, d = x.shape
    return x.reshape(b, rows * cols, d)


def sinusoidal_table(max_len: int, d_model: int) -> np.ndarray:
  """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))."""
  pos = np.arange(max_len, dtype=np.float64)[:, None]
  div = np.power(10000.0, np.arange(0, d_model, 2, dtype=np.float64) / d_model)
  table = np.zeros((max_len, d_model), dtype=np.float32)
  table[:, 0::2] = np.sin(pos / div)
  table[:, 1::2] = np.cos(pos / div)
  return table


def sinusoidal_table_2d(grid: int, d_model: int) -> np.ndarray:
  """2-D sinusoids for a grid x grid of patches in raster order [grid^2, d]: the first d/2
  dimensions are the paper's sinusoids (`sinusoidal_table`) of the patch's row, the last d/2
  those of its column; fixed, as MAE's (He et al. 2022) and big_vision's posemb_sincos_2d."""
  half = sinusoidal_table(grid, d_model // 2)  # [grid, d/2]
  rows, columns = np.divmod(np.arange(grid * grid), grid)
  return np.concatenate([half[rows], half[columns]], axis=1)


class PositionalEncoding(nn.Module):
  """Adds position information to embeddings: the paper's sinusoids, or learned.

  `positions` [b, l] gives each token's index in its own example, so packed
  examples each start at 0 and a cached decoder step knows where it is.
  Rotary positions are applied inside attention instead (see `apply_rotary`).
  The table has `cfg.num_positions` rows: max_len for text; for image patches
  one per token, the [CLS] vector's first (ViT's E_pos in R^{(N+1) x D},
  Dosovitskiy et al. 2020, eq. 1), where 'sinusoidal_2d' gives [CLS] a zero row.
  The paper's sinusoids are a formula, not trained: their table grows to a longer
  sequence l (an eval at a longer context than training), its first rows unchanged.
  """
  cfg: config_lib.ModelConfig

  @nn.compact
  def __call__(self, x, positions):  # x [b, l, d], positions [b, l]
    cfg = self.cfg
    if cfg.position == 'sinusoidal':
      table = jnp.asarray(sinusoidal_table(max(cfg.num_positions, x.shape[1]), cfg.d_model))
    elif cfg.position == 'sinusoidal_2d':
      table = sinusoidal_table_2d(cfg.image_size // cfg.patch_size, cfg.d_model)
      table = jnp.asarray(np.pad(table, ((cfg.image_length - cfg.num_patches, 0), (0, 0))))
    elif cfg.position == 'learned':
      table = self.param('table', nn.initializers.normal(0.02), (cfg.num_positions, cfg.d_model))
    else:
      return x
    return x + jnp.take(table, positions, axis=0).astype(x.dtype)


def apply_rotary(x, positions, base: float = 10000.0):
  """Rotary position embedding (RoFormer) on [b, l, h, k] at positions [b, l]."""
  half = x.shape[-1] // 2
  freqs = 1.0 / (base**(jnp.arange(half, dtype=jnp.float32) / half))
  angles = positions[..., None].astype(jnp.float32) * freqs  # [b, l, k/2]
  sin = jnp.sin(angles)[:, :, None, :]
  cos = jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


_LOGGED = set()


def _log_once(message: str):
  if message not in _LOGGED:
    _LOGGED.add(message)
    logging.warning(message)


def _cudnn_unsupported(cfg, query, decode: bool) -> Optional[str]:
  """Why cuDNN flash attention cannot run here (None when it can)."""
  if jax.default_backend() != 'gpu':
    return f'no GPU (backend {jax.default_backend()})'
  if query.dtype not in (jnp.bfloat16, jnp.float16):
    return f'dtype {query.dtype} (cuDNN needs config.model.dtype=bfloat16)'
  head_dim = query.shape[-1]
  if head_dim > 128 or head_dim % 8:
    return f'head dim {head_dim} (cuDNN needs a multiple of 8, at most 128)'
  if decode:
    return 'cached decoding'
  if cfg.attn_logit_softcap:
    return 'config.model.attn_logit_softcap (cuDNN does not cap the scores)'
  return None


class MultiHeadAttention(nn.Module):
  """MultiHead(Q, K, V) = Concat(head_1..head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

  Self-attention when `inputs_kv` is `inputs_q`; encoder-decoder attention when
  `inputs_kv` is the encoder output (Q from the decoder, K/V from the encoder).
  `cfg.num_kv_heads` key/value heads (fewer than `cfg.num_heads`: grouped-query,
  Ainslie et al. 2023; one: multi-query, Shazeer 2019) are each shared by
  num_heads / num_kv_heads query heads, shrinking W^K, W^V and the KV cache.
  `kind` is the attention (`config.model.attention` for self-attention, 'full'
  for encoder-decoder attention):
  - 'full': softmax over every key the boolean `mask` [b, 1, l, s] allows;
  - 'local': the sliding window of `cfg.attention_window` keys around each
    query (`attention.sliding_window_attention`), within `segment_ids` [b, l];
  - 'linear': FAVOR+ (`attention.favor_logits`, `*_linear_attention`).
  With `decode=True` (self-attention only) the 'cache' collection keeps what
  the next tokens need: every key and value for 'full' (the new tokens are
  written at the cache index, so generating token t costs O(t)), the last
  `attention_window` of them for 'local' (a ring buffer: O(window) memory), the
  running sums phi(K)^T V and phi(K)^T 1 and their scale for 'linear' (memory
  independent of the length). Full attention's weights are sown into 'intermediates' for
  visualisation (`mutable=['intermediates']`); otherwise `layers.attention` runs
  without keeping them, or cuDNN's flash attention with
  `cfg.attention_impl='cudnn'` on a GPU (falling back to XLA, with a logged
  reason, where cuDNN cannot run). `causal` marks a decoder's self-attention.

  Options: `cfg.qk_norm` normalises each head's queries and keys over the head dim
  (`norm_layer`, scales shared by the heads) before positions are rotated in and the
  scores formed (QK normalisation: Dehghani et al. 2023, "Scaling Vision Transformers to
  22 Billion Parameters", section 2); keys are cached normalised. `cfg.attn_logit_softcap`
  caps the scores (`attention.soft_cap`), through autodiff's backward pass instead of the
  hand-written one. `residuals` (the residual sublayers of the stack) scales W^O's
  initialisation under `cfg.init='gpt2'` (`matrix_init`).
  """
  cfg: config_lib.ModelConfig
  causal: bool = False
  kind: str = 'full'
  residuals: int = 0

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, mask=None, *, segment_ids=None, positions_q=None,
               positions_kv=None, deterministic: bool = True, decode: bool = False):
    cfg = self.cfg
    dtype = compute_dtype(cfg)
    head_dim = cfg.d_model // cfg.num_heads
    dense = functools.partial(nn.DenseGeneral, use_bias=cfg.use_bias, dtype=dtype,
                              **matrix_init(cfg))
    query = dense(features=(cfg.num_heads, head_dim), name='query')(inputs_q)  # [b, l, h, k]
    key = dense(features=(cfg.kv_heads, head_dim), name='key')(inputs_kv)  # [b, s, g, k]
    value = dense(features=(cfg.kv_heads, head_dim), name='value')(inputs_kv)
    if cfg.qk_norm:
      query = norm_layer(cfg, 'query_norm')(query)
      key = norm_layer(cfg, 'key_norm')(key)
    if cfg.position == 'rotary' and positions_kv is not None:
      # Self-attention only: encoder-decoder attention has no shared positions.
      query = apply_rotary(query, positions_q)
      key = apply_rotary(key, positions_kv)

    dropout = None
    if cfg.attention_dropout_rate > 0 and not deterministic:
      dropout = functools.partial(Dropout(cfg.attention_dropout_rate), deterministic=False)
    if segment_ids is None:
      segment_ids = jnp.ones(query.shape[:2], jnp.int32)
    if self.kind == 'local':
      out = self._local(query, key, value, segment_ids, dropout, decode)
    elif self.kind == 'linear':
      out = self._linear(query, key, value, segment_ids, decode)
    else:
      if decode:
        key, value, mask = self._update_cache(key, value, mask)
      key, value = repeat_kv(key, cfg.num_heads), repeat_kv(value, cfg.num_heads)
      if dropout is not None or self.is_mutable_collection('intermediates'):
        out, weights = scaled_dot_product_attention(
            query, key, value, self._causal(mask, query, key), dropout, cfg.attn_logit_softcap)
        self.sow('intermediates', 'attention_weights', weights)
      else:
        out = self._attend(query, key, value, mask, decode)
    return nn.DenseGeneral(features=cfg.d_model, axis=(-2, -1), use_bias=cfg.use_bias,
                           dtype=dtype, name='out',
                           **matrix_init(cfg, self.residuals))(out)  # [b, l, d]

  def _local(self, query, key, value, segment_ids, dropout, decode: bool):
    """Sliding-window attention [b, l, h, k]: blocked in training, on a ring cache in decoding."""
    cfg = self.cfg
    if decode:
      return self._window_cache_attention(query, key, value)
    h = cfg.num_heads
    return sliding_window_attention(query, repeat_kv(key, h), repeat_kv(value, h), segment_ids,
                                    cfg.attention_window, self.causal,
                                    0 if self.causal else cfg.global_tokens, dropout,
                                    cfg.attn_logit_softcap)

  def _window_cache_attention(self, query, key, value):
    """The new tokens' attention over the last `window` cached keys and themselves.

    The cache holds keys and values [b, g, window, k] heads-major, position p in
    slot p mod window; the first (initialising) call only allocates it.
    """
    cfg, window = self.cfg, self.cfg.attention_window
    initialised = self.has_variable('cache', 'cached_key')
    b, new, g, k = key.shape
    shape = (b, g, window, k)
    cached_key = self.variable('cache', 'cached_key', jnp.zeros, shape, key.dtype)
    cached_value = self.variable('cache', 'cached_value', jnp.zeros, shape, value.dtype)
    index = self.variable('cache', 'index', lambda: jnp.array(0, jnp.int32))
    start = index.value
    slots = jnp.arange(window)
    slot_positions = start - 1 - jnp.mod(start - 1 - slots, window)  # < 0: empty.
    new_positions = start + jnp.arange(new)
    keys = jnp.concatenate([cached_key.value.transpose(0, 2, 1, 3), key], axis=1)  # [b, w+l, g, k]
    values = jnp.concatenate([cached_value.value.transpose(0, 2, 1, 3), value], axis=1)
    positions = jnp.concatenate([slot_positions, new_positions])
    mask = local_mask(new_positions, positions, window, causal=True) & (positions >= 0)
    out = self._softmax(query, repeat_kv(keys, cfg.num_heads), repeat_kv(values, cfg.num_heads),
                        mask[None, None])
    if initialised:
      kept = min(new, window)  # static: the last `window` new tokens stay.
      write = jnp.mod(new_positions[new - kept:], window)
      cached_key.value = cached_key.value.at[:, :, write].set(
          key[:, new - kept:].transpose(0, 2, 1, 3))
      cached_value.value = cached_value.value.at[:, :, write].set(
          value[:, new - kept:].transpose(0, 2, 1, 3))
      index.value = start + new
    return out

  def _linear(self, query, key, value, segment_ids, decode: bool):
    """FAVOR+ attention [b, l, h, k]; causal by prefix sums, cached as running sums."""
    cfg = self.cfg
    h = cfg.num_heads
    # One fixed feature draw per layer, seeded by the layer's place in the model.
    seed = zlib.crc32('/'.join(self.scope.path).encode())
    projection = orthogonal_random_features(cfg.num_random_features, query.shape[-1], seed)
    query_logits = favor_logits(query, projection)  # [b, l, h, m]
    key_logits = favor_logits(repeat_kv(key, h), projection)
    value = repeat_kv(value, h)
    if not self.causal:
      out = bidirectional_linear_attention(query_logits, key_logits, value, segment_ids)
    elif decode:
      initialised = self.has_variable('cache', 'sums')
      b, m, k = query.shape[0], projection.shape[0], query.shape[-1]
      sums = self.variable('cache', 'sums', jnp.zeros, (b, h, m, k), jnp.float32)
      normaliser = self.variable('cache', 'normaliser', jnp.zeros, (b, h, m), jnp.float32)
      scale = self.variable('cache', 'scale', jnp.zeros, (b, h), jnp.float32)
      out, (s, z, r) = causal_linear_attention(query_logits, key_logits, value, segment_ids,
                                               state=(sums.value, normaliser.value, scale.value))
      if initialised:
        sums.value, normaliser.value, scale.value = s, z, r
    else:
      out, _ = causal_linear_attention(query_logits, key_logits, value, segment_ids)
    return out.astype(query.dtype)

  def _attend(self, query, key, value, mask, decode: bool):
    """Attention output [b, l, h, k] by the configured implementation."""
    if self.cfg.attention_impl == 'cudnn':
      reason = _cudnn_unsupported(self.cfg, query, decode)
      if reason is None:
        try:
          return jax.nn.dot_product_attention(query, key, value, mask=mask,
                                              is_causal=self.causal, implementation='cudnn')
        except (ValueError, NotImplementedError, RuntimeError) as e:
          reason = f'{type(e).__name__}: {e}'
      _log_once(f'config.model.attention_impl=cudnn: {reason}; using XLA attention.')
    return self._softmax(query, key, value, self._causal(mask, query, key))

  def _causal(self, mask, query, key):
    """`mask`, or where a causal layer got none (the Decoder's unpacked rows under
    cuDNN), the causal mask [1, 1, l, s] that cuDNN's `is_causal` applies."""
    if mask is not None or not self.causal:
      return mask
    return causal_mask(query.shape[1], key.shape[1])[None, None]

  def _softmax(self, query, key, value, mask):
    """Softmax attention [b, l, h, k] without the weights: the hand-written backward
    pass (`attention`), or with capped scores the reference through autodiff."""
    if self.cfg.attn_logit_softcap:
      return scaled_dot_product_attention(query, key, value, mask,
                                          softcap=self.cfg.attn_logit_softcap)[0]
    return attention(query, key, value, mask)

  def _update_cache(self, key, value, mask):
    """Writes the new keys/values at the cache index; returns the full cache and its mask.

    The cache is kept heads-major, [b, h, s, k]: the layout the attention
    matmuls read, so a decoding step does not transpose the whole cache (at
    batch 32 that transpose made a step 2x slower on CPU). The first
    (initialising) call only allocates a cache as long as its input.
    """
    initialised = self.has_variable('cache', 'cached_key')
    key, value = key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3)  # [b, h, l, k]
    cached_key = self.variable('cache', 'cached_key', jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable('cache', 'cached_value', jnp.zeros, value.shape, value.dtype)
    index = self.variable('cache', 'index', lambda: jnp.array(0, jnp.int32))
    if initialised:
      new, start = key.shape[2], index.value
      cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, (0, 0, start, 0))
      cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value,
                                                        (0, 0, start, 0))
      index.value = start + new
      key, value = cached_key.value, cached_value.value
      # New token i (at absolute position start + i) sees cache slots <= start + i.
      slots = jnp.arange(key.shape[2])
      causal = (slots[None, :] <= (start + jnp.arange(new))[:, None])[None, None]  # [1, 1, l, s]
      mask = causal if mask is None else jnp.logical_and(causal, mask)
    return key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3), mask  # [b, s, h, k]


def activation_fn(name: str) -> Callable:
  """The elementwise non-linearity `config.model.activation` names: relu; gelu,
  exact (x Phi(x), with erf: BERT); gelu_tanh, the tanh approximation (GPT-2,
  Radford et al. 2019, as Hendrycks & Gimpel 2016); swiglu's Swish (silu) alone."""
  if name == 'relu':
    return nn.relu
  if name == 'gelu':
    return functools.partial(nn.gelu, approximate=False)
  if name == 'gelu_tanh':
    return functools.partial(nn.gelu, approximate=True)
  return nn.silu


def per_token(layer: Callable, x):
  """`layer` (a projection of each token alone) on x [b, l, ...], its batch and
  length axes merged into one for the call: the same result, but XLA:CPU then
  computes the kernel's gradient as one matrix product instead of first
  writing a transposed copy of the output's gradient (that copy was 30% of a
  6 x 6 x 384 training step; benchmarks/README.md, "Where the time goes")."""
  y = layer(x.reshape((-1,) + x.shape[2:]))
  return y.reshape(x.shape[:2] + y.shape[1:])


class FeedForward(nn.Module):
  """FFN(x) = max(0, x W1 + b1) W2 + b2, with d_ff = ffn_ratio * d_model (paper eq. 2).

  GELU (exact or tanh-approximated) swaps the activation; SwiGLU gates it:
  (Swish(x W) * x V) W2. `residuals` scales W2's initialisation under
  `cfg.init='gpt2'` (`matrix_init`).
  """
  cfg: config_lib.ModelConfig
  residuals: int = 0

  @nn.compact
  def __call__(self, x, deterministic: bool = True):  # [b, l, d] -> [b, l, d]
    cfg = self.cfg
    dtype = compute_dtype(cfg)
    d_ff = cfg.d_ff
    dense = functools.partial(nn.Dense, use_bias=cfg.use_bias, dtype=dtype)
    h = per_token(dense(d_ff, name='expand', **matrix_init(cfg)), x)  # [b, l, d_ff]
    if cfg.activation == 'swiglu':
      h = nn.silu(h) * per_token(dense(d_ff, name='gate', **matrix_init(cfg)), x)
    else:
      h = activation_fn(cfg.activation)(h)
    h = Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    return per_token(dense(cfg.d_model, name='compress', **matrix_init(cfg, self.residuals)), h)


class AddNorm(nn.Module):
  """Residual connection and layer normalisation around one sublayer.

  post (paper): LayerNorm(x + Dropout(Sublayer(x)))
  pre:          x + Dropout(Sublayer(LayerNorm(x)))
  (RMSNorm in LayerNorm's place with `cfg.norm_type='rmsnorm'`: `norm_layer`.)
  """
  cfg: config_lib.ModelConfig

  @nn.compact
  def __call__(self, x, sublayer: Callable, deterministic: bool = True):
    cfg = self.cfg
    norm = norm_layer(cfg, 'norm')
    drop = functools.partial(Dropout(cfg.dropout_rate), deterministic=deterministic)
    if cfg.norm == 'pre':
      return x + drop(sublayer(norm(x)))
    return norm(x + drop(sublayer(x)))


def causal_mask(l: int, s: int):
  """Boolean [l, s]: query t sees keys 0..t (the decoder's masking, paper section 3.2.3)."""
  return jnp.arange(l)[:, None] >= jnp.arange(s)[None, :]


def attention_mask(segment_q, segment_kv, causal: bool):
  """Boolean [b, 1, l, s] mask: same segment, not padding (segment 0), causal if asked.

  Segment ids number the examples packed into a row (1, 2, ...), 0 is padding;
  an unpacked row is segment 1 where tokens are real.
  """
  mask = (segment_q[:, :, None] == segment_kv[:, None, :]) & (segment_kv[:, None, :] > 0)
  if causal:
    mask = mask & causal_mask(segment_q.shape[1], segment_kv.shape[1])
  return mask[:, None]
