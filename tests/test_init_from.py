"""config.init_from: pretrain a masked LM, start a classifier from it; picking a checkpoint."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config, override
from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import config as config_lib
from transformer_jax import init_from
from transformer_jax import params as params_lib
from transformer_jax import trainer

SMALL = {'model.num_layers': 1, 'model.d_model': 32, 'model.num_heads': 2, 'seq_len': 32,
         'model.max_len': 32, 'batch_size': 4, 'warmup_steps': 2, 'log_every': 2,
         'eval_steps': 1, 'num_samples': 0}


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """A masked LM, 4 steps, checkpoints (with eval losses) at 2 and 4."""
  config = override(load_config('shakespeare_mlm:quick'),
                    {**SMALL, 'total_steps': 4, 'eval_every': 2, 'checkpoint_every': 2})
  workdir = str(tmp_path_factory.mktemp('mlm'))
  trainer.train(config, workdir)
  return workdir


def _params(workdir, step):
  with checkpoint_lib.Checkpointer(workdir, config_lib.base_config(), writable=False) as c:
    return c.read_params(step)


def test_a_classifier_starts_from_the_masked_lm(pretrained, tmp_path, capsys):
  config = override(load_config('shakespeare_genre:quick'),
                    {**SMALL, 'total_steps': 1, 'eval_every': 1, 'checkpoint_every': 1,
                     'init_from': f'{pretrained}:2'})
  capsys.readouterr()
  with trainer.setup(config, str(tmp_path / 'cls')) as run:
    params = jax.device_get(run.strategy.one_copy(run.state).params)
    step = run.step
  out = capsys.readouterr().out
  line = [l for l in out.splitlines() if l.startswith('Initialised from')]
  assert len(line) == 1 and f'{pretrained} step 2:' in line[0]
  assert 'new, initialised fresh: classifier/bias, classifier/kernel' in line[0]
  assert step == 0  # the step and the optimizer state start fresh.
  source = _params(pretrained, 2)
  flat_source = config_lib.flatten(source, '/')
  flat_new = config_lib.flatten(params, '/')
  loaded = [n for n in flat_new if n in flat_source]
  assert len(loaded) == len(flat_new) - 2 and 'embedding/embedding' in loaded
  for name in loaded:
    np.testing.assert_array_equal(flat_new[name], flat_source[name])
  # The run took the source's vocabulary.
  assert (open(os.path.join(pretrained, 'tokenizer', 'tokenizer.json')).read()
          == open(tmp_path / 'cls' / 'tokenizer' / 'tokenizer.json').read())


def test_merge_reports_new_and_dropped_and_refuses_other_shapes():
  fresh = {'encoder': {'w': np.zeros((2, 3))}, 'classifier': {'kernel': np.ones(3)}}
  loaded = {'encoder': {'w': np.full((2, 3), 7.0)}, 'mlm_head': {'bias': np.ones(5)}}
  merged, report = params_lib.merge(fresh, loaded, 'runs/mlm')
  np.testing.assert_array_equal(merged['encoder']['w'], 7.0)
  np.testing.assert_array_equal(merged['classifier']['kernel'], 1.0)
  assert report == ('1 arrays loaded (6 parameters); new, initialised fresh: classifier/kernel; '
                    'dropped: mlm_head/bias')
  with pytest.raises(config_lib.ConfigError, match=r'encoder/w \(source \(2, 4\), model \(2, 3\)\)'):
    params_lib.merge(fresh, {'encoder': {'w': np.zeros((2, 4))}}, 'runs/mlm')
  with pytest.raises(config_lib.ConfigError, match='none of its parameter names'):
    params_lib.merge(fresh, {'other': {'w': np.zeros(1)}}, 'runs/mlm')


def test_parse():
  assert init_from.parse('runs/mlm') == ('runs/mlm', 'best')
  assert init_from.parse('runs/mlm:latest') == ('runs/mlm', 'latest')
  assert init_from.parse('runs/mlm:1500') == ('runs/mlm', 1500)


def test_a_source_that_is_not_a_run_is_one_line(tmp_path):
  config = override(load_config('shakespeare_genre:quick'),
                    {**SMALL, 'total_steps': 1, 'init_from': str(tmp_path / 'nothing')})
  with pytest.raises(FileNotFoundError, match='is not a run directory with checkpoints'):
    trainer.train(config, str(tmp_path / 'cls'))


def test_select_latest_best_or_a_step_and_best_survives_a_restart(tmp_path, char_config):
  config = override(char_config, {'keep_checkpoints': 2, 'keep_best_checkpoints': 1,
                                  'async_checkpointing': False})
  state, rng = {'w': jnp.arange(3.0)}, jax.random.PRNGKey(0)
  with checkpoint_lib.Checkpointer(str(tmp_path), config) as checkpointer:
    for step, loss in ((2, 1.0), (4, 3.0), (6, 2.0)):
      checkpointer.save(step, state, rng, eval_metrics={'loss': loss})
  with checkpoint_lib.Checkpointer(str(tmp_path), config) as checkpointer:
    checkpointer.save(7, state, rng)  # a restart: the best (step 2) must still be known.
    checkpointer.wait()
    assert checkpointer.all_steps() == [2, 6, 7]
    assert checkpointer.select('best') == 2 and checkpointer.select('latest') == 7
    assert checkpointer.select(6) == 6
    with pytest.raises(FileNotFoundError, match=r'no checkpoint at step 5; it holds steps \[2, 6, 7\]'):
      checkpointer.select(5)


def test_eval_reads_the_checkpoint_it_is_told(pretrained):
  from transformer_jax import evaluation  # pylint: disable=g-import-not-at-top
  from transformer_jax import run_log  # pylint: disable=g-import-not-at-top
  config = override(load_config('shakespeare_mlm:quick'), {**SMALL, 'total_steps': 4})
  best = min(run_log.read_jsonl(pretrained, 'eval'), key=lambda r: r['loss'])['step']
  for which, step in (('latest', 4), ('2', 2), ('best', best)):
    result = evaluation.evaluate_checkpoint(override(config, {'restore_checkpoint': which}),
                                            pretrained)
    assert result['step'] == step
  with pytest.raises(FileNotFoundError, match='no checkpoint at step 3'):
    evaluation.evaluate_checkpoint(override(config, {'restore_checkpoint': '3'}), pretrained)
