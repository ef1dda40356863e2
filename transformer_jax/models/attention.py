"""Efficient self-attention kinds: sliding-window (local), FAVOR+ (linear), shared K/V heads.

Shapes: b = batch, l = query length, s = key/value length, h = query heads,
g = key/value heads (h / g query heads share each), k = head dim, m = random
features, w = window, n = blocks or chunks, c = block or chunk length.

Every function takes the projected (and, for rotary positions, rotated)
queries, keys and values; `layers.MultiHeadAttention` chooses one by
`config.model.attention`. Segment ids [b, l] number the examples packed into a
row (0 = padding) and are contiguous runs, as packing makes them; a token
attends only inside its own segment.

- Full attention (the paper's eq. 1): `scaled_dot_product_attention` keeps the
  weights; `attention` is the same with a hand-written backward pass.
- Local attention (Longformer, Beltagy et al. 2020, section 3.1): query t sees
  the keys t - w .. t (and .. t + w without a causal mask), computed in blocks
  of w queries against their own and neighbouring blocks, so time and memory
  are O(l w), not O(l^2). Optional global tokens (section 3.1, "global
  attention"): the first tokens of a row attend to all, and all attend to them.
- Linear attention (Performer, Choromanski et al. 2021, sections 2-3): FAVOR+
  replaces softmax(q k^T) by phi(q) phi(k)^T with positive orthogonal random
  features phi, so attention is phi(Q) (phi(K)^T V) in O(l m k); the causal form
  runs prefix sums over chunks (section 2.6, "unidirectional").
- Grouped-query heads (Ainslie et al. 2023; multi-query: Shazeer 2019): g < h
  key/value heads, each read by h / g query heads (`repeat_kv`).
"""

import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -1e9  # large finite negative: fully-masked rows stay finite.
LINEAR_CHUNK = 64  # c: queries per chunk of the causal prefix sums (a speed knob, not maths).


# ----------------------------------------------------------------------------
# Full (softmax) attention: the reference, and the kernel training runs.


def soft_cap(logits, cap: float):
  """cap * tanh(logits / cap): logits bounded to (-cap, cap), near-identity well inside
  them (Gemma 2, Gemma Team 2024, section 2: 50 on attention scores, 30 on the final
  logits; MaxText's attn_logits_soft_cap, final_logits_soft_cap). cap 0 = off."""
  if not cap:
    return logits
  cap = jnp.asarray(cap, logits.dtype)
  return cap * jnp.tanh(logits / cap)


def scaled_dot_product_attention(query, key, value, mask=None, dropout: Optional[Callable] = None,
                                 softcap: float = 0.0):
  """softmax(Q K^T / sqrt(d_k)) V (paper eq. 1), the scores soft-capped first if
  `softcap` (`soft_cap`).

  query [b, l, h, k], key/value [b, s, h, k], mask broadcastable to [b, h, l, s]
  (True = may attend). Returns (output [b, l, h, k], weights [b, h, l, s]).
  """
  logits = jnp.einsum('blhk,bshk->bhls', query, key) / jnp.sqrt(query.shape[-1]).astype(query.dtype)
  logits = soft_cap(logits, softcap)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.asarray(NEG_INF, logits.dtype))
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(query.dtype)
  if dropout is not None:
    weights = dropout(weights)
  return jnp.einsum('bhls,bshk->blhk', weights, value), weights


@jax.custom_vjp
def attention(query, key, value, mask=None):
  """softmax(Q K^T / sqrt(d_k)) V without the weights, for training.

  Equal to `scaled_dot_product_attention(...)[0]`, with a hand-written
  backward pass that makes fewer passes over the [b, h, l, s] scores than
  autodiff's: the softmax Jacobian uses rowsum(dO * O) (one value per query)
  instead of rowsum(P * dP), and masked scores need no separate select.
  """
  return _attention_fwd(query, key, value, mask)[0]


def _attention_fwd(query, key, value, mask):
  scale = jnp.asarray(1.0 / math.sqrt(query.shape[-1]), query.dtype)
  logits = jnp.einsum('blhk,bshk->bhls', query * scale, key)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.asarray(NEG_INF, logits.dtype))
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(query.dtype)
  out = jnp.einsum('bhls,bshk->blhk', weights, value)
  return out, (query, key, value, mask, weights, out)


