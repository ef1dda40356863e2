"""Checkpoints: exact resume, retention, refusal of a different config, NaN stops,
SIGTERM and kill -9 (the last two in real subprocesses)."""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPOSITORY, TINY, override, override_flags
from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import config as config_lib
from transformer_jax import run_log
from transformer_jax import evaluation
from transformer_jax import trainer


def _saved_state(workdir, step):
  """The 'state' item of a checkpoint as numpy arrays (no target needed)."""
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  return ocp.StandardCheckpointer().restore(path)


def _data_position(workdir, step):
  path = os.path.join(workdir, 'checkpoints', str(step), 'data', 'process_0-of-1.json')
  with open(path) as f:
    return json.load(f)


def _losses(workdir):
  keys = ('step', 'loss', 'accuracy', 'grad_norm', 'learning_rate')
  return [tuple(r[k] for k in keys) for r in run_log.read_jsonl(workdir, 'train')]


def _assert_same_state(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  """6 steps (checkpoints at 3 and 6) in one go, dropout on, mesh strategy."""
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  config = override(load_config(), {**TINY, 'parallelism': 'mesh'})
  workdir = str(tmp_path_factory.mktemp('straight'))
  trainer.train(config, workdir)
  return config, workdir


def test_resume_is_exact(straight_run, tmp_path):
  """K=3 steps, a new train() call to 2K=6: identical parameters, optimizer state,
  dropout key, data position and logged losses, bitwise. The first part runs
  under pmap, the rest under mesh: one device is the same computation in both."""
  config, straight = straight_run
  resumed = str(tmp_path / 'resumed')
  trainer.train(override(config, {'total_steps': 3, 'parallelism': 'pmap'}), resumed)
  trainer.train(config, resumed)
  _assert_same_state(_saved_state(straight, 6), _saved_state(resumed, 6))
  assert _data_position(straight, 6) == _data_position(resumed, 6)
  # Loss, accuracy and rate bitwise; the logged grad norm is reduced by another
  # program under pmap than under mesh (steps 1-3), so it agrees to rounding.
  exact = lambda records: [r[:3] + r[4:] for r in records]
  assert exact(_losses(straight)) == exact(_losses(resumed))
  np.testing.assert_allclose([r[3] for r in _losses(straight)],
                             [r[3] for r in _losses(resumed)], rtol=1e-6)
  assert [r[0] for r in _losses(resumed)] == [1, 2, 3, 4, 5, 6]

  # The straight run's mid-run checkpoint (saved asynchronously while training
  # went on, with the state buffers donated to the next step) resumes to the
  # same end too.
  middle = tmp_path / 'from_step_3'
  shutil.copytree(os.path.join(straight, 'checkpoints', '3'), middle / 'checkpoints' / '3')
  trainer.train(override(config, {'parallelism': 'pmap'}), str(middle))
  _assert_same_state(_saved_state(straight, 6), _saved_state(str(middle), 6))
  assert _losses(middle) == _losses(straight)[3:]


def test_eval_mode_evaluates_the_latest_checkpoint(straight_run, tmp_path):
  config, workdir = straight_run
  final_eval = run_log.read_jsonl(workdir, 'eval')[-1]
  result = evaluation.evaluate_checkpoint(config, workdir)
  assert result['step'] == 6 and result['loss'] == final_eval['loss']
  evaluation.record_eval(config, workdir, result)
  # The same record, plus the task metric only --mode=eval computes.
  assert run_log.read_jsonl(workdir, 'eval')[-1] == dict(
      final_eval, bits_per_character=final_eval['loss'] / math.log(2))
  with pytest.raises(FileNotFoundError):
    evaluation.evaluate_checkpoint(config, str(tmp_path))


def test_different_config_refuses_to_resume(straight_run):
  config, workdir = straight_run
  changed = override(config, {'model.num_heads': 4, 'optimizer.grad_accum_steps': 2})
  with pytest.raises(config_lib.ConfigError) as error:
    trainer.train(changed, workdir)
  message = str(error.value)
  assert '\n' not in message
  assert 'model.num_heads (checkpoint 2, now 4)' in message
  assert 'optimizer.grad_accum_steps (checkpoint 1, now 2)' in message


def test_resuming_on_batches_of_another_size_is_refused(tmp_path):
  """uneven_batch=drop lowers the batch to split over the devices: the data
  position counts those batches, so a resume that would read others is refused."""
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  values = {**TINY, 'batch_size': 3, 'data.uneven_batch': 'drop', 'total_steps': 3}
  done = subprocess.run(
      [sys.executable, '-m', 'transformer_jax.main', f'--workdir={tmp_path}',
       *override_flags(values)], cwd=REPOSITORY, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2'))
  assert done.returncode == 0, done.stderr[-3000:]
  with pytest.raises(config_lib.ConfigError) as error:  # this process has one device.
    trainer.train(override(load_config(), {**values, 'total_steps': 6}), str(tmp_path))
  message = str(error.value)
  assert '\n' not in message
  assert message.endswith('checkpoints/3 was trained on global batches of 2 rows, and '
                          'config.batch_size=3 gives 3 on 1 device(s) (config.data.uneven_batch='
                          'drop); resume on a device count that gives 2, or use another --workdir.')


def test_keeps_latest_and_best(tmp_path, char_config):
  config = override(char_config, {'keep_checkpoints': 2, 'keep_best_checkpoints': 1,
                                  'async_checkpointing': False})
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), config)
  state, rng = {'w': jnp.arange(3.0)}, jax.random.PRNGKey(0)
  eval_losses = {2: 1.0, 4: 3.0, 6: 2.0}
  for step in range(1, 7):
    loss = eval_losses.get(step)
    checkpointer.save(step, state, rng, eval_metrics={'loss': loss} if loss else None)
  checkpointer.wait()
  assert checkpointer.all_steps() == [2, 5, 6]
  step, restored, _ = checkpointer.restore({'w': jnp.zeros(3)}, rng, step=2)
  assert step == 2
  np.testing.assert_array_equal(restored['w'], state['w'])
  checkpointer.close()


