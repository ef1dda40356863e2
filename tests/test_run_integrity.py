"""Runs that survive what happens around them: one trainer per workdir, damaged
checkpoints, torn and re-run logs, provenance per start, a read-only workdir,
resuming past the end, and continuing after a divergence."""

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import types

import numpy as np
import pytest

from conftest import REPOSITORY, TINY, load_config, override, override_flags
from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import config as config_lib
from transformer_jax import evaluation
from transformer_jax import lock as lock_lib
from transformer_jax import run_log
from transformer_jax import trainer


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  """6 steps with checkpoints at 3 and 6 (dropout on, so resuming needs the key)."""
  config = override(load_config(), TINY)
  workdir = str(tmp_path_factory.mktemp('finished'))
  trainer.train(config, workdir)
  return config, workdir


def _copy(finished_run, tmp_path) -> str:
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished_run[1], workdir)
  return workdir


def _train_records(workdir) -> list:
  return [(r['step'], r['loss']) for r in run_log.read_jsonl(workdir, 'train')]


def _main(workdir, *args, prefix=(), **values):
  return subprocess.run([*prefix, sys.executable, '-m', 'transformer_jax.main',
                         f'--workdir={workdir}', *override_flags({**TINY, **values}), *args],
                        cwd=REPOSITORY, capture_output=True, text=True, timeout=600)


# ---------------------------------------------------------------------------
# One trainer per workdir.


def test_a_second_trainer_is_refused_in_one_line_naming_the_holder(tmp_path):
  with lock_lib.WorkdirLock(str(tmp_path)):
    done = _main(str(tmp_path))
  assert done.returncode == 2, done.stderr[-2000:]
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1, done.stderr
  assert f'host {socket.gethostname()}, pid {os.getpid()}' in lines[0]
  assert 'use another --workdir' in lines[0]
  assert not os.path.exists(tmp_path / 'checkpoints')  # refused before touching anything.


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; from transformer_jax import lock; '
       'lock.WorkdirLock(sys.argv[1]).acquire(); print("locked", flush=True); time.sleep(600)',
       str(tmp_path)], cwd=REPOSITORY, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    with pytest.raises(lock_lib.WorkdirLocked, match=f'pid {holder.pid}'):
      lock_lib.WorkdirLock(str(tmp_path)).acquire()
  finally:
    holder.kill()
    holder.communicate(timeout=60)
  assert os.path.exists(tmp_path / lock_lib.LOCK_FILE)  # kill -9 left the file behind.
  with lock_lib.WorkdirLock(str(tmp_path)) as taken:
    with open(taken.path) as f:
      assert json.load(f)['pid'] == os.getpid()
  assert not os.path.exists(tmp_path / lock_lib.LOCK_FILE)  # released cleanly: removed.


# ---------------------------------------------------------------------------
# Damaged checkpoints.


def _largest_file(directory) -> str:
  files = [p for p in glob.glob(os.path.join(directory, '**', '*'), recursive=True)
           if os.path.isfile(p)]
  return max(files, key=os.path.getsize)