def _attention_bwd(residuals, d_out):
  query, key, value, mask, weights, out = residuals
  scale = jnp.asarray(1.0 / math.sqrt(query.shape[-1]), query.dtype)
  d_value = jnp.einsum('bhls,blhk->bshk', weights, d_out)
  d_weights = jnp.einsum('blhk,bshk->bhls', d_out, value).astype(jnp.float32)
  # rowsum(P * dP) = rowsum(dO * O): the softmax backward without a [b, h, l, s] reduction.
  delta = jnp.einsum('blhk,blhk->bhl', d_out.astype(jnp.float32), out.astype(jnp.float32))
  d_logits = weights.astype(jnp.float32) * (d_weights - delta[..., None])
  if mask is not None:  # rows with every key masked get no gradient, as autodiff's select.
    d_logits = jnp.where(mask, d_logits, 0.0)
  d_logits = d_logits.astype(query.dtype)
  d_query = jnp.einsum('bhls,bshk->blhk', d_logits, key) * scale
  d_key = jnp.einsum('bhls,blhk->bshk', d_logits, query * scale)
  return d_query, d_key, d_value, None


attention.defvjp(_attention_fwd, _attention_bwd)


def repeat_kv(x, num_heads: int):
  """Key or value heads [b, s, g, k] -> [b, s, h, k], each read by h / g query heads."""
  groups = num_heads // x.shape[2]
  return x if groups == 1 else jnp.repeat(x, groups, axis=2)


# ----------------------------------------------------------------------------
# Local (sliding-window) attention.


def local_mask(positions_q, positions_kv, window: int, causal: bool, global_tokens: int = 0):
  """Boolean [..., l, s]: |t - s| <= w (s <= t when causal), or a global token at either end.

  positions_q [..., l], positions_kv [..., s] are indices in the row.
  """
  t, s = positions_q[..., :, None], positions_kv[..., None, :]
  band = (s >= t - window) & (s <= (t if causal else t + window))
  if global_tokens:
    band = band | (t < global_tokens) | (s < global_tokens)
  return band


def _segment_mask(segment_q, segment_kv):
  return (segment_q[..., :, None] == segment_kv[..., None, :]) & (segment_kv[..., None, :] > 0)


def _softmax_attend(query, key, value, mask, dropout: Optional[Callable], softcap: float = 0.0):
  """softmax(q k^T / sqrt(k)) v per block: query [b, n, c, h, k], key/value
  [b, n, s, h, k], mask [b, 1, n, c, s]. Without dropout or a soft cap, the blocks go
  through `attention` (its hand-written backward pass) as a batch of b * n rows."""
  if dropout is None and not softcap:
    b, n = query.shape[:2]
    rows = lambda x: x.reshape((b * n,) + x.shape[2:])
    mask = jnp.broadcast_to(mask, (b, 1, n) + mask.shape[3:]).transpose(0, 2, 1, 3, 4)
    out = attention(rows(query), rows(key), rows(value), rows(mask))
    return out.reshape(query.shape)
  scale = jnp.asarray(1.0 / math.sqrt(query.shape[-1]), query.dtype)
  logits = soft_cap(jnp.einsum('bnqhk,bnshk->bhnqs', query * scale, key), softcap)
  logits = jnp.where(mask, logits, jnp.asarray(NEG_INF, logits.dtype))
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(query.dtype)
  if dropout is not None:
    weights = dropout(weights)
  return jnp.einsum('bhnqs,bnshk->bnqhk', weights, value)


def _blocks(x, n: int, c: int, mode: str = 'constant'):
  """[b, l, ...] -> [b, n, c, ...], padded at the end with zeros (or the last value: 'edge')."""
  pad = n * c - x.shape[1]
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), mode=mode)
  return x.reshape((x.shape[0], n, c) + x.shape[2:])


def _with_neighbours(x, causal: bool):
  """[b, n, c, ...] -> [b, n, 2c or 3c, ...]: the previous block, this one (, the next)."""
  pad = [(0, 0), (1, 1)] + [(0, 0)] * (x.ndim - 2)
  padded = jnp.pad(x, pad)
  parts = [padded[:, :-2], x] + ([] if causal else [padded[:, 2:]])
  return jnp.concatenate(parts, axis=2)


