"""A finished run read back (restore.py): eval, decode and export build nothing
of training, need no training data, and may measure other held-out data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPOSITORY, TINY, load_config, override, override_flags
from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import config as config_lib
from transformer_jax import evaluation
from transformer_jax import generate
from transformer_jax import restore
from transformer_jax import run_log
from transformer_jax import sweep
from transformer_jax import train as train_lib
from transformer_jax import trainer
from transformer_jax.data import datasets
from transformer_jax.data import sources
from transformer_jax.data import tokenizers
from transformer_jax.models.transformer import build_model


def _refuse(what):
  def refused(*args, **kwargs):
    raise AssertionError(f'a finished run was read with {what}')
  return refused


@pytest.fixture
def nothing_of_training(monkeypatch):
  """Every way to build optimiser state, and every reader of training data,
  raise if called."""
  for name in ('create_optimizer', 'create_state', 'init_fn', 'learning_rate_schedule'):
    monkeypatch.setattr(train_lib, name, _refuse(f'train.{name}'))
  for name in ('shakespeare_works', 'shakespeare_split', 'shakespeare_text', 'cmudict_g2p',
               'digits', 'tfds_source', 'tfds_examples'):
    monkeypatch.setattr(sources, name, _refuse(f'sources.{name}'))
  read_text_files = sources.read_text_files

  def eval_files_only(paths, *args, **kwargs):
    assert not any('train' in os.path.basename(p) for p in paths), paths
    return read_text_files(paths, *args, **kwargs)
  monkeypatch.setattr(sources, 'read_text_files', eval_files_only)


@pytest.fixture(scope='module')
def default_run(tmp_path_factory):
  """The default experiment (shakespeare_char), tiny, trained for 6 steps."""
  config = override(load_config(), TINY)
  workdir = str(tmp_path_factory.mktemp('default'))
  trainer.train(config, workdir)
  return config, workdir


TEXT = {'data.name': 'text', 'data.tokenizer': 'char', 'data.overflow': 'truncate', 'seq_len': 24}


@pytest.fixture(scope='module')
def text_run(tmp_path_factory):
  """A tiny LM on the user's files (train.txt, held.txt), whose training file
  is deleted once it has trained; new.txt is other held-out text."""
  files = tmp_path_factory.mktemp('files')
  lines = [line for line in sources.shakespeare_text().splitlines() if len(line) > 8]
  for name, part in (('train.txt', lines[:300]), ('held.txt', lines[300:340]),
                     ('new.txt', lines[340:380])):
    (files / name).write_text('\n'.join(part) + '\n')
  config = override(load_config(), {**TINY, **TEXT, 'data.train_files': str(files / 'train.txt'),
                                    'data.eval_files': str(files / 'held.txt')})
  workdir = str(tmp_path_factory.mktemp('text'))
  trainer.train(config, workdir)
  os.remove(files / 'train.txt')
  return config, workdir, files


def test_decode_builds_no_optimiser_state_and_reads_no_data(default_run, nothing_of_training):
  config, workdir = default_run
  decode = override(config, {'sample_length': 8, 'decode.method': 'greedy'})
  lines = ['ROMEO:', '', 'To be']
  outputs = evaluation.decode_checkpoint(decode, workdir, lines)
  # What the trained parameters generate, read here without restore.py.
  with checkpoint_lib.Checkpointer(workdir, config, writable=False) as checkpoints:
    params = checkpoints.read_params(6)
  tokenizer = tokenizers.load(os.path.join(workdir, tokenizers.RUN_DIRECTORY))
  expected = generate.generate_text(
      build_model(config.model), params, tokenizer, lines, max_new_tokens=8, method='greedy',
      encode=datasets.input_encoder(config, tokenizer), context=config.seq_len)
  assert outputs == expected and len(outputs) == 3


def test_eval_builds_no_optimiser_state_and_measures_as_training_did(default_run, monkeypatch):
  config, workdir = default_run
  for name in ('create_optimizer', 'create_state', 'init_fn'):
    monkeypatch.setattr(train_lib, name, _refuse(f'train.{name}'))
  final = run_log.read_jsonl(workdir, 'eval')[-1]
  result = evaluation.evaluate_checkpoint(config, workdir)
  # The same eval step on the same parameters and batches as the training eval, compiled
  # for a state without optimiser slots: equal to rounding (a changed parameter, batch
  # or split moves the loss by far more).
  assert result['step'] == 6 and result['loss'] == pytest.approx(final['loss'], rel=1e-6)
  assert 'eval_overrides' not in result


def test_a_text_run_is_evaluated_and_decoded_after_its_training_files_are_deleted(
    text_run, nothing_of_training):
  config, workdir, _ = text_run
  own = run_log.read_jsonl(workdir, 'eval')[-1]
  result = evaluation.evaluate_checkpoint(config, workdir)
  assert result['step'] == 6 and result['loss'] == pytest.approx(own['loss'], rel=1e-6)
  outputs = evaluation.decode_checkpoint(override(config, {'sample_length': 5}), workdir,
                                         ['To be', ''])
  assert len(outputs) == 2 and all(isinstance(o, str) for o in outputs)


def test_eval_on_new_held_out_files_is_recorded_with_them_and_the_table_keeps_the_runs_own(
    text_run):
  config, workdir, files = text_run
  own = run_log.read_jsonl(workdir, 'eval')[-1]
  values = {**TINY, **TEXT, 'data.train_files': str(files / 'train.txt'),
            'data.eval_files': str(files / 'new.txt')}
  done = subprocess.run([sys.executable, '-m', 'transformer_jax.main', f'--workdir={workdir}',
                         '--mode=eval', *override_flags(values)],
                        cwd=REPOSITORY, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  printed = json.loads(done.stdout.strip().splitlines()[-1])
  recorded = run_log.read_jsonl(workdir, 'eval')[-1]
  assert recorded['eval_overrides'] == printed['eval_overrides'] == {
      'data.eval_files': str(files / 'new.txt')}
  assert recorded['step'] == 6 and recorded['loss'] == printed['loss'] != own['loss']
  row = sweep.summarise(sweep.Run({}), workdir)
  assert row['eval_loss'] == own['loss'] and 'eval_eval_overrides' not in row


def test_a_finished_run_is_read_only_with_its_own_model(default_run):
  config, workdir = default_run
  with pytest.raises(config_lib.ConfigError) as error:
    restore.open_run(override(config, {'model.num_heads': 4, 'batch_size': 8}), workdir)
  message = str(error.value)
  assert 'model.num_heads (checkpoint 2, now 4)' in message and 'batch_size' not in message
  assert message.endswith('or set those fields back to read its parameters.')
  run = restore.open_run(override(config, {'batch_size': 8, 'model.attention_impl': 'xla'}),
                         workdir)
  assert run.step == 6 and run.overrides() == {'batch_size': 8}


def test_the_parameters_read_alone_are_the_trained_ones(default_run):
  config, workdir = default_run
  run = restore.open_run(config, workdir)
  with checkpoint_lib.Checkpointer(workdir, config, writable=False) as checkpoints:
    saved = checkpoints.read_params(6)
  flat, want = config_lib.flatten(run.params, '/'), config_lib.flatten(saved, '/')
  assert flat.keys() == want.keys()
  assert all(np.array_equal(np.asarray(flat[k]), want[k]) for k in want)


def test_parameters_that_differ_from_their_checksums_are_skipped(default_run, tmp_path, capsys):
  config, straight = default_run
  workdir = str(tmp_path / 'run')
  subprocess.run(['cp', '-r', straight, workdir], check=True)
  path = os.path.join(workdir, 'checkpoints', '6', 'integrity', 'metadata')
  with open(path) as f:
    integrity = json.load(f)
  name = next(k for k in integrity['state'] if k.startswith("['train_state'].params"))
  integrity['state'][name] ^= 1
  with open(path, 'w') as f:
    json.dump(integrity, f)
  run = restore.open_run(config, workdir)
  assert run.step == 3
  out = capsys.readouterr().out
  assert f'Checkpoint step 6 in {workdir}/checkpoints is damaged (ValueError: the checksum of ' \
         f'state{name} differs' in out
  with pytest.raises(checkpoint_lib.NoIntactCheckpoint):
    restore.open_run(override(config, {'restore_checkpoint': '6'}), workdir)