def _damage(step_dir: str, kind: str):
  if kind == 'truncated_array_file':
    path = _largest_file(os.path.join(step_dir, 'state'))
    os.truncate(path, os.path.getsize(path) // 2)
  elif kind == 'metadata_deleted':
    os.remove(os.path.join(step_dir, 'state', '_METADATA'))
  elif kind == 'data_position_deleted':
    os.remove(os.path.join(step_dir, 'data', 'process_0-of-1.json'))
  elif kind == 'bit_flipped':
    path = _largest_file(os.path.join(step_dir, 'state'))
    with open(path, 'r+b') as f:
      f.seek(os.path.getsize(path) // 2)
      byte = f.read(1)[0]
      f.seek(-1, os.SEEK_CUR)
      f.write(bytes([byte ^ 0x08]))
  elif kind == 'data_position_changed':  # still valid JSON: only the checksum tells.
    path = os.path.join(step_dir, 'data', 'process_0-of-1.json')
    with open(path) as f:
      position = json.load(f)
    position['next_index'] += 1
    with open(path, 'w') as f:
      json.dump(position, f)


@pytest.mark.parametrize('kind', ['truncated_array_file', 'metadata_deleted',
                                  'data_position_deleted', 'bit_flipped',
                                  'data_position_changed', 'empty_newer_step'])
def test_a_damaged_checkpoint_falls_back_to_the_newest_intact_one(finished_run, tmp_path,
                                                                  capsys, kind):
  config, straight = finished_run
  workdir = _copy(finished_run, tmp_path)
  if kind == 'empty_newer_step':
    damaged, good = 7, 6
    os.makedirs(os.path.join(workdir, 'checkpoints', '7'))
  else:
    damaged, good = 6, 3
    _damage(os.path.join(workdir, 'checkpoints', '6'), kind)
  capsys.readouterr()
  result = trainer.train(override(config, {'total_steps': 9}), workdir)
  out, err = capsys.readouterr()
  assert 'Traceback' not in err and 'Exception ignored' not in err, err[-3000:]
  notes = [line for line in out.splitlines() if 'is damaged' in line]
  assert len(notes) == 1, out
  moved = glob.glob(os.path.join(workdir, checkpoint_lib.DAMAGED_DIR, f'{damaged}-*'))
  assert len(moved) == 1
  assert notes[0].startswith(f'Checkpoint step {damaged} is damaged (')
  assert f'moved it to {moved[0]}; resuming from step {good}.' in notes[0]
  assert f'resuming at step {good} of 9' in out and result['step'] == 9
  # Steps good+1.. are trained again exactly as the first time, and logged once.
  records = _train_records(workdir)
  assert [s for s, _ in records] == list(range(1, 10))
  assert records[:6] == _train_records(straight)


def test_with_no_intact_checkpoint_nothing_is_moved_and_the_error_is_one_line(
    finished_run, tmp_path):
  config, _ = finished_run
  workdir = _copy(finished_run, tmp_path)
  for step in (3, 6):
    _damage(os.path.join(workdir, 'checkpoints', str(step)), 'metadata_deleted')
  with pytest.raises(checkpoint_lib.NoIntactCheckpoint) as error:
    trainer.train(override(config, {'total_steps': 9}), workdir)
  message = str(error.value)
  assert '\n' not in message and 'step 6: ' in message and 'step 3: ' in message
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']
  assert not os.path.exists(os.path.join(workdir, checkpoint_lib.DAMAGED_DIR))


def test_eval_skips_a_damaged_checkpoint_without_moving_it(finished_run, tmp_path, capsys):
  config, _ = finished_run
  workdir = _copy(finished_run, tmp_path)
  # Eval reads the parameters alone (restore.py): the damage must reach them.
  _damage(os.path.join(workdir, 'checkpoints', '6'), 'metadata_deleted')
  result = evaluation.evaluate_checkpoint(config, workdir)
  assert result['step'] == 3
  assert 'Checkpoint step 6 in ' in capsys.readouterr().out
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']


# ---------------------------------------------------------------------------
# Records: cut back on resume, readers name bad lines, provenance per start.


def _tensorboard_steps(workdir, tag='train/loss') -> list:
  """The steps TensorBoard itself shows for `tag` (its own loader, which drops
  events past a restart marker), without importing TensorFlow."""
  sys.modules.setdefault('tensorboard.compat.notf', types.ModuleType('tensorboard.compat.notf'))
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  accumulator = event_accumulator.EventAccumulator(os.path.join(workdir, 'tensorboard'))
  accumulator.Reload()
  return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def test_resume_cuts_the_log_back_to_the_checkpoint_torn_line_included(finished_run, tmp_path):
  """A crash after step 6 was logged but before it was saved, mid-write of a record."""
  config, straight = finished_run
  workdir = _copy(finished_run, tmp_path)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '6'))
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 7, "split": "tra')  # torn: no newline.
  assert [s for s, _ in _train_records(workdir)] == [1, 2, 3, 4, 5, 6]  # readers skip it.
  trainer.train(config, workdir)
  records = _train_records(workdir)
  assert [s for s, _ in records] == [1, 2, 3, 4, 5, 6]
  assert records == _train_records(straight)  # steps 4-6 trained again, identically.
  assert [r['step'] for r in run_log.read_jsonl(workdir, 'eval')] == [6]
  shown = _tensorboard_steps(workdir)
  assert [s for s, _ in shown] == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([v for _, v in shown], [loss for _, loss in records], rtol=1e-6)
  # Provenance of both starts kept: the first one's command is not overwritten.
  with open(os.path.join(workdir, 'environment.json')) as f:
    starts = json.load(f)['starts']
  assert [s['step'] for s in starts] == [0, 3]
  assert all(s['argv'] and s['packages']['jax'] for s in starts)