def sliding_window_attention(query, key, value, segment_ids, window: int, causal: bool,
                             global_tokens: int = 0, dropout: Optional[Callable] = None,
                             softcap: float = 0.0):
  """Longformer's sliding window, blocked: O(l w) time and memory.

  query/key/value [b, l, h, k] (self-attention: one sequence), segment_ids [b, l].
  Queries go in blocks of c = min(w, l); block i attends to blocks i - 1 and i
  (and i + 1 without `causal`), under the band and segment masks, so every key
  within w of a query is seen exactly once. `global_tokens` (non-causal only):
  those first tokens of the row are added as keys to every block, and their
  queries attend to the whole row; a row shorter than `global_tokens` (a short
  length bucket, `count_params`' 2-token trace) is global throughout. `softcap` caps
  the scores (`soft_cap`). Returns [b, l, h, k]; equal to softmax attention under
  `local_mask` and the segment mask.
  """
  b, l, h, k = query.shape
  global_tokens = min(global_tokens, l)
  c = min(window, l)
  n = -(-l // c)
  positions = jnp.arange(n * c)
  q_blocks = _blocks(query, n, c)  # [b, n, c, h, k]
  k_blocks = _with_neighbours(_blocks(key, n, c), causal)  # [b, n, 2c|3c, h, k]
  v_blocks = _with_neighbours(_blocks(value, n, c), causal)
  seg_q = _blocks(segment_ids, n, c)  # [b, n, c]; padding is segment 0.
  seg_k = _with_neighbours(seg_q, causal)
  pos_q = positions.reshape(n, c)
  pos_k = pos_q[:, :1] - c + jnp.arange(k_blocks.shape[2])  # [n, 2c|3c]
  band = local_mask(pos_q, pos_k, window, causal)  # [n, c, 2c|3c]
  if global_tokens:
    band = band & (pos_k[:, None, :] >= global_tokens)  # global keys come as their own columns.
  mask = band[None] & _segment_mask(seg_q, seg_k)  # [b, n, c, 2c|3c]
  if global_tokens and not causal:
    g = global_tokens
    k_blocks = jnp.concatenate([jnp.broadcast_to(key[:, None, :g], (b, n) + key[:, :g].shape[1:]),
                                k_blocks], axis=2)
    v_blocks = jnp.concatenate([jnp.broadcast_to(value[:, None, :g],
                                                 (b, n) + value[:, :g].shape[1:]), v_blocks],
                               axis=2)
    global_cols = _segment_mask(seg_q, jnp.broadcast_to(segment_ids[:, None, :g], (b, n, g)))
    mask = jnp.concatenate([global_cols, mask], axis=-1)
  out = _softmax_attend(q_blocks, k_blocks, v_blocks, mask[:, None], dropout, softcap)
  out = out.reshape(b, n * c, h, k)[:, :l]
  if global_tokens and not causal:  # global queries attend to the whole row.
    g = global_tokens
    rows = _softmax_attend(query[:, None, :g], key[:, None], value[:, None],
                           _segment_mask(segment_ids[:, :g], segment_ids)[:, None, None],
                           dropout, softcap)[:, 0]
    out = jnp.concatenate([rows, out[:, g:]], axis=1)
  return out


# ----------------------------------------------------------------------------
# FAVOR+ (linear) attention.


@functools.lru_cache(maxsize=None)
def orthogonal_random_features(num_features: int, head_dim: int, seed: int) -> np.ndarray:
  """W [m, k]: blocks of k orthogonal rows (QR of a Gaussian matrix, R's signs
  moved into Q so that the rotation is uniform, not biased), each row
  rescaled to the norm of an independent Gaussian vector, so rows are
  marginally N(0, I_k) but orthogonal within a block (Performer section 3,
  "orthogonal random features"). A fixed draw: seeded, computed once per
  shape, a constant of the compiled step (so training stays pure and a resume
  exact; the paper's periodic redrawing is not done).
  """
  rng = np.random.default_rng(seed)
  blocks = []
  for _ in range(-(-num_features // head_dim)):
    q, r = np.linalg.qr(rng.standard_normal((head_dim, head_dim)))
    blocks.append((q * np.sign(np.diag(r))).T)  # signs fixed: uniform (Haar) rotations.
  w = np.concatenate(blocks)[:num_features]
  norms = np.linalg.norm(rng.standard_normal((num_features, head_dim)), axis=1)
  return (w * norms[:, None]).astype(np.float32)


def favor_logits(x, projection):
  """log phi(x) = w_i^T x' - |x'|^2 / 2, x' = x / k^(1/4) (Performer eq. 5, Lemma 1), up to
  the constant -log(m) / 2 that cancels in the normalisation.

  x [b, l, h, k] -> [b, l, h, m] float32 (float64 for float64 x): phi(q)^T phi(k) is an
  unbiased, positive estimate of exp(q^T k / sqrt(k)). Queries and keys stay in the log
  domain: the sums (`_causal_sums`) exponentiate them against scales, as softmax's
  stabiliser.
  """
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32)) * x.shape[-1]**-0.25
  return (jnp.einsum('blhk,mk->blhm', x, jnp.asarray(projection, x.dtype))
          - 0.5 * jnp.sum(x * x, -1, keepdims=True))


def _normalise(numerator, denominator):
  """numerator [b, l, h, k] / denominator [b, l, h]; rows that see no key give 0.

  The sums put their largest term at 1 (`_causal_sums`), so a denominator below
  `_DENOMINATOR_FLOOR` arises only past float32's range; the floor keeps the
  quotient's gradient (denominator squared) finite there.
  """
  return numerator / jnp.maximum(denominator, _DENOMINATOR_FLOOR)[..., None]


def linear_attention_quadratic(query_logits, key_logits, value, mask):
  """The quadratic form of FAVOR+: A = phi(Q) phi(K)^T masked, D^-1 A V.

  query_logits [b, l, h, m], key_logits [b, s, h, m] (`favor_logits`), value
  [b, s, h, k], mask broadcastable to [b, h, l, s]. Each term exp(q_i + k_i) is taken
  against the largest term of its query (a [b, h, l, s, m] tensor: for tests and small
  sizes), so nothing underflows that matters. The reference the linear forms equal.
  """
  joint = (jnp.einsum('blhm->bhlm', query_logits)[:, :, :, None]
           + jnp.einsum('bshm->bhsm', key_logits)[:, :, None])  # [b, h, l, s, m]
  mask = jnp.broadcast_to(mask, joint.shape[:-1])[..., None]
  joint = jnp.where(mask, joint, -jnp.inf)
  top = jax.lax.stop_gradient(jnp.max(joint, axis=(3, 4), keepdims=True))
  a = jnp.sum(jnp.exp(joint - jnp.where(jnp.isfinite(top), top, 0.0)), -1)  # [b, h, l, s]
  out = jnp.einsum('bhls,bshk->blhk', a, value.astype(a.dtype))
  return _normalise(out, jnp.einsum('bhls->blh', a))


_NO_SCALE = -1e30  # the scale of no keys: below every key logit, exp(-1e30 - x) = 0.
# float32 spans e^-87 .. e^88, and a term phi(q)_i phi(k)_i may need a query feature
# as large as its key feature is small. Key features go up to e^24 (their scale sits
# 24 below the largest key logit) and query features up to e^56, so a product of two,
# summed over m <= 1024 features, stays below e^88, and a query's largest term is 1
# when the keys of its best feature lie at most e^80 below the largest key logit
# (further, J is raised and the sums fall, floored at e^-16: exact to e^96, finite
# beyond, gradients bounded by l e^72).
_KEY_HEADROOM = 24.0
_QUERY_CAP = 56.0
_DENOMINATOR_FLOOR = math.exp(-16.0)


def _exp_nonpositive(x):
  """exp(min(x, 0)): a ratio of scales, <= 1 wherever it is used, and never inf
  (so never inf * 0 = NaN in a masked product or its gradient) where it is not."""
  return jnp.exp(jnp.minimum(x, 0.0))


def _segment_cummax(values, starts):
  """Running maximum of values [b, l, ...] along l, restarted where starts [b, l]."""
  def combine(a, b):
    start = b[1].reshape(b[1].shape + (1,) * (b[0].ndim - b[1].ndim))
    return (jnp.where(start, b[0], jnp.maximum(a[0], b[0])), a[1] | b[1])
  return jax.lax.associative_scan(combine, (values, starts), axis=1)[0]


def _causal_sums(query_logits, key_logits, value, segment_ids, inclusive: bool,
                 chunk: int, state=None):
  """Numerator [b, l, h, k], denominator [b, l, h], their scale J [b, l, h] and the
  final state of causal FAVOR+.

  Sum over keys s <= t (s < t unless `inclusive`) of the same segment of
  phi(q_t)^T phi(k_s) [v_s, 1] exp(-J_t). Two stabilisers, as softmax's maximum:
  - keys: M_t, the largest key logit of the keys of t's segment up to t (the
    state's included), less `_KEY_HEADROOM`, is the scale of the key features, so
    they never overflow and only keys far below their own segment's largest
    underflow (a fixed bound of max_i |w_i|^2 / 2 zeroed every key at head dim
    128). Packed examples never share a scale.
  - queries: J_t = max_i (q_t,i + K_t,i), K_t,i the largest logit of feature i
    among those keys, is the log of the largest term of query t's sums, so the
    denominator is at least 1 (J_t is raised where a query feature would pass
    e^`_QUERY_CAP`). Scaling a query by its own largest logit instead left the
    sums as small as exp(-(the gap between where q and the keys peak)): 1e-30 at
    norms ~40, and gradients became inf.
  Within a chunk of c tokens the sums are a masked c x c product; across chunks a
  scan carries the state (S [b, h, m, k], z [b, h, m], their scale R [b, h]). As
  segments are contiguous runs, the keys of earlier chunks in query t's segment
  exist only when that segment began before t's chunk, so the carry holds the
  sums of the segment each chunk starts with. `state`: sums of earlier tokens of
  the first token's segment (the decoding cache); all zeros is empty. The
  exclusive sums (the reversed half of `bidirectional_linear_attention`) use the
  inclusive stabilisers: key t is in the other half, so J_t never exceeds the row's.
  """
  b, l, h, m = query_logits.shape
  k = value.shape[-1]
  c = min(chunk, l)
  n = -(-l // c)
  value = value.astype(jnp.float32)
  if state is None:
    state = (jnp.zeros((b, h, m, k), jnp.float32), jnp.zeros((b, h, m), jnp.float32),
             jnp.zeros((b, h), jnp.float32))
  z, r = jax.lax.stop_gradient(state[1:])
  held = z > 0  # [b, h, m]; log z_i + R bounds the largest key logit of feature i.
  held_features = jnp.where(held, jnp.log(jnp.where(held, z, 1.0)) + r[..., None], _NO_SCALE)
  held = jnp.where(jnp.any(held, -1), r + _KEY_HEADROOM, _NO_SCALE)  # [b, h]; empty: none.
  real = (segment_ids > 0)[..., None, None]  # [b, l, 1, 1]: padding keys add nothing.
  feature_max = jnp.where(real, jax.lax.stop_gradient(key_logits), _NO_SCALE)
  key_max = jnp.max(feature_max, -1).at[:, 0].max(held)  # the state continues the first
  feature_max = feature_max.at[:, 0].max(held_features)  # token's segment.
  starts = jnp.concatenate([jnp.ones((b, 1), bool),
                            segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  feature_scale = _segment_cummax(feature_max, starts)  # K [b, l, h, m]
  scale = _segment_cummax(key_max, starts) - _KEY_HEADROOM  # M [b, l, h], less the headroom.
  query_max = jax.lax.stop_gradient(query_logits)
  joint = jnp.maximum(jnp.max(query_max + feature_scale, -1),  # J [b, l, h]
                      jnp.max(query_max, -1) + scale - _QUERY_CAP)
  query_features = jnp.exp(query_logits + (scale - joint)[..., None])
  key_features = jnp.exp(jnp.where(real, key_logits - scale[..., None], -jnp.inf))
  qf, kf, v = (_blocks(x, n, c) for x in (query_features, key_features, value))
  seg = _blocks(segment_ids, n, c, 'edge')  # [b, n, c]; the padding's keys are zeros.
  mb = _blocks(scale, n, c, 'edge')  # [b, n, c, h]
  t = jnp.arange(c)
  order = (t[None, :] <= t[:, None]) if inclusive else (t[None, :] < t[:, None])
  rescale = _exp_nonpositive(jnp.einsum('bnsh->bnhs', mb)[:, :, :, None, :]
                             - jnp.einsum('bnqh->bnhq', mb)[..., None])  # M_s - M_q
  a = jnp.einsum('bnqhm,bnshm->bnhqs', qf, kf) * rescale
  a = jnp.where((order[None, None] & (seg[..., :, None] == seg[..., None, :]))[:, :, None], a, 0.)
  numerator = jnp.einsum('bnhqs,bnshk->bnqhk', a, v)
  denominator = jnp.einsum('bnhqs->bnqh', a)
  first, last = seg[:, :, 0], seg[:, :, -1]
  end = mb[:, :, -1]  # [b, n, h]: the scale of a chunk's sums.
  tail = (seg == last[..., None])[..., None, None]  # keys of the segment the chunk ends with.
  kf_end = kf * tail * _exp_nonpositive(mb - end[:, :, None])[..., None]
  tail_s = jnp.einsum('bnchm,bnchk->bnhmk', kf_end, v)  # [b, n, h, m, k]
  tail_z = jnp.einsum('bnchm->bnhm', kf_end)
  whole = first == last  # [b, n]: the chunk lies in one segment.
  continues = jnp.concatenate([jnp.ones((b, 1), bool), first[:, 1:] == last[:, :-1]], axis=1)

  def step(carry, xs):  # carry: sums of segment `first` before this chunk (valid if continues).
    s, z, r = carry
    tail_s, tail_z, end, whole, continues = xs
    keep = continues[:, None, None]
    s, z = jnp.where(keep[..., None], s, 0.0), jnp.where(keep, z, 0.0)
    entering = (s, z, r)
    carry_on = whole[:, None, None]
    factor = _exp_nonpositive(r - end)[..., None]  # R <= M within a segment.
    s = tail_s + jnp.where(carry_on[..., None], s * factor[..., None], 0.0)
    z = tail_z + jnp.where(carry_on, z * factor, 0.0)
    return (s, z, end), entering

  swap = lambda x: jnp.moveaxis(x, 1, 0)
  final, (carried_s, carried_z, carried_r) = jax.lax.scan(
      step, state, (swap(tail_s), swap(tail_z), swap(end), swap(whole), swap(continues)))
  carried_s, carried_z, carried_r = swap(carried_s), swap(carried_z), swap(carried_r)
  in_first = (seg == first[..., None])[..., None, None]  # queries of the carried segment.
  qf_carried = qf * in_first * _exp_nonpositive(carried_r[:, :, None] - mb)[..., None]
  numerator += jnp.einsum('bnqhm,bnhmk->bnqhk', qf_carried, carried_s)
  denominator += jnp.einsum('bnqhm,bnhm->bnqh', qf_carried, carried_z)
  unblock = lambda x: x.reshape((b, n * c) + x.shape[3:])[:, :l]
  return unblock(numerator), unblock(denominator), joint, final


def causal_linear_attention(query_logits, key_logits, value, segment_ids,
                            chunk: int = LINEAR_CHUNK, state=None):
  """Unidirectional FAVOR+ by prefix sums: O(l m k) time, O(l (c + m k / c)) memory.

  query_logits, key_logits [b, l, h, m] (`favor_logits`), value [b, l, h, k],
  segment_ids [b, l]. `state` (S [b, h, m, k], z [b, h, m], their scale R [b, h])
  continues earlier tokens (cached decoding).
  Returns (output [b, l, h, k] float32, final state).
  """
  numerator, denominator, _, final = _causal_sums(query_logits, key_logits, value,
                                                  segment_ids, True, chunk, state)
  return _normalise(numerator, denominator), final


def bidirectional_linear_attention(query_logits, key_logits, value, segment_ids,
                                   chunk: int = LINEAR_CHUNK):
  """FAVOR+ without a causal mask, within segments: the sums over s <= t plus,
  on the reversed row, those over s > t. query_logits, key_logits [b, l, h, m]
  (`favor_logits`). Returns [b, l, h, k] float32."""
  num, den, scale, _ = _causal_sums(query_logits, key_logits, value, segment_ids, True, chunk)
  flip = lambda x: jnp.flip(x, axis=1)
  num_r, den_r, scale_r, _ = _causal_sums(flip(query_logits), flip(key_logits), flip(value),
                                          flip(segment_ids), False, chunk)
  top = jnp.maximum(scale, flip(scale_r))  # both halves to one scale.
  forward, backward = jnp.exp(scale - top), jnp.exp(flip(scale_r) - top)
  return _normalise(num * forward[..., None] + flip(num_r) * backward[..., None],
                    den * forward + flip(den_r) * backward)
