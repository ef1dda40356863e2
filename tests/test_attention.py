"""Efficient attention kinds (models/attention.py): each equals its reference form,
FAVOR+ approaches softmax as features grow, cached decoding equals the full pass,
packing keeps examples apart, and shared key/value heads shrink what they should."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import config as config_lib
from transformer_jax import decode
from transformer_jax.models import accounting
from transformer_jax.models import attention as attention_lib
from transformer_jax.models import layers
from transformer_jax.models.transformer import build_model

# Two packed examples and padding in row 0, one example in row 1.
SEGMENTS = np.array([[1] * 9 + [2] * 21 + [0] * 7, [1] * 37], np.int32)


@pytest.fixture(autouse=True, scope='module')
def _quick_compiles():
  """Both sides of every comparison compile the same way, so skip XLA's slow passes."""
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', previous)


# The kernels jitted: one compile each instead of op-by-op dispatch (and an eager scan).
sliding_window = jax.jit(attention_lib.sliding_window_attention, static_argnums=(4, 5, 6))
causal_linear = jax.jit(attention_lib.causal_linear_attention, static_argnames=('chunk',))
bidirectional_linear = jax.jit(attention_lib.bidirectional_linear_attention,
                               static_argnames=('chunk',))
quadratic_linear = jax.jit(attention_lib.linear_attention_quadratic)
softmax_attention = jax.jit(layers.scaled_dot_product_attention)


def qkv(shape=(2, 37, 4, 8), seed=0, scale=1.0):
  q, k, v = jax.random.normal(jax.random.key(seed), (3,) + shape) * scale
  return q, k, v


def real_rows(x):  # [b, l, ...] -> the rows of real (non-padding) queries.
  return np.asarray(x)[SEGMENTS > 0]


@pytest.mark.parametrize('causal,global_tokens,window', [
    (True, 0, 1), (True, 0, 5), (False, 0, 5), (False, 2, 5), (True, 0, 64), (False, 2, 64)])
def test_local_equals_full_attention_under_the_band_mask(causal, global_tokens, window):
  """Windows of 1, of 5 (blocks cut the packed examples) and of 64 (one block)."""
  q, k, v = qkv()
  segments = jnp.asarray(SEGMENTS)
  positions = jnp.arange(q.shape[1])
  mask = (layers.attention_mask(segments, segments, causal)
          & attention_lib.local_mask(positions, positions, window, causal, global_tokens))
  full, _ = softmax_attention(q, k, v, mask)
  local = sliding_window(q, k, v, segments, window, causal, global_tokens)
  np.testing.assert_allclose(real_rows(local), real_rows(full), atol=1e-6, rtol=1e-6)


def test_global_tokens_beyond_a_short_row_make_it_global_throughout():
  """A row shorter than global_tokens (a short seq2seq length bucket, count_params'
  2-token trace) is all global: full attention within its segments."""
  q, k, v = qkv((2, 6, 2, 4))
  segments = jnp.asarray([[1] * 4 + [0] * 2, [1] * 6])
  full, _ = softmax_attention(q, k, v, layers.attention_mask(segments, segments, False))
  local = sliding_window(q, k, v, segments, 2, False, 9)
  real = np.asarray(segments) > 0
  np.testing.assert_allclose(np.asarray(local)[real], np.asarray(full)[real], atol=1e-6)
  m = tiny('encoder', attention='local', global_tokens=3)
  assert accounting.count_params(m) > 0


def features(q, k, m=32, seed=0):
  projection = attention_lib.orthogonal_random_features(m, q.shape[-1], seed)
  return (attention_lib.favor_logits(q, projection),
          attention_lib.favor_logits(k, projection))


