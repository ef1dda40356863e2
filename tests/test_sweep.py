"""The ablation runner: one process per run, crash isolation, skip on re-launch, report."""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import override
from transformer_jax import config as config_lib
from transformer_jax import run_log
from transformer_jax import run_process
from transformer_jax import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def config_file(tmp_path):
  """A tiny char-LM config whose grid has a run that crashes (an unknown dataset)."""
  path = tmp_path / 'tiny_sweep.py'
  path.write_text(textwrap.dedent(f'''
      from transformer_jax.configs import shakespeare_char

      def get_config():
        c = shakespeare_char.get_config()
        c.model.num_layers = 1
        c.model.d_model = 16
        c.model.max_len = 16
        c.seq_len = 16
        c.batch_size = 4
        c.total_steps = 4
        c.warmup_steps = 2
        c.log_every = 2
        c.eval_every = 4
        c.eval_steps = 2
        c.checkpoint_every = 4
        c.num_samples = 0
        return c

      def get_sweep(name='grid'):
        if name == 'grid':
          return {{'model.num_heads': [1, 2], 'seed': [0, 1]}}
        if name == 'seed':
          return {{'seed': [0]}}
        return [{{'model.num_heads': 2}}, {{'data.name': 'text', 'data.train_files': 'no_such_corpus.txt'}}]
  '''))
  return str(path)


def test_grid_expands_to_the_product():
  runs = sweep.expand({'model.ffn_ratio': [1, 2, 4, 8], 'model.num_heads': [1, 2, 4, 8],
                       'seed': [0, 1]})
  assert len(runs) == 32
  assert runs[0].name == 'model.ffn_ratio=1,model.num_heads=1,seed=0'
  assert len({r.name for r in runs}) == 32


def test_bad_override_key_is_one_line_error():
  base = config_lib.base_config()
  with pytest.raises(config_lib.ConfigError, match='model.num_head=2: config.model.num_head is '
                     'not a config field; did you mean config.model.num_heads'):
    sweep.check_runs(base, sweep.expand([{'model.num_head': 2}]))
  with pytest.raises(config_lib.ConfigError, match='config.model.num_heads is a value'):
    sweep.check_runs(base, sweep.expand([{'model.num_heads.x': 2}]))
  with pytest.raises(config_lib.ConfigError, match='num_heads'):
    sweep.check_runs(base, sweep.expand([{'model.num_heads': 7}]))


def test_run_directory_names_are_bounded_and_stable():
  short = sweep.Run({'model.num_heads': 2, 'seed': 0})
  assert short.name == 'model.num_heads=2,seed=0'  # as earlier sweeps named it.
  assert sweep.Run({'data.path': 'x' * 245}).name == 'data.path=' + 'x' * 245  # fits: kept.
  long = sweep.Run({'data.path': '/data/' + 'x' * 300, 'seed': 0})
  name = long.name
  assert len(name.encode()) <= 120 and '/' not in name
  assert name.startswith('data.path=_data_xxx') and name == sweep.Run(dict(long.overrides)).name
  assert name != sweep.Run({'data.path': '/data/' + 'x' * 300, 'seed': 1}).name
  assert sweep.Run({'data.path': 'a/b'}).name.startswith('data.path=a_b~')  # no nested dirs.


def test_an_outcome_says_what_happened():
  """A run that finished while the sweep was being stopped is ok, not 'stopped by ...: None'."""
  assert sweep.outcome({'returncode': 0, 'signal': None}) == 'ok'
  assert sweep.outcome({'returncode': 0, 'signal': signal.SIGINT}) == (
      'ok (it finished before the stop reached it)')
  assert sweep.outcome({'returncode': 130, 'signal': signal.SIGINT, 'last_line': 'Saved'}) == (
      'stopped by SIGINT (exit 130): Saved')
  assert sweep.outcome({'returncode': 1, 'signal': None, 'last_line': 'Config error: x'}) == (
      'FAILED: Config error: x')


def test_a_run_that_cannot_be_launched_does_not_stop_the_grid(tmp_path):
  blocker = tmp_path / 'runs'
  blocker.write_text('a file where the run directory would go')
  status = run_process.launch(['-c', 'pass'], str(blocker / 'seed=0'))
  assert status['returncode'] is None and status['last_line'].startswith(
      f'could not launch in {blocker}/seed=0: ')
  assert sweep.outcome(status).startswith('FAILED: could not launch')


