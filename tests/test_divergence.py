"""Divergence: the loss leaving its course stops a run (not only inf/NaN), the
stop names a checkpoint whose state's loss was on course, sets aside the ones
that hold the diverged state, and the same command with a lower rate continues
from the good one."""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPOSITORY, TINY, load_config, override, override_flags
from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import config as config_lib
from transformer_jax import divergence
from transformer_jax import run_log
from transformer_jax import trainer

LN_VOCAB = math.log(96)  # the loss of a uniform guess over shakespeare_char's vocabulary.


def _steps(directory) -> list:
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(n) for n in names if n.isdigit())


def _moved_steps(workdir) -> list:
  directory = os.path.join(workdir, checkpoint_lib.DIVERGED_DIR)
  return sorted(int(n.split('-')[0]) for n in os.listdir(directory))


def _train_losses(workdir) -> list:
  return [(r['step'], r['loss']) for r in run_log.read_jsonl(workdir, 'train')]


def test_divergence_means_the_loss_left_its_course_not_only_inf_or_nan(tmp_path):
  """Issue 24: a learning rate that lifts the loss to thousands of nats without
  making it infinite ran to the end (exit 0); a stop named the latest checkpoint
  good, whose loss was already huge. Now: 6 healthy steps, then the same run at
  a learning rate 10^4 times higher stops (exit 2, one line), naming step 6 as
  the last good checkpoint and setting aside the later ones; the same command
  at the healthy rate then continues from step 6 to exactly the run that never
  diverged."""
  healthy = override(load_config(), {**TINY, 'total_steps': 24, 'checkpoint_every': 2,
                                     'keep_checkpoints': 10})
  workdir = str(tmp_path / 'run')
  trainer.train(override(healthy, {'total_steps': 6}), workdir)

  blown = subprocess.run(
      [sys.executable, '-m', 'transformer_jax.main', f'--workdir={workdir}',
       *override_flags({**TINY, 'total_steps': 24, 'checkpoint_every': 2,
                        'keep_checkpoints': 10, 'learning_rate': 1e4})],
      cwd=REPOSITORY, capture_output=True, text=True, timeout=600)
  assert blown.returncode == 2, blown.stderr[-3000:]
  lines = blown.stderr.strip().splitlines()
  assert len(lines) == 1, blown.stderr[-3000:]
  message = lines[0]
  assert message.startswith('Training diverged: ')
  assert '(it left its course at step 8)' in message  # the first step of the new rate's state.
  good = int(re.search(r'The last good checkpoint is step (\d+)', message).group(1))
  assert good == 6
  with checkpoint_lib.Checkpointer(workdir, healthy, writable=False) as checkpoints:
    recorded = checkpoints.course(good)
  assert recorded['loss'] < LN_VOCAB  # better than a uniform guess: on course.
  assert f'(train loss {recorded["loss"]:.4f})' in message
  # The checkpoints after it held the diverged state: moved aside, named, not lost.
  moved = _moved_steps(workdir)
  assert moved and min(moved) > good
  assert f'steps {", ".join(map(str, moved))} held the diverged state' in message
  assert _steps(os.path.join(workdir, 'checkpoints')) == [2, 4, 6]
  assert '--config.learning_rate' in message and 'run the same command' in message

  result = trainer.train(healthy, workdir)
  straight = str(tmp_path / 'straight')
  expected = trainer.train(healthy, straight)
  assert result['loss'] == expected['loss'] < LN_VOCAB
  assert _train_losses(workdir) == _train_losses(straight)
  with checkpoint_lib.Checkpointer(workdir, healthy, writable=False) as resumed, \
      checkpoint_lib.Checkpointer(straight, healthy, writable=False) as uninterrupted:
    assert resumed.course(24) == uninterrupted.course(24)  # the course resumes exactly too.