def test_running_a_finished_run_again_records_its_evaluation_once(finished_run, tmp_path):
  config, _ = finished_run
  workdir = _copy(finished_run, tmp_path)
  before = run_log.read_jsonl(workdir)
  result = trainer.train(config, workdir)
  assert run_log.read_jsonl(workdir) == before
  assert before[-1]['split'] == 'eval' and before[-1]['step'] == result['step'] == 6
  assert result['loss'] == pytest.approx(before[-1]['loss'], rel=1e-6)  # a re-evaluation.


def test_readers_name_the_file_and_line_of_a_bad_record(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "split": "train", "loss": 2.0}\nnot json\n'
                  '{"step": 2, "split": "train", "loss": 1.0}\n')
  with pytest.raises(run_log.RecordError, match=f'{path} line 2 is not a JSON record'):
    run_log.read_jsonl(str(tmp_path))
  with pytest.raises(run_log.RecordError, match='line 2'):
    run_log.cut_back(str(tmp_path), 1)


# ---------------------------------------------------------------------------
# Eval on a read-only workdir; resuming past total_steps; continuing after divergence.


def _read_only_prefix(workdir: str) -> list:
  """A command prefix under which `workdir` is read-only for the command."""
  if os.geteuid() != 0:
    subprocess.run(['chmod', '-R', 'a-w', workdir], check=True)
    return []
  # root ignores permissions: a read-only bind mount in a private mount namespace.
  mount = f'mount --bind -o ro "{workdir}" "{workdir}"'
  probe = subprocess.run(['unshare', '-rm', 'sh', '-c', f'{mount} && ! touch "{workdir}/probe"'],
                         capture_output=True)
  if probe.returncode != 0:
    pytest.skip('cannot make a read-only directory here (root without user namespaces)')
  return ['unshare', '-rm', 'sh', '-c', f'{mount} && exec "$0" "$@"']


def test_eval_on_a_read_only_workdir_prints_the_result_first(finished_run, tmp_path):
  workdir = _copy(finished_run, tmp_path)
  final = run_log.read_jsonl(workdir, 'eval')[-1]
  done = _main(workdir, '--mode=eval', prefix=_read_only_prefix(workdir))
  assert done.returncode == 2, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result['step'] == 6 and result['loss'] == final['loss']
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'Could not record the result above in {workdir}')


def test_resuming_a_run_past_total_steps_is_one_line(finished_run, tmp_path):
  config, _ = finished_run
  workdir = _copy(finished_run, tmp_path)
  with pytest.raises(config_lib.ConfigError) as error:
    trainer.train(override(config, {'total_steps': 4}), workdir)
  assert str(error.value) == (
      f'{workdir} is already at step 6, past config.total_steps=4; set --config.total_steps '
      'above 6 to train on, or use another --workdir.')


def test_after_a_divergence_the_same_run_continues_with_a_lower_rate(tmp_path, capsys):
  workdir = str(tmp_path)
  config = override(load_config(), {**TINY, 'total_steps': 3, 'checkpoint_every': 3,
                                    'optimizer.schedule': 'constant', 'warmup_steps': 0,
                                    'learning_rate': 1e-3})
  trainer.train(config, workdir)
  blown = override(config, {'total_steps': 9, 'learning_rate': 1e30})
  with pytest.raises(trainer.TrainingDiverged) as error:
    trainer.train(blown, workdir)
  assert 'last good checkpoint is step 3' in str(error.value)
  assert '--config.learning_rate' in str(error.value)
  capsys.readouterr()
  fixed = override(blown, {'learning_rate': 5e-4, 'optimizer.grad_clip_norm': 1.0})
  result = trainer.train(fixed, workdir)
  out = capsys.readouterr().out
  # Named against the checkpoint it continues from (written at learning rate 1e-3).
  assert ('Resuming with changed optimiser settings: learning_rate 0.001 -> 0.0005, '
          'optimizer.grad_clip_norm 0.0 -> 1.0') in out
  assert 'resuming at step 3 of 9' in out and result['step'] == 9
  assert np.isfinite(result['loss'])
  assert [s for s, _ in _train_records(workdir)] == list(range(1, 10))
  with open(os.path.join(workdir, 'environment.json')) as f:
    last = json.load(f)['starts'][-1]
  assert last['step'] == 3 and last['config_changes']['learning_rate'] == [1e30, 5e-4]


