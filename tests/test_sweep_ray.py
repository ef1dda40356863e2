"""The sweep on Ray: a real two-node Ray cluster on 127.0.0.1 (one CPU each),
the same grid as the local executor bitwise, a killed run retried by Ray and
resumed exactly, and a sweep stopped by Ctrl-C and relaunched losing nothing."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from ray import cluster_utils

from transformer_jax import run_log
from transformer_jax import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Ray resolves a 127.0.0.1 address to this host's outward address unless it is
# told it runs no multi-host cluster; with this, the sweep's driver stays on loopback.
DRIVER_ENV = {'RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER': '0', 'RAY_USAGE_STATS_ENABLED': '0'}
HANG_GUARD = 600  # seconds; a run takes a few.
# One cluster and one reference grid for the module: its tests go to one xdist
# worker (pytest -n 2 --dist loadgroup, as CI runs them).
pytestmark = pytest.mark.xdist_group('ray_cluster')


@pytest.fixture(scope='module')
def config_file(tmp_path_factory):
  """A tiny char LM; 300 steps, each logged, a checkpoint every 20."""
  path = tmp_path_factory.mktemp('config') / 'tiny_ray_sweep.py'
  path.write_text(textwrap.dedent('''
      from transformer_jax import search
      from transformer_jax.configs import shakespeare_char

      def get_config():
        c = shakespeare_char.get_config()
        c.model.update(num_layers=1, d_model=16, max_len=16, num_heads=2)
        c.update(seq_len=16, batch_size=4, total_steps=300, warmup_steps=2, log_every=1,
                 eval_every=300, eval_steps=2, checkpoint_every=20, num_samples=0)
        return c

      def get_sweep(name='grid'):
        if name == 'grid':
          return {'model.num_heads': [1, 2], 'seed': [0, 1]}
        if name == 'one':
          return [{'model.num_heads': 2, 'seed': 0}]
        if name == 'asha':  # one good learning rate, three that barely move the weights.
          return search.Search({'learning_rate': [1e-2, 1e-9, 1e-10, 1e-11]},
                               early_stopping=search.ASHA('loss', 'min', grace_period=20,
                                                          reduction_factor=2))
        return [{'seed': 0, 'total_steps': 4}, {'seed': 1, 'total_steps': 1500}]  # 'stop'.
  '''))
  return str(path)


@pytest.fixture(scope='module')
def cluster():
  """Two Ray nodes of one CPU each, all on 127.0.0.1, no dashboard; shut down after."""
  previous = os.environ.get('RAY_USAGE_STATS_ENABLED')
  os.environ['RAY_USAGE_STATS_ENABLED'] = '0'
  local = cluster_utils.Cluster(initialize_head=True, head_node_args={
      'node_ip_address': '127.0.0.1', 'num_cpus': 1, 'include_dashboard': False})
  try:
    local.add_node(node_ip_address='127.0.0.1', num_cpus=1)
    yield local
  finally:
    local.shutdown()
    if previous is None:
      del os.environ['RAY_USAGE_STATS_ENABLED']
    else:
      os.environ['RAY_USAGE_STATS_ENABLED'] = previous


@pytest.fixture(scope='module')
def local_grid(config_file, tmp_path_factory):
  """The grid run by the local executor: the reference."""
  workdir = str(tmp_path_factory.mktemp('local'))
  rows = sweep.run_sweep(config_file, 'grid', workdir, [])
  assert all(r['status'] == 'ok' for r in rows)
  return workdir


def _sweep(config_file, cluster, workdir, name, *extra, **popen):
  args = [sys.executable, '-m', 'transformer_jax.sweep', f'--config={config_file}',
          f'--sweep={name}', f'--workdir={workdir}', '--executor=ray',
          f'--ray_address={cluster.address}', '--run_resources={"CPU": 1}', *extra]
  return subprocess.Popen(args, cwd=REPO, env={**os.environ, **DRIVER_ENV}, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def _losses(run_dir):
  return [(r['step'], r['loss']) for r in run_log.read_jsonl(run_dir, 'train')]


def _status(run_dir):
  with open(os.path.join(run_dir, sweep.STATUS_FILE)) as f:
    return json.load(f)


def _wait_for(condition, process):
  deadline = time.time() + HANG_GUARD
  while not condition():
    assert process.poll() is None, process.communicate()
    assert time.time() < deadline, 'hang guard'
    time.sleep(0.02)


def test_a_grid_on_two_ray_nodes_equals_the_local_executor_bitwise(config_file, cluster,
                                                                    local_grid, tmp_path):
  workdir = str(tmp_path)
  process = _sweep(config_file, cluster, workdir, 'grid')
  out, err = process.communicate(timeout=HANG_GUARD)
  assert process.returncode == 0, err[-3000:]
  runs = sweep.expand({'model.num_heads': [1, 2], 'seed': [0, 1]})
  nodes = {_status(os.path.join(workdir, 'runs', r.name))['node_id'] for r in runs}
  assert len(nodes) == 2  # both nodes trained runs.
  for run in runs:
    ray_losses = _losses(os.path.join(workdir, 'runs', run.name))
    assert [s for s, _ in ray_losses] == list(range(1, 301))
    assert ray_losses == _losses(os.path.join(local_grid, 'runs', run.name))
    assert f'{run.name}: ok, eval loss ' in out  # the live view's line, with where it ran:
  assert ', node ' in out  # (the bar shows on a terminal or in a notebook: progress.py)
  with open(os.path.join(workdir, 'results.md')) as ours, \
      open(os.path.join(local_grid, 'results.md')) as theirs:
    assert ours.read() == theirs.read()


def test_a_killed_training_process_is_retried_by_ray_and_resumes_exactly(config_file, cluster,
                                                                         local_grid, tmp_path):
  workdir = str(tmp_path)
  run_dir = os.path.join(workdir, 'runs', 'model.num_heads=2,seed=0')
  process = _sweep(config_file, cluster, workdir, 'one')
  checkpoints = os.path.join(run_dir, 'checkpoints')
  _wait_for(lambda: os.path.isdir(checkpoints) and '20' in os.listdir(checkpoints), process)
  with open(os.path.join(run_dir, 'lock')) as f:
    os.kill(json.load(f)['pid'], signal.SIGKILL)  # the training process, mid-run.
  last = max(int(n) for n in os.listdir(checkpoints) if n.isdigit())
  out, err = process.communicate(timeout=HANG_GUARD)
  assert process.returncode == 0, err[-3000:]
  with open(os.path.join(run_dir, 'log.txt')) as f:
    log = f.read()
  assert log.count('=== launched') == 2  # Ray launched it again ...
  assert f'resuming at step {last} of 300' in log  # ... and it resumed,
  assert _losses(run_dir) == _losses(os.path.join(local_grid, 'runs', os.path.basename(run_dir)))
  assert _status(run_dir)['returncode'] == 0  # to an uninterrupted run's losses.
  assert '[1/1] model.num_heads=2,seed=0: ok' in out


def test_a_sweep_stopped_by_ctrl_c_saves_reports_and_a_relaunch_loses_nothing(config_file,
                                                                               cluster, tmp_path):
  workdir = str(tmp_path)
  short, long = (os.path.join(workdir, 'runs', f'seed={s},total_steps={n}')
                 for s, n in ((0, 4), (1, 1500)))
  process = _sweep(config_file, cluster, workdir, 'stop')
  _wait_for(lambda: os.path.exists(os.path.join(short, sweep.STATUS_FILE))
            and len(_losses(long) if os.path.exists(os.path.join(long, 'metrics.jsonl'))
                    else []) >= 3, process)
  process.send_signal(signal.SIGINT)
  out, err = process.communicate(timeout=HANG_GUARD)
  assert process.returncode == 128 + signal.SIGINT, err[-3000:]
  saved = int(max((n for n in os.listdir(os.path.join(long, 'checkpoints')) if n.isdigit()),
                  key=int))
  assert f'stopped by SIGTERM (exit 143): Saved a checkpoint at step {saved}' in out
  assert err.strip().splitlines()[-1].startswith(
      'Sweep stopped by SIGINT: 1 of 2 runs finished; saved a checkpoint and stopped: '
      'seed=1,total_steps=1500.')
  with open(os.path.join(workdir, 'results.csv')) as f:
    assert [r['status'] for r in csv.DictReader(f)] == ['ok', 'stopped']

  process = _sweep(config_file, cluster, workdir, 'stop')
  out, err = process.communicate(timeout=HANG_GUARD)
  assert process.returncode == 0, err[-3000:]
  assert '1 of 2 runs finished earlier with this config: skipped.' in out
  with open(os.path.join(long, 'log.txt')) as f:
    assert f'resuming at step {saved} of 1500' in f.read()
  assert [s for s, _ in _losses(long)] == list(range(1, 1501))  # every step, once.


def test_asha_stops_the_runs_that_fall_behind_and_the_report_lists_every_point(
    config_file, cluster, tmp_path):
  workdir = str(tmp_path)
  extra = ('--config.total_steps=200', '--config.eval_every=20')
  process = _sweep(config_file, cluster, workdir, 'asha', *extra)
  out, err = process.communicate(timeout=HANG_GUARD)
  assert process.returncode == 0, err[-3000:]
  with open(os.path.join(workdir, 'results.csv')) as f:
    rows = {float(r['learning_rate']): r for r in csv.DictReader(f)}
  assert sorted(rows) == [1e-11, 1e-10, 1e-9, 1e-2]  # every sampled point, reported.
  assert rows[1e-2]['status'] == 'ok'  # the best trains to the end ...
  good = os.path.join(workdir, 'runs', 'learning_rate=0.01')
  assert _losses(good)[-1][0] == 200
  early = [lr for lr, r in rows.items() if r['status'] == 'stopped early']
  assert early, out  # ... and ASHA stops the ones that fall behind, at a rung:
  for lr in early:
    run_dir = os.path.join(workdir, 'runs', f'learning_rate={lr}')
    status = _status(run_dir)
    decided = re.match(r'stopped early by ASHA at step (\d+) ', status['early_stopped'])
    assert decided and int(decided.group(1)) < 200, status  # at a rung, before the end ...
    assert status['returncode'] == 128 + signal.SIGTERM  # ... then it saved and exited
    assert _losses(run_dir)[-1][0] >= int(decided.group(1))  # (how far it got by then is
    # the machine's pace: a run on a loaded machine may reach its last step first).
    assert status['early_stopped'] in out
  assert 'stopped early)' in open(os.path.join(workdir, 'results.md')).read()
  # A relaunch counts a run stopped early as finished: nothing trains again.
  process = _sweep(config_file, cluster, workdir, 'asha', *extra)
  out, err = process.communicate(timeout=HANG_GUARD)
  assert process.returncode == 0, err[-3000:]
  assert '4 of 4 runs finished earlier with this config: skipped.' in out


def test_early_stopping_refuses_what_asha_cannot_work_with(config_file):
  for asha, problem in ((sweep.ASHA(mode='lowest'), "mode='lowest'"),
                        (sweep.ASHA(grace_period=500), 'grace_period=500'),
                        (sweep.ASHA(reduction_factor=1), 'reduction_factor=1')):
    with pytest.raises(sweep.config_lib.ConfigError, match=problem):
      asha.check(300)


def test_a_search_draws_its_points_with_ray_tune_from_its_seed(capsys):
  from ray import tune  # pylint: disable=g-import-not-at-top
  search = sweep.Search({'model.num_heads': [1, 2],
                         'learning_rate': tune.loguniform(1e-4, 1e-2)}, num_samples=3, seed=0)
  runs = sweep.expand(search)
  assert [r.name for r in runs] == [r.name for r in sweep.expand(search)]  # a relaunch's.
  assert sorted(r.overrides['model.num_heads'] for r in runs) == [1, 1, 1, 2, 2, 2]
  rates = [r.overrides['learning_rate'] for r in runs]
  assert len(set(rates)) == 6 and all(1e-4 <= lr <= 1e-2 for lr in rates)
  assert rates != [r.overrides['learning_rate']
                   for r in sweep.expand(sweep.Search(search.space, 3, seed=1))]
  # A point drawn twice is one run, and the sweep says so.
  runs = sweep.expand(sweep.Search({'seed': tune.choice([0, 1])}, num_samples=8))
  assert sorted(r.overrides['seed'] for r in runs) == [0, 1]
  assert 'drew 6 point(s) twice; each distinct point runs once (2 runs)' in capsys.readouterr().out