def test_a_divergence_before_any_checkpoint_says_the_run_starts_again(tiny_config, tmp_path):
  config = tiny_config(learning_rate=1e30, optimizer__schedule='constant', warmup_steps=0,
                       checkpoint_every=1000, eval_every=1000, total_steps=20, log_every=5)
  with pytest.raises(trainer.TrainingDiverged) as error:
    trainer.train(config, str(tmp_path))
  assert 'No checkpoint was saved before it; to start again from step 0, run the same ' \
      'command with a lower --config.learning_rate' in str(error.value)
  assert 'none' not in str(error.value)


# ---------------------------------------------------------------------------
# Real processes: SIGTERM, and kill -9 in the middle of a save.


def _launch(workdir, **values):
  args = [sys.executable, '-m', 'transformer_jax.main', f'--workdir={workdir}',
          *override_flags({**TINY, **values})]
  return subprocess.Popen(args, cwd=REPOSITORY, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _steps(workdir):
  directory = os.path.join(workdir, 'checkpoints')
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(n) for n in names if n.isdigit()), [n for n in names if 'tmp' in n]


def _wait_for(condition, process, interval=0.05, timeout=180):
  deadline = time.time() + timeout
  while not condition():
    assert process.poll() is None, process.communicate()[0][-3000:]
    assert time.time() < deadline, 'timed out'
    time.sleep(interval)


def _logged_steps(workdir):
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  return [r['step'] for r in run_log.read_jsonl(workdir, 'train')]


def test_sigterm_saves_and_the_same_command_resumes(tmp_path):
  workdir = str(tmp_path)
  process = _launch(workdir, total_steps=100000, checkpoint_every=100000)
  _wait_for(lambda: len(_logged_steps(workdir)) >= 5, process)
  process.send_signal(signal.SIGTERM)
  output = process.communicate(timeout=120)[0]
  assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
  (step,), _ = _steps(workdir)
  assert f'Saved a checkpoint at step {step}' in output
  assert _logged_steps(workdir) == list(range(1, step + 1))

  process = _launch(workdir, total_steps=step + 3, checkpoint_every=100000)
  output = process.communicate(timeout=180)[0]
  assert process.returncode == 0, output[-3000:]
  assert f'resuming at step {step} of {step + 3}' in output
  assert _logged_steps(workdir) == list(range(1, step + 4))


def test_kill_during_a_save_resumes_from_the_previous_checkpoint(tmp_path):
  workdir = str(tmp_path)
  for _ in range(3):  # a save may complete between seeing it and the kill: try again.
    process = _launch(workdir, total_steps=100000, checkpoint_every=1, log_every=100)
    # Kill as soon as a save is half-written while an earlier one is complete.
    _wait_for(lambda: all(_steps(workdir)), process, interval=0.001)
    process.kill()
    process.communicate(timeout=60)
    complete, partial = _steps(workdir)
    if partial:
      break
  assert partial, 'the kill never landed during a save'
  good = complete[-1]

  process = _launch(workdir, total_steps=good + 2, checkpoint_every=1)
  output = process.communicate(timeout=180)[0]
  assert process.returncode == 0, output[-3000:]
  assert f'resuming at step {good} of {good + 2}' in output
  complete, partial = _steps(workdir)
  assert complete[-1] == good + 2 and not partial


def test_fields_added_since_a_checkpoint_count_as_their_defaults():
  """A run saved before the code gained a field resumes when the field keeps its
  default, and is refused when the new run sets it to something else."""
  current = checkpoint_lib.config_json(config_lib.base_config())
  saved = checkpoint_lib.config_json(config_lib.base_config())
  del saved['model']['activation'], saved['optimizer']
  assert checkpoint_lib.config_differences(saved, current) == []
  current['model']['activation'] = 'gelu'
  assert checkpoint_lib.config_differences(saved, current) == [('model.activation', 'relu', 'gelu')]


def test_what_the_readme_says_may_change_may_change(straight_run, tmp_path):
  """Issue 24, kind 5: README lists config.model.dtype among the performance knobs that
  may change when a run resumes (parameters are float32 either way), yet eval, decode
  and resume with another dtype were refused. Every knob it names is resumable, and a
  float32 run evaluates and resumes in bfloat16."""
  with open(os.path.join(REPOSITORY, 'README.md'), encoding='utf-8') as f:
    readme = ' '.join(f.read().split())
  knobs = readme[readme.index('Performance knobs'):readme.index('The state buffers')]
  named = set(re.findall(r'`config\.(model\.\w+)', knobs))
  assert 'model.dtype' in named and named <= config_lib.RESUMABLE_FIELDS, named
  config, workdir = straight_run
  bfloat16 = override(config, {'model.dtype': 'bfloat16'})
  assert np.isfinite(evaluation.evaluate_checkpoint(bfloat16, workdir)['loss'])
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(workdir, resumed)
  trainer.train(override(bfloat16, {'total_steps': 7}), resumed)
  assert _losses(resumed)[-1][0] == 7