# A stand-in for a training process: saves and exits 143 on SIGTERM (as main does),
# counting the SIGTERMs it gets in its log.
_TRAINS_UNTIL_SIGTERM = textwrap.dedent('''
    import signal, sys, time
    def stop(*_):
      print('SIGTERM', flush=True)
      time.sleep(0.5)  # a second SIGTERM while it saves would be counted here.
      sys.exit(143)
    signal.signal(signal.SIGTERM, stop)
    print('training', flush=True)
    time.sleep(600)
''')


@pytest.mark.parametrize('early', [True, False])
def test_a_stop_request_reaches_the_run_as_one_sigterm(tmp_path, early):
  """The file route of a stop (search.Stopper's early stop; a signal to a Ray
  sweep, whose cancel of a running task is best effort): one SIGTERM, and only
  an early stop counts the run as stopped early."""
  run_dir = str(tmp_path / 'run')
  done = {}
  thread = threading.Thread(target=lambda: done.update(
      run_process.launch(['-c', _TRAINS_UNTIL_SIGTERM], run_dir)))
  thread.start()
  log = os.path.join(run_dir, 'log.txt')
  deadline = time.time() + 300
  # The child's own line, not the launch header's echo of its command (which
  # holds the word too): only then is its SIGTERM handler in place.
  while not (os.path.exists(log) and 'training' in open(log).read().splitlines()):
    assert time.time() < deadline and thread.is_alive(), 'hang guard'
    time.sleep(0.05)
  run_process.request_stop(run_dir, 'a reason', early=early)
  thread.join(timeout=300)
  assert done['returncode'] == 143 and done['signal'] == signal.SIGTERM, done
  assert done.get('early_stopped') == ('a reason' if early else None)
  assert open(log).read().splitlines().count('SIGTERM') == 1
  assert sweep.stopped_early(done) == early


# The crash grid's run that fails once it starts: its training file is not there.
CRASH = 'data.name=text,data.train_files=no_such_corpus.txt'


def test_a_crashing_run_does_not_stop_the_grid_and_finished_runs_are_skipped(
    config_file, tmp_path):
  workdir = str(tmp_path / 'sweep')
  cmd = [sys.executable, '-m', 'transformer_jax.sweep', f'--config={config_file}',
         '--sweep=crash', f'--workdir={workdir}']
  first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert first.returncode == 1, first.stderr[-2000:]  # a run failed: the sweep fails.
  assert f'1 of 2 runs failed: {CRASH}' in first.stderr
  assert '[1/2] model.num_heads=2: ok' in first.stdout
  # The failed run's own one-line error, where the sweep reports it.
  assert (f'[2/2] {CRASH}: FAILED: no_such_corpus.txt: no such file (config.data.train_files)'
          in first.stdout)
  with open(os.path.join(workdir, 'results.csv')) as f:
    rows = {r['run']: r for r in csv.DictReader(f)}
  assert rows['model.num_heads=2']['status'] == 'ok'
  assert float(rows['model.num_heads=2']['eval_loss']) > 0
  assert rows[CRASH]['status'] == 'failed'

  again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert again.returncode == 1, again.stderr[-2000:]
  assert '1 of 2 runs finished earlier with this config: skipped.' in again.stdout
  assert '[1/2]' not in again.stdout  # skipped: not re-run.
  assert f'[2/2] {CRASH}: FAILED' in again.stdout  # failed runs retry.
  # Every launch's log is kept.
  with open(os.path.join(workdir, 'runs', CRASH, 'log.txt')) as f:
    log = f.read()
  assert log.count('=== launched') == 2 and log.count('no_such_corpus.txt: no such file') == 2


def test_report_only_before_any_run_says_the_runs_have_not_run(config_file, tmp_path):
  workdir = str(tmp_path / 'sweep')
  out = subprocess.run([sys.executable, '-m', 'transformer_jax.sweep', f'--config={config_file}',
                        '--sweep=seed', f'--workdir={workdir}', '--report_only'],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1] == (
      '1 of 1 runs have not run yet: seed=0; launch the same command without --report_only '
      'to run them.')
  with open(os.path.join(workdir, 'results.csv')) as f:
    assert [r['status'] for r in csv.DictReader(f)] == ['not run']


def test_an_unknown_command_line_override_names_the_section_fields(config_file):
  with pytest.raises(config_lib.ConfigError) as error:
    sweep.requested_config(config_file, sweep.Run({}), ['--config.model.foo=1'])
  fields = ', '.join(sorted(config_lib.base_config().model))
  assert str(error.value).endswith(
      f'do not work: config.model.foo is not a config field; config.model has {fields}.')


