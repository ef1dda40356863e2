"""The performance paths compute what the plain ones do: the hand-written attention
backward, the RngBitGenerator dropout, rematerialisation and the cuDNN option."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import config as config_lib
from transformer_jax.models import layers
from transformer_jax.models.transformer import build_model

VOCAB = 29


def _qkv_and_mask(seed, b=2, l=6, s=7, h=3, k=8):
  rng = np.random.default_rng(seed)
  q, kk, v = (jnp.asarray(rng.normal(size=shape), jnp.float32)
              for shape in ((b, l, h, k), (b, s, h, k), (b, s, h, k)))
  mask = rng.random((b, 1, l, s)) > 0.3
  mask[0, 0, 2, :] = False  # a query that may attend to nothing.
  return q, kk, v, jnp.asarray(mask)


@pytest.mark.parametrize('with_mask', [True, False])
def test_attention_backward_matches_autodiff(with_mask):
  q, k, v, mask = _qkv_and_mask(0)
  mask = mask if with_mask else None
  probe = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)

  def loss(fn, q, k, v):
    return jnp.sum(fn(q, k, v, mask) * probe)

  plain = lambda *a: layers.scaled_dot_product_attention(*a)[0]
  np.testing.assert_allclose(layers.attention(q, k, v, mask), plain(q, k, v, mask),
                             rtol=1e-6, atol=1e-6)
  ours = jax.grad(lambda *a: loss(layers.attention, *a), argnums=(0, 1, 2))(q, k, v)
  reference = jax.grad(lambda *a: loss(plain, *a), argnums=(0, 1, 2))(q, k, v)
  for name, a, b in zip('qkv', ours, reference):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f'd{name}')


def _dropout(rate, x, seed, deterministic=False):
  return layers.Dropout(rate).apply({}, x, deterministic, rngs={'dropout': jax.random.key(seed)})


def test_dropout_drops_the_rate_and_keeps_the_mean():
  x = jnp.ones((64, 512))
  y = np.asarray(_dropout(0.25, x, 0))
  dropped = (y == 0).mean()
  assert abs(dropped - 0.25) < 0.01, dropped
  np.testing.assert_allclose(y[y != 0], 1 / 0.75, rtol=1e-6)  # inverted dropout.
  assert abs(y.mean() - 1.0) < 0.02
  np.testing.assert_array_equal(_dropout(0.25, x, 0), y)  # same key, same mask.
  assert not np.array_equal(_dropout(0.25, x, 1), y)
  np.testing.assert_array_equal(_dropout(0.25, x, 0, deterministic=True), x)
  np.testing.assert_array_equal(_dropout(0.0, x, 0), x)


def _decoder(**overrides):
  m = config_lib.model_config()
  m.update(variant='decoder', num_layers=2, d_model=32, num_heads=4, ffn_ratio=2.0,
           vocab_size=VOCAB, max_len=16, dropout_rate=0.1)
  m.update(overrides)
  return build_model(m)


def _loss_and_grads(model, params, tokens):
  def loss(p):
    logits = model.apply(p, tokens, deterministic=False, rngs={'dropout': jax.random.key(3)})
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])
  return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize('remat', ['full', 'dots'])
def test_remat_gives_the_same_loss_and_gradients(remat):
  tokens = jnp.asarray(np.random.default_rng(2).integers(1, VOCAB, (2, 12)), jnp.int32)
  plain = _decoder()
  params = plain.init(jax.random.key(0), tokens)
  loss, grads = _loss_and_grads(plain, params, tokens)
  loss_r, grads_r = _loss_and_grads(_decoder(remat=remat), params, tokens)
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_r), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_weights_path_and_fast_path_agree():
  """Asking for the attention weights (mutable intermediates) changes nothing else."""
  tokens = jnp.asarray(np.random.default_rng(4).integers(1, VOCAB, (2, 9)), jnp.int32)
  model = _decoder(dropout_rate=0.0)
  params = model.init(jax.random.key(1), tokens)
  with_weights, _ = model.apply(params, tokens, mutable=['intermediates'])
  np.testing.assert_allclose(model.apply(params, tokens), with_weights, rtol=1e-5, atol=1e-6)


def test_cudnn_falls_back_to_xla_off_gpu_and_says_why(caplog, monkeypatch):
  monkeypatch.setattr(layers, '_LOGGED', set())  # the reason is logged once per process.
  if jax.default_backend() == 'gpu':
    pytest.skip('this checks the fallback; on a GPU cuDNN runs (benchmarks/).')
  tokens = jnp.asarray(np.random.default_rng(5).integers(1, VOCAB, (2, 9)), jnp.int32)
  xla = _decoder(dropout_rate=0.0)
  params = xla.init(jax.random.key(2), tokens)
  with caplog.at_level(logging.WARNING):
    cudnn = _decoder(dropout_rate=0.0, attention_impl='cudnn').apply(params, tokens)
  np.testing.assert_allclose(cudnn, xla.apply(params, tokens), rtol=1e-6)
  assert 'attention_impl=cudnn: no GPU' in caplog.text


@pytest.mark.parametrize('packed', [False, True])
@pytest.mark.parametrize('weights', [False, True])
def test_cudnn_rows_without_a_mask_tensor_see_what_the_masked_rows_see(packed, weights):
  """Under cuDNN the Decoder gives unpacked (right-padded) rows no [b, 1, l, l]
  mask, only causality: every real token's logits are those of the masked XLA
  path, on a GPU (cuDNN's causal kernel) and off one (the causal mask built in
  MultiHeadAttention), with or without the attention weights asked for."""
  rng = np.random.default_rng(6)
  tokens = rng.integers(1, VOCAB, (3, 12)).astype(np.int32)
  lengths = np.array([12, 7, 3])
  tokens[np.arange(12)[None, :] >= lengths[:, None]] = 0  # right padding.
  kwargs = {}
  if packed:  # row 0 holds two examples, 5 + 7 tokens.
    segment_ids = (tokens > 0).astype(np.int32)
    segment_ids[0, 5:] = 2
    positions = np.where(np.arange(12) < 5, np.arange(12), np.arange(12) - 5)[None]
    kwargs = dict(segment_ids=jnp.asarray(segment_ids),
                  positions=jnp.asarray(np.broadcast_to(positions, tokens.shape)))
  dtype = 'bfloat16' if jax.default_backend() == 'gpu' else 'float32'
  xla = _decoder(dropout_rate=0.0, dtype=dtype)
  params = xla.init(jax.random.key(7), tokens)
  mutable = ['intermediates'] if weights else False
  run = lambda model: model.apply(params, jnp.asarray(tokens), mutable=mutable, **kwargs)
  expected = run(xla)
  got = run(_decoder(dropout_rate=0.0, dtype=dtype, attention_impl='cudnn'))
  if weights:
    expected, got = expected[0], got[0]
  real = tokens > 0
  tolerance = 2e-2 if dtype == 'bfloat16' else 1e-6
  np.testing.assert_allclose(np.asarray(got, np.float32)[real],
                             np.asarray(expected, np.float32)[real], rtol=tolerance,
                             atol=tolerance)


def test_unknown_attention_impl_and_remat_are_refused():
  for field, value in (('attention_impl', 'flash'), ('remat', 'some')):
    m = config_lib.model_config()
    m[field] = value
    with pytest.raises(config_lib.ConfigError, match=f'config.model.{field}'):
      config_lib.validate_model(m)