def test_optimiser_settings_are_tunable_and_the_model_is_not():
  saved = checkpoint_lib.config_json(config_lib.base_config())
  current = config_lib.base_config()
  current.learning_rate, current.optimizer.b2 = 0.5, 0.99
  current.model.num_heads = 4
  current = checkpoint_lib.config_json(current)
  assert [d[0] for d in checkpoint_lib.tuned_fields(saved, current)] == [
      'learning_rate', 'optimizer.b2']
  assert [d[0] for d in checkpoint_lib.config_differences(saved, current)] == ['model.num_heads']


def test_a_damaged_checkpoint_is_one_line_on_the_command_line(finished_run, tmp_path):
  """No page of Orbax traceback around the line (a failed read leaves others behind)."""
  workdir = _copy(finished_run, tmp_path)
  _damage(os.path.join(workdir, 'checkpoints', '6'), 'truncated_array_file')
  done = _main(workdir, total_steps=7)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'Checkpoint step 6 is damaged' in done.stdout
  assert 'Traceback' not in done.stderr and 'Exception ignored' not in done.stderr, done.stderr[-3000:]


def test_a_refused_first_start_removes_only_a_workdir_it_made_under_its_lock(tmp_path,
                                                                               monkeypatch):
  """Two first starts in one new workdir: the one that finds it locked (the other
  made it in between) must not remove it; one refused under its own lock does."""
  config = override(load_config(), {**TINY, 'model.vocab_size': 10})  # refused once data is read.
  made_by_us = tmp_path / 'ours' / 'run'
  with pytest.raises(config_lib.ConfigError, match='vocab_size=10'):
    trainer.setup(config, str(made_by_us))
  assert not (tmp_path / 'ours').exists()

  theirs = tmp_path / 'theirs' / 'run'

  def the_other_run_wins(self):
    os.makedirs(self.workdir)
    (theirs / 'checkpoints.marker').write_text('the other run')
    raise lock_lib.WorkdirLocked(f'{self.workdir} is in use by another training run')

  monkeypatch.setattr(lock_lib.WorkdirLock, 'acquire', the_other_run_wins)
  with pytest.raises(lock_lib.WorkdirLocked):
    trainer.setup(config, str(theirs))
  assert (theirs / 'checkpoints.marker').read_text() == 'the other run'


def test_a_refused_first_start_leaves_a_run_started_beside_it_under_the_same_new_parent(
    tmp_path, monkeypatch):
  """Workdirs sweep/a and sweep/b under a new sweep/: a refused first start of a
  removes a (and sweep/ only if empty), never b, which started meanwhile."""
  from transformer_jax import data  # pylint: disable=g-import-not-at-top
  from transformer_jax.data import datasets as datasets_lib  # pylint: disable=g-import-not-at-top
  config = override(load_config(), TINY)
  sibling = tmp_path / 'sweep' / 'b'

  def data_missing_while_b_starts(*args):
    del args
    sibling.mkdir()
    (sibling / 'metrics.jsonl').write_text('{}\n')
    raise data.DataError('the data is not there')

  monkeypatch.setattr(datasets_lib, 'create_datasets', data_missing_while_b_starts)
  with pytest.raises(data.DataError):
    trainer.setup(config, str(tmp_path / 'sweep' / 'a'))
  assert sorted(os.listdir(tmp_path / 'sweep')) == ['b']
  assert (sibling / 'metrics.jsonl').read_text() == '{}\n'
