"""--config.restore_checkpoint=average:N: eval, decode and export read the mean of the
last N checkpoints' weights (Vaswani et al. 2017, section 6.1), refused in one line
when fewer are kept; and a run without an EMA keeps its state as before and refuses
--config.restore_params=ema."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import TINY, load_config, override
from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import config as config_lib
from transformer_jax import evaluation
from transformer_jax import restore
from transformer_jax import trainer


@pytest.fixture(scope='module')
def three_checkpoints(tmp_path_factory):
  """6 steps, a checkpoint every 2: steps 2, 4 and 6 kept (config.keep_checkpoints=3)."""
  config = override(load_config(), {**TINY, 'checkpoint_every': 2, 'keep_checkpoints': 3})
  workdir = str(tmp_path_factory.mktemp('average'))
  trainer.train(config, workdir)
  return config, workdir


def test_averaging_three_checkpoints_equals_the_mean_of_their_parameters(three_checkpoints):
  config, workdir = three_checkpoints
  with checkpoint_lib.Checkpointer(workdir, config, writable=False) as checkpoints:
    assert sorted(checkpoints.all_steps()) == [2, 4, 6]
    each = [checkpoints.read_params(step) for step in (2, 4, 6)]
  run = restore.open_run(override(config, {'restore_checkpoint': 'average:3'}), workdir)
  assert run.step == 6 and run.weights == 'average:3 (steps 2, 4, 6)'
  mean = jax.tree.map(lambda *ps: np.mean(np.stack(ps).astype(np.float64), axis=0), *each)
  for got, want, last in zip(jax.tree.leaves(run.params), jax.tree.leaves(mean),
                             jax.tree.leaves(each[-1]), strict=True):
    assert got.dtype == last.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
  assert any(not np.allclose(g, l) for g, l in zip(jax.tree.leaves(run.params),
                                                   jax.tree.leaves(each[-1])))
  # The eval of the average says so in its record, beside the newest step's number.
  result = evaluation.evaluate_checkpoint(override(config, {'restore_checkpoint': 'average:2'}),
                                          workdir)
  assert result['step'] == 6 and result['weights'] == 'average:2 (steps 4, 6)'


def test_averaging_more_checkpoints_than_are_kept_is_refused_naming_the_field(
    three_checkpoints):
  config, workdir = three_checkpoints
  with pytest.raises(config_lib.ConfigError) as error:
    restore.open_run(override(config, {'restore_checkpoint': 'average:5'}), workdir)
  message = str(error.value)
  assert '\n' not in message
  assert 'holds 3 (steps 2, 4, 6)' in message
  assert 'config.keep_checkpoints=3' in message and '--config.keep_checkpoints=5' in message


def test_a_malformed_average_is_refused_in_one_line(tiny_config):
  for which in ('average:0', 'average:', 'average:x', 'mean:3'):
    with pytest.raises(config_lib.ConfigError, match='must be latest, best, a step number or '
                       r'average:N \(N >= 1\)'):
      config_lib.validate(tiny_config(restore_checkpoint=which))


def test_a_run_without_an_ema_saves_its_state_as_before_and_refuses_restore_params_ema(
    three_checkpoints):
  config, workdir = three_checkpoints
  path = os.path.join(workdir, 'checkpoints', '6', 'state')
  with ocp.StandardCheckpointer() as reader:
    tree = reader.metadata(path).item_metadata.tree
  assert sorted(tree['train_state']) == ['opt_state', 'params', 'step']
  with pytest.raises(config_lib.ConfigError) as error:
    restore.open_run(override(config, {'restore_params': 'ema'}), workdir)
  message = str(error.value)
  assert '\n' not in message and 'trained without an EMA' in message
  assert 'config.ema_decay' in message
