"""Properties the paper's model must have: causality, padding invariance, KV-cache
equivalence, permutation equivariance without positions, and retrievable attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import config as config_lib
from transformer_jax.models.transformer import build_model

VOCAB = 31


def model_config(variant, **overrides):
  m = config_lib.model_config()
  m.update(variant=variant, num_layers=2, d_model=32, num_heads=4, ffn_ratio=2.0,
           vocab_size=VOCAB, max_len=32, dropout_rate=0.0)
  m.update(overrides)
  return m


def random_tokens(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).integers(1, VOCAB, shape), jnp.int32)


@pytest.mark.parametrize('position', ['sinusoidal', 'learned', 'rotary'])
def test_decoder_is_causal(position):
  model = build_model(model_config('decoder', position=position, norm='pre'))
  tokens = random_tokens(0, (2, 12))
  params = model.init(jax.random.key(0), tokens)
  logits = model.apply(params, tokens)
  for t in (0, 5, 10):
    changed = tokens.at[:, t + 1:].set(random_tokens(t + 1, (2, 11 - t)))
    other = model.apply(params, changed)
    np.testing.assert_allclose(other[:, :t + 1], logits[:, :t + 1], atol=1e-6)
    assert not np.allclose(other[:, t + 1:], logits[:, t + 1:], atol=1e-3)


def test_seq2seq_decoder_is_causal_in_targets():
  model = build_model(model_config('seq2seq'))
  source, target = random_tokens(1, (2, 9)), random_tokens(2, (2, 8))
  params = model.init(jax.random.key(0), source, target)
  logits = model.apply(params, source, target)
  # Output t depends on targets < t (shifted right); changing targets >= t leaves it.
  changed = target.at[:, 4:].set(random_tokens(3, (2, 4)))
  other = model.apply(params, source, changed)
  np.testing.assert_allclose(other[:, :5], logits[:, :5], atol=1e-6)
  assert not np.allclose(other[:, 5:], logits[:, 5:], atol=1e-3)


@pytest.mark.parametrize('variant', ['encoder', 'decoder', 'seq2seq'])
def test_appending_padding_changes_nothing(variant):
  model = build_model(model_config(variant))
  tokens = random_tokens(4, (3, 7))
  padded = jnp.pad(tokens, ((0, 0), (0, 5)))  # pad_id 0 appended
  args = (tokens, random_tokens(5, (3, 6))) if variant == 'seq2seq' else (tokens,)
  params = model.init(jax.random.key(1), *args)
  logits = model.apply(params, *args)
  if variant == 'seq2seq':
    # Pad the source (the decoder attends to it) and the target.
    padded_target = jnp.pad(args[1], ((0, 0), (0, 3)))
    other = model.apply(params, padded, padded_target)[:, :6]
  else:
    other = model.apply(params, padded)[:, :7]
  np.testing.assert_allclose(other, logits, atol=1e-5)


def test_a_decoder_reads_its_pad_id_as_a_token_and_stays_causal():
  """GPT-2's padding id is its <|endoftext|>: where the text has one, a decoder-only
  model must attend to it (rows are right-padded, so no token need be padding)."""
  pad = 7
  model = build_model(model_config('decoder', pad_id=pad))
  tokens = random_tokens(8, (2, 10)).at[:, 0].set(pad).at[:, 4].set(pad)
  params = model.init(jax.random.key(0), tokens)
  logits = model.apply(params, tokens)
  explicit = model.apply(params, tokens, jnp.ones_like(tokens))  # every token real.
  np.testing.assert_allclose(logits, explicit, atol=1e-6)
  changed = model.apply(params, tokens.at[:, 4].set(pad + 1))
  np.testing.assert_allclose(changed[:, :4], logits[:, :4], atol=1e-6)  # causal.
  assert not np.allclose(changed[:, 4:], logits[:, 4:], atol=1e-3)  # the pad id was read.


def test_classifier_ignores_padding():
  model = build_model(model_config('encoder', encoder_head='classify', num_classes=3))
  tokens = random_tokens(6, (2, 7))
  params = model.init(jax.random.key(2), tokens)
  logits = model.apply(params, tokens)
  assert logits.shape == (2, 3)
  np.testing.assert_allclose(model.apply(params, jnp.pad(tokens, ((0, 0), (0, 4)))), logits,
                             atol=1e-5)


@pytest.mark.parametrize('position', ['sinusoidal', 'learned', 'rotary'])
@pytest.mark.parametrize('chunks', [[1] * 10, [4, 1, 1, 3, 1]])
def test_decoder_cache_equals_full_forward(position, chunks):
  """Prefill and step-by-step decoding on the KV cache give the full pass's logits."""
  model = build_model(model_config('decoder', position=position))
  tokens = random_tokens(7, (2, 10))
  params = model.init(jax.random.key(3), tokens)
  full = model.apply(params, tokens)
  cache = model.init(jax.random.key(0), jnp.ones((2, 16), jnp.int32), decode=True)['cache']
  start, steps = 0, []
  for n in chunks:
    out, variables = model.apply({**params, 'cache': cache}, tokens[:, start:start + n],
                                 decode=True, mutable=['cache'])
    cache = variables['cache']
    steps.append(out)
    start += n
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)


