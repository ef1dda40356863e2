"""Sliding-window (strided) perplexity of a token stream's causal LM (config.eval_stride),
and evals at a longer context than the run trained at."""

import jax
import numpy as np
import pytest

from conftest import TINY, load_config, override
from transformer_jax import config as config_lib
from transformer_jax import evaluation
from transformer_jax import trainer
from transformer_jax.data import batching
from transformer_jax.models.transformer import build_model


def test_a_stride_of_seq_len_is_the_non_overlapping_windows():
  tokens = np.arange(1, 103, dtype=np.int32)  # 101 targets: 4 windows of 32, the last padded.
  for stride in (0, 32):
    rows = batching.stream_eval_rows(tokens, 32, stride=stride)
    padded = np.zeros(4 * 32 + 1, np.int32)
    padded[:len(tokens)] = tokens
    np.testing.assert_array_equal(rows['inputs'], padded[:-1].reshape(4, 32))
    np.testing.assert_array_equal(rows['targets'], padded[1:].reshape(4, 32))
    np.testing.assert_array_equal(rows['weights'].reshape(-1), np.arange(128) < 101)


@pytest.mark.parametrize('stride', [1, 5, 16, 31])
def test_each_target_is_scored_once_after_the_context_of_its_window(stride):
  tokens = np.arange(1, 103, dtype=np.int32)
  rows = batching.stream_eval_rows(tokens, 32, stride=stride)
  scored = rows['targets'][rows['weights'] > 0]
  np.testing.assert_array_equal(scored, tokens[1:])  # each once, in order.
  np.testing.assert_array_equal(rows['inputs'][:, 1:], rows['targets'][:, :-1])
  # Past the first window, only the last `stride` positions score: each after 32 - stride
  # tokens of context at least.
  assert not rows['weights'][1:, :32 - stride].any()
  assert rows['weights'][0].all()


def test_eval_stride_is_checked():
  config = override(load_config(), TINY)
  config.eval_stride = 33
  with pytest.raises(config_lib.ConfigError, match='eval_stride=33 must be at most'):
    config_lib.validate(config)
  config.eval_stride = 8
  config.data.task = 'mlm'
  config.model.variant = 'encoder'
  with pytest.raises(config_lib.ConfigError, match='causal LM'):
    config_lib.validate(config)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('stride'))
  config = override(load_config(), {**TINY, 'total_steps': 150, 'log_every': 150, 'batch_size': 32,
                                    'checkpoint_every': 150, 'eval_every': 150})
  trainer.train(config, workdir)
  return config, workdir


def test_a_stride_below_seq_len_scores_the_targets_in_other_windows(trained):
  """Which windows each target is scored in: the rows' tests above. Here, that the eval
  reads them. Whether more context lowers the loss is the model's business, not the
  code's: this 150-step model scored 2.9663 at stride 32, 2.9688 at 16 and 2.9739 at 4
  on one CPU, lower to higher on another, so no order is asserted."""
  config, workdir = trained
  losses = {}
  for stride in (0, 32, 16, 4):
    c = override(config, {'eval_stride': stride, 'eval_steps': 0, 'batch_size': 512})
    result = evaluation.evaluate_checkpoint(c, workdir)
    losses[stride] = result['loss']
    assert result.get('eval_stride') == (stride if 0 < stride < 32 else None)
  assert losses[32] == losses[0]  # the same windows.
  assert len({losses[32], losses[16], losses[4]}) == 3  # other windows, another measure.


@pytest.mark.parametrize('position', ['sinusoidal', 'rotary'])
def test_eval_at_a_longer_context_than_training_is_recorded_with_it(tmp_path, position):
  workdir = str(tmp_path / position)
  config = override(load_config(), {**TINY, 'model.position': position, 'model.max_len': 32,
                                    'total_steps': 3, 'checkpoint_every': 3, 'eval_every': 3})
  trainer.train(config, workdir)
  longer = override(config, {'seq_len': 128})  # 4 times the sinusoidal table's rows.
  result = evaluation.evaluate_checkpoint(longer, workdir)
  assert np.isfinite(result['loss'])
  assert result['eval_overrides'] == {'seq_len': 128}
  assert result['loss'] != evaluation.evaluate_checkpoint(config, workdir)['loss']


def test_the_sinusoids_past_the_table_leave_the_positions_within_it_unchanged():
  config = override(load_config(), {**TINY, 'model.max_len': 32})
  model = build_model(config.model)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 96), 4, config.model.vocab_size)
  params = model.init(jax.random.PRNGKey(1), tokens[:, :32])['params']
  within = model.apply({'params': params}, tokens[:, :32])
  longer = model.apply({'params': params}, tokens)  # a causal decoder: the first 32 see the same.
  np.testing.assert_allclose(longer[:, :32], within, rtol=1e-5, atol=1e-5)
  assert np.isfinite(longer).all()


def test_eval_past_a_learned_positional_table_is_refused(tmp_path):
  config = override(load_config(), {**TINY, 'model.position': 'learned', 'model.max_len': 32,
                                    'seq_len': 64})
  with pytest.raises(config_lib.ConfigError,
                     match=r'learned positional table \(config.model.max_len=32 rows\)'):
    evaluation.evaluate_checkpoint(config, str(tmp_path))