def test_causal_linear_attention_equals_its_quadratic_masked_form():
  q, k, v = qkv(scale=0.5)
  qf, kf = features(q, k)
  segments = jnp.asarray(SEGMENTS)
  mask = layers.attention_mask(segments, segments, causal=True)
  reference = quadratic_linear(qf, kf, v, mask)
  for chunk in (4, 7, 64):  # chunks that cut segments, and one chunk for the whole row.
    out, _ = causal_linear(qf, kf, v, segments, chunk=chunk)
    np.testing.assert_allclose(real_rows(out), real_rows(reference), atol=1e-5, rtol=1e-5)
  bidirectional = bidirectional_linear(qf, kf, v, segments, chunk=4)
  reference = quadratic_linear(qf, kf, v, layers.attention_mask(segments, segments, causal=False))
  np.testing.assert_allclose(real_rows(bidirectional), real_rows(reference), atol=1e-5,
                             rtol=1e-5)


def test_causal_linear_attention_continues_from_its_state():
  q, k, v = qkv(scale=0.5)
  qf, kf = features(q, k)
  ones = jnp.ones(q.shape[:2], jnp.int32)
  whole, final = causal_linear(qf, kf, v, ones, chunk=4)
  first, state = causal_linear(qf[:, :10], kf[:, :10], v[:, :10], ones[:, :10], chunk=4)
  rest, state = causal_linear(qf[:, 10:], kf[:, 10:], v[:, 10:], ones[:, 10:], chunk=4,
                              state=state)
  np.testing.assert_allclose(jnp.concatenate([first, rest], 1), whole, atol=1e-5, rtol=1e-5)
  for a, b in zip(state, final):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


FEATURE_COUNTS = (16, 64, 256, 1024)


def favor_errors(seeds=8):
  """Mean absolute error of FAVOR+ against softmax attention, per feature count."""
  q, k, v = qkv((1, 64, 1, 16), scale=0.3)
  exact, _ = layers.scaled_dot_product_attention(q, k, v)
  errors = []
  for m in FEATURE_COUNTS:
    err = []
    for seed in range(seeds):
      qf, kf = features(q, k, m, seed)
      approx = attention_lib.linear_attention_quadratic(qf, kf, v, True)
      err.append(float(jnp.mean(jnp.abs(approx - exact))))
    errors.append(float(np.mean(err)))
  return errors


def test_favor_error_falls_as_random_features_grow():
  errors = favor_errors()
  print('FAVOR+ mean |error| vs softmax:', dict(zip(FEATURE_COUNTS, errors)))
  assert all(a > b for a, b in zip(errors, errors[1:])), errors
  # Monte Carlo: the error goes as 1 / sqrt(m); 64x the features, at least 4x less error.
  assert errors[-1] < errors[0] / 4, errors


def test_favor_approximates_softmax_at_head_dim_128():
  """Keys scaled by a fixed bound (max_i |w_i|^2 / 2, ~90 at k = 128) underflowed to
  zero, and the output with them; a running maximum keeps them in range."""
  q, k, v = qkv((1, 64, 1, 128), scale=0.3)
  projection = attention_lib.orthogonal_random_features(256, 128, 0)
  qf, kl = attention_lib.favor_logits(q, projection), attention_lib.favor_logits(k, projection)
  ones = jnp.ones((1, 64), jnp.int32)
  causal_mask = jnp.tril(jnp.ones((64, 64), bool))
  for approx, (exact, _) in ((causal_linear(qf, kl, v, ones)[0],
                              softmax_attention(q, k, v, causal_mask)),
                             (bidirectional_linear(qf, kl, v, ones),
                              softmax_attention(q, k, v))):
    error = float(jnp.mean(jnp.abs(approx - exact)))
    assert error < 0.25 * float(jnp.mean(jnp.abs(exact))), error