def test_seq2seq_cache_equals_full_forward():
  model = build_model(model_config('seq2seq'))
  source = jnp.pad(random_tokens(8, (2, 7)), ((0, 0), (0, 2)))  # padded source
  target = random_tokens(9, (2, 6))
  params = model.init(jax.random.key(4), source, target)
  full = model.apply(params, source, target)

  encoded = model.apply(params, source, method='encode')
  source_segments = (source != 0).astype(jnp.int32)
  cache = model.init(jax.random.key(0), source, jnp.ones((2, 8), jnp.int32),
                     method=lambda m, s, d: m.decode(m.encode(s), (s != 0).astype(jnp.int32), d,
                                                     decode=True))['cache']
  decoder_inputs = jnp.pad(target, ((0, 0), (1, 0)))[:, :-1]
  steps = []
  for i in range(6):
    out, variables = model.apply({**params, 'cache': cache}, encoded, source_segments,
                                 decoder_inputs[:, i:i + 1], decode=True, method='decode',
                                 mutable=['cache'])
    cache = variables['cache']
    steps.append(out)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)


def test_self_attention_without_positions_is_permutation_equivariant():
  model = build_model(model_config('encoder', position='none'))
  tokens = random_tokens(10, (2, 9))
  params = model.init(jax.random.key(5), tokens)
  perm = np.random.default_rng(0).permutation(9)
  logits = model.apply(params, tokens)
  np.testing.assert_allclose(model.apply(params, tokens[:, perm]), logits[:, perm], atol=1e-5)
  # With positions the same permutation changes the outputs.
  positional = build_model(model_config('encoder'))
  assert not np.allclose(positional.apply(params, tokens[:, perm]),
                         positional.apply(params, tokens)[:, perm], atol=1e-3)


def test_attention_weights_are_retrievable():
  model = build_model(model_config('seq2seq'))
  source = jnp.pad(random_tokens(11, (2, 5)), ((0, 0), (0, 2)))
  target = random_tokens(12, (2, 4))
  params = model.init(jax.random.key(6), source, target)
  _, state = model.apply(params, source, target, mutable=['intermediates'])
  cross = state['intermediates']['decoder']['layer_1']['cross_attention']['attention_weights'][0]
  assert cross.shape == (2, 4, 4, 7)  # [batch, heads, target, source]
  np.testing.assert_allclose(cross.sum(-1), 1.0, atol=1e-5)
  assert float(jnp.abs(cross[..., 5:]).max()) < 1e-6  # padding in the source gets no weight.
  causal = state['intermediates']['decoder']['layer_0']['self_attention']['attention_weights'][0]
  assert float(jnp.abs(jnp.triu(causal[0, 0], k=1)).max()) < 1e-6


def test_packed_segments_do_not_attend_to_each_other():
  """Two examples packed in one row give the logits each gives alone."""
  model = build_model(model_config('decoder'))
  a, b = random_tokens(13, (1, 5)), random_tokens(14, (1, 4))
  params = model.init(jax.random.key(7), a)
  packed = jnp.concatenate([a, b, jnp.zeros((1, 3), jnp.int32)], axis=1)
  segments = jnp.array([[1] * 5 + [2] * 4 + [0] * 3])
  positions = jnp.array([list(range(5)) + list(range(4)) + [0] * 3])
  logits = model.apply(params, packed, segments, positions)
  np.testing.assert_allclose(logits[:, :5], model.apply(params, a), atol=1e-5)
  np.testing.assert_allclose(logits[:, 5:9], model.apply(params, b), atol=1e-5)