def test_a_checkpoint_whose_state_gives_a_nan_loss_is_not_called_good(tiny_config, tmp_path):
  """At learning rate 1e30 the first update makes parameters of order 1e30: the
  checkpoint of step 1 is finite, but its state's loss (step 2's) is not. It is
  set aside, no checkpoint is called good, and the same command at a sane rate
  starts again from step 0 with the records of the diverged start dropped."""
  config = tiny_config(learning_rate=1e30, optimizer__schedule='constant', warmup_steps=0,
                       checkpoint_every=1, total_steps=20, log_every=5)
  workdir = str(tmp_path)
  with pytest.raises(trainer.TrainingDiverged) as error:
    trainer.train(config, workdir)
  message = str(error.value)
  assert '\n' not in message
  assert 'No checkpoint is good: step 1 held the diverged state and moved to ' \
      f'{os.path.join(workdir, checkpoint_lib.DIVERGED_DIR)}/; to start again from step 0, run ' \
      'the same command with a lower --config.learning_rate' in message
  assert _steps(os.path.join(workdir, 'checkpoints')) == []
  assert _moved_steps(workdir) == [1]
  first = _train_losses(workdir)[0]

  result = trainer.train(override(config, {'learning_rate': 1e-3, 'total_steps': 4}), workdir)
  assert result['step'] == 4 and np.isfinite(result['loss'])
  records = _train_losses(workdir)
  assert [s for s, _ in records] == [1, 2, 3, 4]
  assert records[0] == first  # from the first parameters again, on the first batch.


def _course(**values):
  return divergence.Course(override(load_config(), values))


def _run(course, losses, first_step=1):
  """Feeds per-step losses (one target each); the Divergence or None."""
  for step, loss in enumerate(losses, start=first_step):
    found = course.update(step, loss, 1.0, 1.0)
    if found:
      return found
  return None


def test_a_noisy_healthy_loss_stays_on_its_course():
  """A falling loss with batch noise and lone spikes of several times the loss
  (a hard batch) never stops the run; the spikes' medians do not move."""
  rng = np.random.default_rng(0)
  losses = 4.6 * np.exp(-np.arange(2000) / 300) + 0.3 + rng.normal(0, 0.1, 2000)
  losses[rng.integers(10, 2000, 40)] *= 8  # lone bad batches.
  assert _run(_course(), losses) is None


def test_a_sustained_rise_leaves_the_course_and_names_where_it_began():
  """The loss falls to 1.5, then jumps to 50: stopped once the median of the
  window is more than 2 x ln 96 above the best median, and the departure is
  dated to the first step above that bound, so checkpoint s is good only when
  step s + 1 (its state's loss) came before it."""
  losses = [4.6, 3.0, 2.0] + [1.5] * 20 + [50.0] * 40
  found = _run(_course(), losses)
  assert found.left_at == 24 and 24 < found.step <= 24 + divergence.WINDOW // 2
  assert 'it left its course at step 24' in found.reason
  assert found.last_good([10, 20, 22, 23, 24]) == 22
  assert found.last_good([23, 24]) is None
  assert _run(_course(divergence_factor=0.0), losses) is None  # 0: only a non-finite loss stops.
  assert _run(_course(divergence_factor=0.0), losses + [math.nan]).left_at == len(losses) + 1
  assert _run(_course(), losses[:30] + [math.nan]).left_at == 24  # a NaN after the departure.


def test_a_course_restored_from_a_checkpoint_judges_as_the_uninterrupted_one():
  losses = [4.6, 3.0, 2.0] + [1.5] * 20 + [50.0] * 40
  straight = _run(_course(), losses)
  course = _course()
  assert _run(course, losses[:30]) is None  # saved after the departure, before the stop.
  saved = json.loads(json.dumps(course.state()))  # as a checkpoint records it.
  restored = divergence.Course(load_config(), saved)
  assert _run(restored, losses[30:], first_step=31) == straight


def test_a_negative_divergence_factor_is_one_line():
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate(override(load_config(), {'divergence_factor': -1.0}))
  assert str(error.value) == ('config.divergence_factor=-1.0 must be >= 0 (0 = stop on a '
                              'non-finite loss only; the default 2.0).')