def _favor_inputs(norms, head_dim=32, features=64, seed=0):
  """Query features and key logits of random rows whose keys have the given norms [l]."""
  rng = np.random.default_rng(seed)
  l = len(norms)
  q = jnp.asarray(rng.normal(size=(1, l, 1, head_dim)), jnp.float32) * 0.3
  k = rng.normal(size=(1, l, 1, head_dim))
  k = jnp.asarray(k / np.linalg.norm(k, axis=-1, keepdims=True)
                  * np.asarray(norms)[None, :, None, None], jnp.float32)
  v = jnp.asarray(rng.normal(size=(1, l, 1, head_dim)), jnp.float32)
  projection = attention_lib.orthogonal_random_features(features, head_dim, seed)
  return attention_lib.favor_logits(q, projection), attention_lib.favor_logits(k, projection), v


def test_favor_keys_far_below_zero_still_count():
  """Key logits far below -87 (large key norms): causal FAVOR+ equals the same
  sums done in float64, where a scale floored at 0 (or a fixed bound) gave 0."""
  qf, kl, v = _favor_inputs(np.linspace(50, 80, 12))
  assert float(kl.max()) < -90
  out = np.asarray(causal_linear(qf, kl, v, jnp.ones((1, 12), jnp.int32))[0])[0, :, 0]
  qf, kl, v = (np.asarray(x, np.float64)[0, :, 0] for x in (qf, kl, v))
  for t in range(12):
    weights = qf[t] @ np.exp(kl[:t + 1] - kl[:t + 1].max()).T  # [t + 1]
    np.testing.assert_allclose(out[t], weights @ v[:t + 1] / weights.sum(), atol=1e-5)


def test_a_packed_favor_example_is_computed_as_if_alone():
  """Packed examples never share FAVOR+'s key scale: one whose keys sit far above
  the next's would otherwise underflow the next (causal and bidirectional). The
  chunks fall differently packed and alone, so only rounding may differ."""
  qf, kl, v = _favor_inputs([12.0] * 6 + [60.0] * 6)
  segments = jnp.asarray([[1] * 6 + [2] * 6])
  alone = jnp.ones((1, 6), jnp.int32)
  second = lambda x: x[:, 6:]
  packed = causal_linear(qf, kl, v, segments, chunk=4)[0]
  np.testing.assert_allclose(second(packed),
                             causal_linear(*map(second, (qf, kl, v)), alone, chunk=4)[0],
                             atol=1e-5)
  np.testing.assert_allclose(second(bidirectional_linear(qf, kl, v, segments, chunk=4)),
                             bidirectional_linear(*map(second, (qf, kl, v)), alone, chunk=4),
                             atol=1e-5)
  assert float(jnp.max(jnp.abs(second(packed)))) > 0.1


def _favor_gradients(attend, dtype, seed=0, length=24, head_dim=64, features=64):
  """norm -> gradients w.r.t. q, k, v of sum(r * attend(favor_logits(q), favor_logits(k), v)),
  q and k [1, length, 1, head_dim] of that norm per token and head, in `dtype`."""
  rng = np.random.default_rng(seed)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  q, k = (unit(rng.normal(size=(1, length, 1, head_dim))) for _ in range(2))
  v, r = rng.normal(size=(2, 1, length, 1, head_dim))
  projection = attention_lib.orthogonal_random_features(features, head_dim, seed)
  loss = lambda q, k, v: jnp.sum(attend(attention_lib.favor_logits(q, projection),
                                        attention_lib.favor_logits(k, projection), v)
                                 * r.astype(dtype))
  grad = jax.jit(jax.grad(loss, (0, 1, 2)))
  return lambda norm: grad(*(jnp.asarray(x, dtype) for x in (q * norm, k * norm, v)))


