"""The normalisation, logit, initialisation, weight-decay and schedule options
(issue 26): each against a float64 reference of its formula, its shape or the
behaviour it exists for; that the defaults are the paper's model is the bitwise
check of every other test and of the default experiment."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import override
from transformer_jax import config as config_lib
from transformer_jax import train
from transformer_jax.models import accounting, layers
from transformer_jax.models import attention as attention_lib
from transformer_jax.models.transformer import build_model


def _numpy_softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def _tiny_model(**overrides):
  m = config_lib.model_config()
  m.update({'variant': 'decoder', 'num_layers': 2, 'd_model': 16, 'num_heads': 2,
            'vocab_size': 13, 'max_len': 16, 'dropout_rate': 0.0, 'norm': 'pre', **overrides})
  return build_model(m)


def _init(model, length=8):
  return model.init(jax.random.key(0), jnp.ones((2, length), jnp.int32))['params']


# --- Normalisation and logits. -------------------------------------------------


def test_rmsnorm_is_the_papers_formula():
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, (3, 5, 16))
  scale = rng.normal(1.0, 0.5, 16)
  norm = layers.RMSNorm(epsilon=1e-6)
  out = norm.apply({'params': {'scale': jnp.asarray(scale, jnp.float32)}},
                   jnp.asarray(x, jnp.float32))
  expected = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * scale
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  # Unlike LayerNorm it does not re-centre: a constant row keeps its sign and scale.
  np.testing.assert_allclose(norm.apply({'params': {'scale': jnp.ones(4)}}, jnp.full((4,), -2.0)),
                             -np.ones(4), rtol=1e-5)


def test_rmsnorm_replaces_every_layernorm_and_drops_its_bias():
  params = _init(_tiny_model(norm_type='rmsnorm', embedding_norm=True))
  flat = config_lib.flatten(params, '/')
  norms = [k for k in flat if k.endswith('norm/scale')]
  # 2 AddNorms per layer x 2 layers, the final norm and the embedding norm.
  assert len(norms) == 6 and not [k for k in flat if 'norm/bias' in k]
  base = _tiny_model(embedding_norm=True)
  assert accounting.count_params(base.cfg) - accounting.count_params(
      base.cfg.replace(norm_type='rmsnorm')) == 6 * 16


def test_layernorm_without_bias_is_the_formula_without_beta():
  rng = np.random.default_rng(3)
  x = rng.normal(2.0, 3.0, (3, 5, 16))
  scale = rng.normal(1.0, 0.5, 16)
  cfg = _tiny_model(norm_bias=False, layer_norm_epsilon=1e-5).cfg
  norm = layers.norm_layer(cfg, 'norm')
  out = norm.apply({'params': {'scale': jnp.asarray(scale, jnp.float32)}},
                   jnp.asarray(x, jnp.float32))
  centred = x - x.mean(-1, keepdims=True)
  expected = centred / np.sqrt((centred**2).mean(-1, keepdims=True) + 1e-5) * scale
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  # The model's every LayerNorm loses its bias and keeps its scale; nothing else changes.
  params = _init(_tiny_model(norm_bias=False, embedding_norm=True, qk_norm=True))
  flat = config_lib.flatten(params, '/')
  assert len([k for k in flat if k.endswith('norm/scale')]) == 10  # 6 as above, 4 QK-norms.
  assert not [k for k in flat if 'norm/bias' in k] and [k for k in flat if k.endswith('/bias')]
  base = _tiny_model(embedding_norm=True, qk_norm=True).cfg
  assert accounting.count_params(base) - accounting.count_params(
      base.replace(norm_bias=False)) == 6 * 16 + 4 * 8


def test_soft_cap_is_cap_tanh_of_logits_over_cap():
  x = np.linspace(-200.0, 200.0, 41)
  np.testing.assert_allclose(attention_lib.soft_cap(jnp.asarray(x, jnp.float32), 30.0),
                             30.0 * np.tanh(x / 30.0), rtol=1e-6, atol=1e-5)
  np.testing.assert_array_equal(attention_lib.soft_cap(jnp.asarray(x), 0.0), x)  # 0 = off.


def test_capped_attention_equals_a_float64_reference():
  rng = np.random.default_rng(1)
  q, k, v = (rng.normal(0, 3.0, (2, 5, 2, 8)) for _ in range(3))
  mask = np.tril(np.ones((5, 5), bool))[None, None]
  scores = np.einsum('blhk,bshk->bhls', q, k) / np.sqrt(8)
  capped = 2.0 * np.tanh(scores / 2.0)
  expected = np.einsum('bhls,bshk->blhk', _numpy_softmax(np.where(mask, capped, -1e9)), v)
  as32 = lambda x: jnp.asarray(x, jnp.float32)
  out, _ = attention_lib.scaled_dot_product_attention(as32(q), as32(k), as32(v), mask,
                                                      softcap=2.0)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
  uncapped, _ = attention_lib.scaled_dot_product_attention(as32(q), as32(k), as32(v), mask)
  assert np.abs(np.asarray(uncapped) - expected).max() > 1e-2  # the cap bites here.
  # Local attention caps the same scores: a window as long as the row is full attention.
  local = attention_lib.sliding_window_attention(as32(q), as32(k), as32(v),
                                                 jnp.ones((2, 5), jnp.int32), 5, True,
                                                 softcap=2.0)
  np.testing.assert_allclose(local, expected, rtol=1e-4, atol=1e-5)


def test_final_logit_softcap_caps_the_models_logits():
  tokens = jnp.asarray(np.random.default_rng(2).integers(1, 13, (2, 8)), jnp.int32)
  model = _tiny_model(init='gpt2')
  params = _init(model)
  params['embedding']['embedding'] = params['embedding']['embedding'] * 300.0  # big logits.
  plain = np.asarray(model.apply({'params': params}, tokens), np.float64)
  capped = build_model(model.cfg.replace(final_logit_softcap=5.0)).apply({'params': params},
                                                                          tokens)
  assert np.abs(plain).max() > 50
  np.testing.assert_allclose(capped, 5.0 * np.tanh(plain / 5.0), rtol=1e-5, atol=1e-5)


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
  """Normalised queries and keys do not change when W^Q and W^K (and their biases)
  are scaled; without QK-norm the scores grow with them."""
  tokens = jnp.asarray(np.random.default_rng(3).integers(1, 13, (2, 8)), jnp.int32)
  for qk_norm in (True, False):
    model = _tiny_model(qk_norm=qk_norm)
    params = _init(model)
    scaled = jax.tree_util.tree_map_with_path(
        lambda path, p: p * 8.0 if any(getattr(e, 'key', None) in ('query', 'key')
                                       for e in path) else p, params)
    a, b = (model.apply({'params': p}, tokens) for p in (params, scaled))
    if qk_norm:
      assert 'query_norm' in params['decoder']['layer_0']['self_attention']
      np.testing.assert_allclose(a, b, atol=1e-4)
    else:
      assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-2


def test_z_loss_and_its_gradient_are_the_formulas():
  """z_loss * log(Z)^2 per weighted target; its gradient, 2 z log(Z) softmax, against
  the float64 closed form (and the reported nll stays the plain one)."""
  rng = np.random.default_rng(4)
  logits = rng.normal(0, 4.0, (3, 4, 7)) + 5.0  # log Z far from 0.
  targets = rng.integers(0, 7, (3, 4))
  weights = (rng.random((3, 4)) < 0.7).astype(np.float64)
  z = 1e-2
  fn = lambda x: train.cross_entropy(x, jnp.asarray(targets), jnp.asarray(weights, jnp.float32),
                                     z_loss=z)
  (objective, sums), grad = jax.value_and_grad(fn, has_aux=True)(
      jnp.asarray(logits, jnp.float32))
  log_z = np.log(np.exp(logits).sum(-1))
  nll = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(objective, ((nll + z * log_z**2) * weights).sum(), rtol=1e-5)
  np.testing.assert_allclose(sums['nll'], (nll * weights).sum(), rtol=1e-5)
  p = _numpy_softmax(logits)
  expected = weights[..., None] * (p - np.eye(7)[targets] + 2 * z * log_z[..., None] * p)
  np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_the_options_add_no_flops():
  base = _tiny_model().cfg
  for change in (dict(norm_type='rmsnorm'), dict(norm_bias=False), dict(qk_norm=True),
                 dict(attn_logit_softcap=50.0), dict(final_logit_softcap=30.0),
                 dict(init='gpt2')):
    assert accounting.flops_per_token(base.replace(**change), 8) == accounting.flops_per_token(
        base, 8)
  described = accounting.describe(base.replace(qk_norm=True, norm_type='rmsnorm'), 8)
  assert described['qk_norm'] is True and described['norm_type'] == 'rmsnorm'
  assert accounting.describe(base.replace(norm_bias=False), 8)['norm_bias'] is False


@pytest.mark.parametrize('overrides,message', [
    ({'model.norm_type': 'batchnorm'}, 'config.model.norm_type'),
    ({'model.norm_type': 'rmsnorm', 'model.norm_bias': False},
     'norm_type=rmsnorm has none; leave norm_bias at True'),
    ({'model.init': 'xavier'}, 'config.model.init'),
    ({'model.attn_logit_softcap': -1.0}, 'config.model.attn_logit_softcap=-1.0 must be >= 0'),
    ({'model.attention': 'linear', 'model.attn_logit_softcap': 50.0},
     'attention=linear never forms the attention scores'),
    ({'z_loss': -1e-4}, 'config.z_loss=-0.0001 must be >= 0'),
    ({'optimizer.decay': 'biases'}, 'config.optimizer.decay'),
    ({'optimizer.schedule': 'wsd', 'optimizer.wsd_decay_fraction': 0.0},
     'wsd_decay_fraction=0.0 must be in (0, 1]'),
    ({'optimizer.schedule': 'wsd', 'warmup_steps': 1900}, 'runs into the wsd decay'),
    ({'optimizer.schedule_steps': 100}, 'schedule=rsqrt has none'),
])
def test_bad_values_fail_in_one_line_naming_the_field(char_config, overrides, message):
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(override(char_config, overrides))
  assert message in str(e.value) and '\n' not in str(e.value)


# --- Initialisation and weight decay. -----------------------------------------


def test_gpt2_init_draws_matrices_at_002_and_residual_projections_smaller():
  model = _tiny_model(num_layers=4, d_model=64, num_heads=4, init='gpt2')
  params = config_lib.flatten(_init(model), '/')
  std = lambda name: float(np.std(params[name]))
  residual = 0.02 / np.sqrt(2 * 4)  # 2 residual sublayers per layer, 4 layers.
  for name, expected in (('embedding/embedding', 0.02),
                         ('decoder/layer_1/self_attention/query/kernel', 0.02),
                         ('decoder/layer_1/feed_forward/expand/kernel', 0.02),
                         ('decoder/layer_1/self_attention/out/kernel', residual),
                         ('decoder/layer_1/feed_forward/compress/kernel', residual)):
    assert abs(std(name) - expected) < 0.1 * expected, name
  paper = config_lib.flatten(_init(build_model(model.cfg.replace(init='paper'))), '/')
  assert abs(np.std(paper['embedding/embedding']) - 64**-0.5) < 0.1 * 64**-0.5
  expand = paper['decoder/layer_1/feed_forward/expand/kernel']  # LeCun: 1 / fan_in.
  assert abs(np.std(expand) - 64**-0.5) < 0.1 * 64**-0.5


def _adamw(char_config, decay):
  config = override(char_config, {'optimizer.name': 'adamw', 'optimizer.weight_decay': 0.5,
                                   'optimizer.decay': decay, 'optimizer.schedule': 'constant',
                                   'learning_rate': 0.1, 'warmup_steps': 0})
  return train.create_optimizer(config, train.learning_rate_schedule(config))


@pytest.mark.parametrize('decay', ['matrices', 'all'])
def test_weight_decay_shrinks_the_parameters_its_mask_names(char_config, decay):
  params = {'dense': {'kernel': jnp.ones((3, 4)), 'bias': jnp.ones(4)},
            'norm': {'scale': jnp.ones(4)}, 'embedding': jnp.ones((5, 3))}
  tx = _adamw(char_config, decay)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  shrunk = {k: bool(np.all(np.asarray(v) < 0)) for k, v in config_lib.flatten(updates, '/').items()}
  kept = {k: bool(np.all(np.asarray(v) == 0)) for k, v in config_lib.flatten(updates, '/').items()}
  for name in ('dense/kernel', 'embedding'):
    assert shrunk[name]
  for name in ('dense/bias', 'norm/scale'):
    assert shrunk[name] if decay == 'all' else kept[name]


def test_the_decay_mask_leaves_the_optimiser_state_alike(char_config):
  """So config.optimizer.decay may change on resume (it is tunable)."""
  params = {'kernel': jnp.ones((3, 4)), 'bias': jnp.ones(4)}
  states = [_adamw(char_config, d).init(params) for d in ('matrices', 'all')]
  assert jax.tree.structure(states[0]) == jax.tree.structure(states[1])
  assert 'optimizer.decay' in config_lib.TUNABLE_FIELDS


# --- Schedules. -----------------------------------------------------------------


def _schedule(char_config, **values):
  config = override(char_config, {'learning_rate': 1e-3, 'warmup_steps': 10,
                                  'total_steps': 110, 'optimizer.end_learning_rate': 1e-4,
                                  **{k.replace('__', '.'): v for k, v in values.items()}})
  config_lib.validate(config)
  lr = train.learning_rate_schedule(config)
  return np.array([float(lr(c)) for c in range(140)])


def test_wsd_warms_up_holds_then_decays_linearly_over_its_fraction(char_config):
  lr = _schedule(char_config, optimizer__schedule='wsd', optimizer__wsd_decay_fraction=0.2)
  np.testing.assert_allclose(lr[:10], 1e-3 * np.arange(1, 11) / 10, rtol=1e-6)  # warmup.
  np.testing.assert_allclose(lr[9:88], 1e-3, rtol=1e-6)  # stable until 110 - 22 = 88.
  np.testing.assert_allclose(lr[88:110], 1e-3 - 9e-4 * np.arange(22) / 22, rtol=1e-5)  # linear.
  assert lr[109] > 1e-4  # the last update still decays ...
  np.testing.assert_allclose(lr[110:], 1e-4, rtol=1e-6)  # ... and E is reached after it.


def test_linear_and_cosine_reach_the_end_rate_after_the_last_update(char_config):
  linear = _schedule(char_config, optimizer__schedule='linear')
  np.testing.assert_allclose(linear[10:110], 1e-3 - 9e-4 * np.arange(100) / 100, rtol=1e-5)
  cosine = _schedule(char_config, optimizer__schedule='cosine',
                     optimizer__end_learning_rate=0.0)
  np.testing.assert_allclose(cosine[60], 5e-4, rtol=1e-5)  # half way.
  assert np.all(cosine[:110] > 0) and np.all(cosine[110:] == 0)  # no update trains at 0.


def test_schedule_steps_fixes_the_schedule_whatever_the_run_length(char_config):
  """A run extended past its schedule trains on at the end rate; a run whose
  schedule follows total_steps (0) stretches it (wsd: the stable phase goes on)."""
  fixed = [_schedule(char_config, optimizer__schedule=s, optimizer__schedule_steps=110,
                     total_steps=n) for s in ('cosine', 'wsd') for n in (110, 300)]
  np.testing.assert_array_equal(fixed[0], fixed[1])
  np.testing.assert_array_equal(fixed[2], fixed[3])
  stretched = _schedule(char_config, optimizer__schedule='wsd', total_steps=300)
  np.testing.assert_allclose(stretched[9:140], 1e-3, rtol=1e-6)  # decay starts at 240.
  assert {'optimizer.schedule_steps', 'optimizer.wsd_decay_fraction', 'z_loss'} <= (
      config_lib.TUNABLE_FIELDS)
