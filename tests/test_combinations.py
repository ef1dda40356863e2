"""Nothing the validator accepts may crash: every accepted combination of the
options that change the model's structure runs one train step and one cached
decoding pass (equal to the full forward pass).

The axes are read from config.py's lists of choices, so a new choice is tested
the day it is added. variant x position x norm x activation (x encoder head and
pooling for encoders) is enumerated in full; the remaining structural options
(tied embeddings, biases, dtype, rematerialisation, dropout on the attention
weights, unequal stack depths) rotate through the combinations, so each value
meets every variant. The attention kinds (full, local, linear) and the
key/value head counts (num_heads, multi-query) rotate on their own periods, 3
and 2, prime to the 8 extras, so each kind meets every extra and every variant;
local attention takes linear's place where attention dropout or the attention
soft-cap is on (linear has no weights to drop and no scores to cap; the validator
says so). The normalisation, logit-cap, initialisation and z-loss options ride on
the extras. Image input (the Vision Transformer: config.model.patch_size > 0, an
encoder classifier) is enumerated
over every position x image pooling ([CLS] or mean) x norm, with the same
rotations (the text-only extras left out); the text combinations leave out the
image-only choices (2-D sinusoids, [CLS] pooling).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import override
from transformer_jax import config as config_lib
from transformer_jax import decode
from transformer_jax import train
from transformer_jax.models.transformer import build_model

# (variant, encoder head) -> the task that trains it.
TASK_OF = {need: task for task, need in config_lib.TASKS.items()}
VOCAB, LENGTH, BATCH = 16, 6, 2

# The checkpoint-import options (GPT-2's and BERT's, hf.py) ride on these too; the
# tanh GELU is the one activation not enumerated in full (it is GELU's formula).
# The normalisation (norm_bias among them), logit and initialisation options (issue 26)
# and the z-loss ride on them as well.
EXTRAS = [
    {},
    {'model.share_embeddings': False, 'model.embedding_norm': True, 'model.norm_type': 'rmsnorm'},
    {'model.use_bias': False, 'model.scale_embeddings': False, 'model.token_types': 2,
     'model.qk_norm': True},
    {'model.dtype': 'bfloat16', 'model.head_transform': True, 'model.output_bias': True,
     'model.final_logit_softcap': 2.0, 'z_loss': 1e-4},
    {'model.remat': 'full', 'model.activation': 'gelu_tanh', 'model.pooler': True,
     'model.init': 'gpt2', 'model.norm_type': 'rmsnorm', 'model.qk_norm': True},
    {'model.remat': 'dots', 'model.attn_logit_softcap': 1.0, 'model.norm_bias': False},
    {'model.attention_dropout_rate': 0.1, 'model.attn_logit_softcap': 1.0},
    {'model.num_encoder_layers': 2, 'model.num_decoder_layers': 1},
]
ENUMERATED_ACTIVATIONS = tuple(a for a in config_lib.ACTIVATIONS if a != 'gelu_tanh')
# Options that have no meaning for image input (there is no vocabulary or text segment).
TEXT_ONLY = ('model.share_embeddings', 'model.scale_embeddings', 'model.token_types',
             'model.head_transform', 'model.output_bias')
IMAGE_POOLINGS = ('cls', 'mean')
# digits: 8x8 grey images in 10 classes, each cut into 4 patches of 4x4 pixels.
IMAGE = {'model.patch_size': 4, 'model.image_size': 8, 'model.num_channels': 1,
         'model.num_classes': 10, 'data.name': 'digits'}


@pytest.fixture(autouse=True, scope='module')
def _quick_compiles():
  """XLA's optimisation passes are most of the compile time of these tiny
  programs (2.7 s instead of 4.8 s a combination); the checks compare two
  computations compiled the same way."""
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', previous)


def _heads(variant):
  if variant != 'encoder':
    return [{}]
  return [{'model.encoder_head': 'mlm'}] + [
      {'model.encoder_head': 'classify', 'model.pooling': p} for p in config_lib.POOLINGS
      if p not in IMAGE_POOLINGS or p == 'mean']


def _combinations():
  combos = []
  for variant, position, norm, activation in itertools.product(
      config_lib.VARIANTS, config_lib.POSITIONS, config_lib.NORMS, ENUMERATED_ACTIVATIONS):
    if position in config_lib.IMAGE_POSITIONS:
      continue
    for head in _heads(variant):
      values = {'model.variant': variant, 'model.position': position, 'model.norm': norm,
                'model.activation': activation, **head,
                'data.task': TASK_OF[variant, head.get('model.encoder_head')]}
      if variant == 'seq2seq':
        values['data.name'] = 'cmudict'  # a dataset of source-target pairs.
      combos.append(values)
  for position, pooling, norm in itertools.product(config_lib.POSITIONS, IMAGE_POOLINGS,
                                                   config_lib.NORMS):
    combos.append({'model.variant': 'encoder', 'model.position': position, 'model.norm': norm,
                   'model.activation': 'gelu', 'model.encoder_head': 'classify',
                   'model.pooling': pooling, 'data.task': 'classify', **IMAGE})
  out = []
  for i, c in enumerate(combos):
    extras = EXTRAS[i % len(EXTRAS)]
    if c.get('model.patch_size'):
      extras = {k: v for k, v in extras.items() if k not in TEXT_ONLY}
    c = dict(c, **extras)
    kind = config_lib.ATTENTIONS[i % len(config_lib.ATTENTIONS)]
    if kind == 'linear' and (c.get('model.attention_dropout_rate') or
                             c.get('model.attn_logit_softcap')):
      kind = 'local'
    c['model.attention'] = kind
    if (i // len(config_lib.ATTENTIONS)) % 2:
      c['model.num_kv_heads'] = 1  # multi-query.
    if kind == 'local' and c['model.variant'] != 'decoder' and i % 4 == 1:
      c['model.global_tokens'] = 1
    out.append(c)
  return out


COMBINATIONS = _combinations()


def _config(values):
  c = config_lib.base_config()
  c.model.variant = values['model.variant']  # the task check reads it first.
  c = override(c, {'model.num_layers': 1, 'model.d_model': 8, 'model.num_heads': 2,
                   'model.vocab_size': VOCAB, 'model.max_len': 16, 'model.dropout_rate': 0.1,
                   'model.attention_window': 2, 'model.num_random_features': 8,
                   'seq_len': LENGTH, 'batch_size': BATCH, 'warmup_steps': 1,
                   'data.name': 'text', **values})  # text files serve every task.
  return c


def _batch(config, rng):
  shape = (BATCH, LENGTH)
  tokens = lambda: rng.integers(4, VOCAB, shape).astype(np.int32)
  batch = {'inputs': tokens(), 'targets': tokens(), 'weights': np.ones(shape, np.float32)}
  if config.data.task == 'classify':
    batch.update(targets=np.array([0, 1], np.int32), weights=np.ones(BATCH, np.float32))
  if config.model.patch_size:
    m = config.model
    batch['inputs'] = rng.random((BATCH, m.image_size, m.image_size, m.num_channels),
                                 np.float32)
  return batch


def _name(values):
  return '-'.join(str(v) for k, v in values.items()
                  if k != 'data.task' and k not in IMAGE or k == 'model.patch_size')


def test_every_combination_is_accepted_by_the_validator():
  for values in COMBINATIONS:
    config_lib.validate(_config(values))
  assert len(COMBINATIONS) == 120 + len(config_lib.POSITIONS) * 2 * 2  # text + image.
  assert len({_name(values) for values in COMBINATIONS}) == len(COMBINATIONS)


@pytest.mark.parametrize('values', COMBINATIONS, ids=_name)
def test_train_step_and_cached_decoding_run(values):
  config = _config(values)
  config_lib.validate(config)
  model = build_model(config.model)
  tx = train.create_optimizer(config, train.learning_rate_schedule(config))
  state = jax.jit(train.init_fn(config, model, tx))(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  step, _ = train.make_steps(config)
  new_state, metrics = jax.jit(step)(state, _batch(config, rng), jax.random.PRNGKey(1))
  assert np.isfinite(float(metrics['nll'])) and np.isfinite(float(metrics['grad_norm']))
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params)
  assert any(jax.tree.leaves(changed))

  variant = config.model.variant
  if variant == 'encoder':
    return  # nothing to decode.
  params = new_state.params
  tokens = jnp.asarray(rng.integers(4, VOCAB, (BATCH, LENGTH)), jnp.int32)
  tolerance = 2e-1 if config.model.dtype == 'bfloat16' else 1e-4  # bf16: 8 mantissa bits.
  if variant == 'decoder':
    full = model.apply({'params': params}, tokens)
    cached = decode.step_logits(model, params, tokens, prefill=3)
  else:
    sources = jnp.asarray(rng.integers(4, VOCAB, (BATCH, LENGTH)), jnp.int32)
    full = model.apply({'params': params}, sources, tokens)
    decoder_inputs = jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]
    cached = decode.step_logits(model, params, decoder_inputs, sources)
  np.testing.assert_allclose(np.asarray(cached, np.float32), np.asarray(full, np.float32),
                             atol=tolerance, rtol=tolerance)