@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('packed', [False, True])
def test_favor_gradients_stay_finite_and_match_float64_across_norms(causal, packed):
  """Issue 24, kind 2: at per-head query/key norms ~40 each query's features peaked where
  the keys' did not, the denominator fell to 1e-20..1e-30, its square underflowed and the
  gradients became inf/NaN. Now they equal the quadratic form's, run in float64, from
  norm 1 to 100 (head dim 64), and stay finite far beyond, as softmax's do."""
  segments = jnp.asarray([[1] * 11 + [2] * 9 + [0] * 4] if packed else [[1] * 24])
  if causal:
    attend = lambda q, k, v: attention_lib.causal_linear_attention(q, k, v, segments, 8)[0]
  else:
    attend = lambda q, k, v: attention_lib.bidirectional_linear_attention(q, k, v, segments, 8)
  mask = layers.attention_mask(segments, segments, causal)
  gradients = _favor_gradients(attend, jnp.float32)
  with jax.enable_x64():
    reference = _favor_gradients(
        lambda q, k, v: attention_lib.linear_attention_quadratic(q, k, v, mask), jnp.float64)
    for norm in (1.0, 10.0, 40.0, 70.0, 100.0):
      for got, want in zip(gradients(norm), reference(norm)):
        want = np.asarray(want)
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0,
                                   atol=1e-4 * np.abs(want).max(), err_msg=f'norm {norm}')
  for norm in (300.0, 1000.0):
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in gradients(norm)), norm


def tiny(variant='decoder', **overrides):
  m = config_lib.model_config()
  m.update(variant=variant, num_layers=2, d_model=16, num_heads=4, vocab_size=20, max_len=32,
           dropout_rate=0.0, attention_window=3, num_random_features=16)
  m.update(overrides)
  return m


TEXT_POSITIONS = tuple(p for p in config_lib.POSITIONS if p not in config_lib.IMAGE_POSITIONS)


@pytest.mark.parametrize('position', TEXT_POSITIONS)
@pytest.mark.parametrize('kind', config_lib.ATTENTIONS)
def test_cached_decoding_equals_the_full_pass(kind, position):
  # Key/value heads rotate with the position type: 4 (= num_heads), 1 (multi-query), 2.
  kv = (None, 1, 2, 1)[TEXT_POSITIONS.index(position)]
  m = tiny(attention=kind, position=position, num_kv_heads=kv)
  model = build_model(m)
  tokens = jax.random.randint(jax.random.key(1), (2, 11), 1, 20)
  params = model.init(jax.random.key(0), tokens)['params']
  full = model.apply({'params': params}, tokens)
  # A prefill of 5 tokens (longer than the window of 3), then one token a step.
  cached = decode.step_logits(model, params, tokens, prefill=6)
  np.testing.assert_allclose(cached, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('kind', config_lib.ATTENTIONS)
def test_seq2seq_cached_decoding_equals_the_full_pass(kind):
  m = tiny('seq2seq', attention=kind, num_kv_heads=2)
  model = build_model(m)
  sources = jax.random.randint(jax.random.key(1), (2, 9), 1, 20)
  targets = jax.random.randint(jax.random.key(2), (2, 8), 1, 20)
  params = model.init(jax.random.key(0), sources, targets)['params']
  full = model.apply({'params': params}, sources, targets)
  decoder_inputs = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]
  cached = decode.step_logits(model, params, decoder_inputs, sources)
  np.testing.assert_allclose(cached, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('variant,kind,extra', [
    ('decoder', 'local', {}), ('decoder', 'linear', {}), ('encoder', 'local', {}),
    ('encoder', 'linear', {}), ('encoder', 'local', {'global_tokens': 1})])
def test_packed_examples_equal_the_examples_alone(variant, kind, extra):
  model = build_model(tiny(variant, attention=kind, **extra))
  a = jax.random.randint(jax.random.key(1), (1, 7), 1, 20)
  b = jax.random.randint(jax.random.key(2), (1, 9), 1, 20)
  params = model.init(jax.random.key(0), a)['params']
  packed = jnp.concatenate([a, b], axis=1)
  segments = jnp.asarray([[1] * 7 + [2] * 9])
  positions = jnp.asarray([list(range(7)) + list(range(9))])
  together = model.apply({'params': params}, packed, segments, positions)
  alone = jnp.concatenate([model.apply({'params': params}, a), model.apply({'params': params}, b)],
                          axis=1)
  if 'global_tokens' in extra:  # the first token is global in a row, not in each example.
    together, alone = together[:, :7], alone[:, :7]
  np.testing.assert_allclose(together, alone, atol=1e-5, rtol=1e-5)


def test_num_kv_heads_equal_to_num_heads_is_todays_model():
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 1, 20)
  outputs, trees = [], []
  for kv in (None, 4):
    model = build_model(tiny(num_kv_heads=kv, dropout_rate=0.1))
    variables = model.init(jax.random.key(0), tokens)
    trees.append(jax.tree.map(jnp.shape, variables))
    outputs.append(model.apply(variables, tokens, deterministic=False,
                               rngs={'dropout': jax.random.key(3)}))
  assert trees[0] == trees[1]
  assert trees[0]['params']['decoder']['layer_0']['self_attention']['key']['kernel'] == (16, 4, 4)
  np.testing.assert_array_equal(outputs[0], outputs[1])