def test_a_torn_status_file_counts_as_not_finished(tmp_path):
  """A sweep killed while it wrote a run's status: the relaunch launches the run
  again (it resumes from its checkpoint) and reports it, instead of failing."""
  requested = config_lib.base_config()
  run_dir = tmp_path / 'seed=0'
  run_dir.mkdir()
  (run_dir / 'config.json').write_text(requested.to_json_best_effort(sort_keys=True))
  (run_dir / sweep.STATUS_FILE).write_text('{"returncode": 0, "seco')
  assert not sweep.finished(str(run_dir), requested)
  assert sweep.summarise(sweep.Run({'seed': 0}), str(run_dir))['status'] == 'not run'


def test_grid_report_has_table_csv_and_plots(config_file, tmp_path):
  workdir = str(tmp_path / 'grid')
  rows = sweep.run_sweep(config_file, 'grid', workdir, ['--config.total_steps=2',
                                                        '--config.eval_every=2'])
  assert len(rows) == 4 and all(r['status'] == 'ok' for r in rows)
  assert len({r['params'] for r in rows}) == 1  # heads do not change parameters.
  losses = {(r['model.num_heads'], r['seed']): r['eval_loss'] for r in rows}
  assert losses[(1, 0)] != losses[(1, 1)]  # seeds differ.
  table = open(os.path.join(workdir, 'results.md')).read()
  assert table.count('\n') == 2 + 2  # header, rule, one line per head count.
  assert '±' in table and '2/2' in table
  for png in ('loss_vs_num_heads.png', 'learning_curves.png'):
    with open(os.path.join(workdir, png), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_a_relaunch_skips_only_runs_finished_with_the_requested_config(config_file, tmp_path,
                                                                      capsys):
  workdir = str(tmp_path / 'seed')
  log = os.path.join(workdir, 'runs', 'seed=0', 'log.txt')
  rows = sweep.run_sweep(config_file, 'seed', workdir, ['--config.total_steps=2'])
  assert rows[0]['status'] == 'ok' and rows[0]['train_step'] == 2
  assert os.path.exists(os.path.join(workdir, 'loss_vs_seed.png'))  # a seed-only grid plots.

  # A longer run is another config: the run resumes and trains on.
  rows = sweep.run_sweep(config_file, 'seed', workdir, ['--config.total_steps=4'])
  assert rows[0]['status'] == 'ok' and rows[0]['train_step'] == 4
  assert 'resuming at step 2 of 4' in open(log).read()

  capsys.readouterr()
  sweep.run_sweep(config_file, 'seed', workdir, ['--config.total_steps=4'])
  assert '1 of 1 runs finished earlier with this config: skipped.' in capsys.readouterr().out

  # A changed model cannot resume that workdir: the run fails in one line, reported.
  rows = sweep.run_sweep(config_file, 'seed', workdir,
                         ['--config.total_steps=4', '--config.model.d_model=32'])
  assert rows[0]['status'] == 'failed'
  out = capsys.readouterr().out
  assert 'seed=0: FAILED: Config error:' in out and 'model.d_model (checkpoint 16, now 32)' in out
  assert open(log).read().count('=== launched') == 3  # every launch's log kept.


def test_ctrl_c_reaches_the_training_run_which_saves_before_the_sweep_stops(config_file,
                                                                              tmp_path):
  workdir = str(tmp_path / 'stopped')
  run_dir = os.path.join(workdir, 'runs', 'seed=0')
  process = subprocess.Popen(
      [sys.executable, '-m', 'transformer_jax.sweep', f'--config={config_file}', '--sweep=seed',
       f'--workdir={workdir}', '--config.total_steps=100000', '--config.log_every=1',
       '--config.checkpoint_every=100000', '--config.eval_every=100000'],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 600  # a hang guard.
  while not (os.path.exists(os.path.join(run_dir, 'metrics.jsonl'))
             and len(open(os.path.join(run_dir, 'metrics.jsonl')).readlines()) >= 3):
    assert process.poll() is None and time.time() < deadline, process.communicate()
    time.sleep(0.1)
  process.send_signal(signal.SIGINT)
  out, err = process.communicate(timeout=300)
  assert process.returncode == 128 + signal.SIGINT, err[-3000:]
  saved = [int(n) for n in os.listdir(os.path.join(run_dir, 'checkpoints')) if n.isdigit()]
  assert len(saved) == 1
  # What really happened, in the run's line and the sweep's last line.
  assert f'[1/1] seed=0: stopped by SIGINT (exit 130): Saved a checkpoint at step {saved[0]}' in out
  assert err.strip().splitlines()[-1].startswith(
      'Sweep stopped by SIGINT: 0 of 1 runs finished; saved a checkpoint and stopped: seed=0. '
      f'The report in {workdir} covers the finished runs; launch the same command to go on')
  with open(os.path.join(run_dir, 'log.txt')) as f:
    assert f'Saved a checkpoint at step {saved[0]}' in f.read()
  with open(os.path.join(run_dir, sweep.STATUS_FILE)) as f:
    assert json.load(f)['returncode'] == 128 + signal.SIGINT  # not finished: relaunch resumes.
  with open(os.path.join(workdir, 'results.csv')) as f:  # the report is written at once.
    assert [r['status'] for r in csv.DictReader(f)] == ['stopped']


def _fake_run(runs_dir, run, loss, seconds=1.0):
  """A run directory as a finished run leaves it (records and status only)."""
  run_dir = os.path.join(runs_dir, run.name)
  os.makedirs(run_dir)
  with open(os.path.join(run_dir, 'metrics.jsonl'), 'w') as f:
    for step in (1, 2):
      f.write(json.dumps({'step': step, 'split': 'eval', 'loss': loss + 1 / step}) + '\n')
  with open(os.path.join(run_dir, sweep.STATUS_FILE), 'w') as f:
    json.dump({'returncode': 0, 'seconds': seconds}, f)


@pytest.mark.parametrize('grid,plot_name', [
    ({'seed': [0, 1, 2]}, 'loss_vs_seed.png'),
    ({'model.norm': ['pre', 'post'], 'seed': [0, 1]}, 'loss_vs_norm.png'),
    ({'model.num_heads': [1, 2], 'model.norm': ['pre', 'post'], 'model.ffn_ratio': [1, 4],
      'seed': [0]}, 'loss_vs_num_heads.png'),
    ([{'model.num_heads': 2}, {'model.norm': 'pre'}], 'loss_vs_num_heads.png'),
])
def test_every_grid_shape_reports_and_plots(tmp_path, grid, plot_name):
  runs = sweep.expand(grid)
  runs_dir = tmp_path / 'runs'
  for i, run in enumerate(runs):
    _fake_run(str(runs_dir), run, loss=2.0 + 0.1 * i)
  rows = sweep.report(runs, str(tmp_path), 'loss')
  assert len(rows) == len(runs) and all(r['status'] == 'ok' for r in rows)
  for png in (plot_name, 'learning_curves.png'):
    with open(tmp_path / png, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_the_report_names_a_bad_record_file(tmp_path):
  runs = sweep.expand({'seed': [0]})
  _fake_run(str(tmp_path / 'runs'), runs[0], loss=2.0)
  path = tmp_path / 'runs' / 'seed=0' / 'metrics.jsonl'
  path.write_text(path.read_text().replace('"eval"', '"eval', 1))
  with pytest.raises(run_log.RecordError, match=f'{path} line 1'):
    sweep.report(runs, str(tmp_path), 'loss')


def test_the_table_keeps_the_runs_own_eval_when_a_test_split_eval_is_added(tmp_path):
  """A --mode=eval on the test split, or on a few batches, is recorded with how
  it measured (evaluation.eval_measure) and never stands in for the run's own
  (validation, full) eval in the sweep's row; an eval measured the same way does."""
  from transformer_jax import configs  # pylint: disable=g-import-not-at-top
  from transformer_jax import evaluation  # pylint: disable=g-import-not-at-top
  from transformer_jax import trainer  # pylint: disable=g-import-not-at-top
  config = configs.load('digits_vit:quick')
  config.update(total_steps=4, eval_every=4, checkpoint_every=4, log_every=2, eval_steps=0)
  run, = sweep.expand({'seed': [0]})
  workdir = str(tmp_path / 'runs' / run.name)
  trainer.train(config, workdir)
  with open(os.path.join(workdir, sweep.STATUS_FILE), 'w') as f:
    json.dump({'returncode': 0, 'seconds': 1.0}, f)
  own, = run_log.read_jsonl(workdir, 'eval')
  assert own['eval_split'] == 'validation' and 'eval_steps' not in own
  for overrides in ({'data.eval_split': 'test'}, {'eval_steps': 1}, {}):
    changed = override(config, overrides)
    evaluation.record_eval(changed, workdir, evaluation.evaluate_checkpoint(changed, workdir))
  records = run_log.read_jsonl(workdir, 'eval')
  assert [(r.get('eval_split'), r.get('eval_steps')) for r in records] == [
      ('validation', None), ('test', None), ('validation', 1), ('validation', None)]
  assert records[1]['loss'] != own['loss'] and records[2]['loss'] != own['loss']
  row = sweep.summarise(run, workdir)
  assert row['eval_loss'] == records[3]['loss'] == pytest.approx(own['loss'])
  assert 'eval_eval_steps' not in row