@pytest.mark.parametrize('kv', [1, 2, 4, 8])
def test_grouped_query_heads_cut_the_key_value_parameters(kv):
  """W^K and W^V (and their biases) shrink from h to g heads in every attention
  sublayer: 6 encoder, 6 decoder self- and 6 cross-attentions of the base model."""
  m = config_lib.model_config()  # the paper's base seq2seq model, h = 8, d_k = 64.
  full = accounting.count_params(m)
  m.num_kv_heads = kv
  removed = 18 * 2 * (512 * (8 - kv) * 64 + (8 - kv) * 64)
  assert accounting.count_params(m) == full - removed


def test_flops_per_token_follow_the_kind():
  per_length = {}
  for kind in config_lib.ATTENTIONS:
    m = tiny(attention=kind, attention_window=128, num_random_features=64)
    per_length[kind] = [accounting.flops_per_token(m, n) for n in (1024, 4096, 16384)]
  full, local, linear = per_length['full'], per_length['local'], per_length['linear']
  assert full[2] - full[1] == 4 * (full[1] - full[0])  # linear in the keys.
  assert local[0] == local[1] == local[2] < full[0]  # the window, not the length.
  assert linear[0] == linear[1] == linear[2] < full[0]
  m = tiny(num_kv_heads=1)  # one key/value head: smaller W^K, W^V.
  assert accounting.flops_per_token(m, 64) < accounting.flops_per_token(tiny(), 64)


@pytest.mark.parametrize('overrides,field', [
    ({'attention': 'sparse'}, 'attention'),
    ({'num_kv_heads': 3}, 'num_kv_heads'),
    ({'num_kv_heads': 0}, 'num_kv_heads'),
    ({'attention': 'local', 'attention_window': 0}, 'attention_window'),
    ({'attention': 'linear', 'num_random_features': 0}, 'num_random_features'),
    ({'attention': 'local', 'global_tokens': 1}, 'global_tokens'),  # a decoder.
    ({'attention': 'full', 'global_tokens': 1, 'variant': 'encoder'}, 'global_tokens'),
    ({'attention': 'linear', 'attention_dropout_rate': 0.1}, 'attention_dropout_rate'),
    ({'attention': 'local', 'attention_impl': 'cudnn'}, 'attention_impl'),
])
def test_bad_attention_config_names_the_field(overrides, field):
  m = tiny(**overrides)
  with pytest.raises(config_lib.ConfigError, match=f'config.model.{field}') as e:
    config_lib.validate_model(m)
  assert '\n' not in str(e.value)


def test_global_tokens_refuse_packing():
  c = config_lib.base_config()
  c.model.update(variant='encoder', attention='local', global_tokens=1)
  c.data.update(task='mlm', packing=True)
  with pytest.raises(config_lib.ConfigError, match='config.model.global_tokens=1 marks'):
    config_lib.validate(c)
