"""The ablation runner: one process per run, crash isolation, skip on re-launch, report."""

import csv
import os
import subprocess
import sys
import textwrap

import pytest

from transformer_jax import config as config_lib
from transformer_jax import sweep
from transformer_jax.models import accounting

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
        return [{{'model.num_heads': 2}}, {{'data.name': 'no_such_dataset'}}]
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
  with pytest.raises(config_lib.ConfigError, match='model.num_head=2 names no config field'):
    sweep.check_runs(base, sweep.expand([{'model.num_head': 2}]))
  with pytest.raises(config_lib.ConfigError, match='num_heads'):
    sweep.check_runs(base, sweep.expand([{'model.num_heads': 7}]))


def test_fixed_params_grid_holds_parameters():
  base = config_lib.base_config()
  base.model.update(variant='decoder', num_layers=4, d_model=128, num_heads=4, vocab_size=96)
  target = accounting.count_params(base.model)
  for scale in ('num_layers', 'd_model'):
    runs = sweep.fixed_params_grid(base, [1.0, 2.0, 4.0, 8.0], scale=scale)
    assert [r['model.ffn_ratio'] for r in runs] == [1.0, 2.0, 4.0, 8.0]
    depths_or_widths = [r[f'model.{scale}'] for r in runs]
    assert depths_or_widths == sorted(depths_or_widths, reverse=True)  # bigger d_ff, less else.
    for overrides in runs:
      m = base.model.copy_and_resolve_references()
      m.ffn_ratio, m[scale] = overrides['model.ffn_ratio'], overrides[f'model.{scale}']
      assert abs(accounting.count_params(m) - target) / target < 0.2


def test_a_crashing_run_does_not_stop_the_grid_and_finished_runs_are_skipped(
    config_file, tmp_path):
  workdir = str(tmp_path / 'sweep')
  cmd = [sys.executable, '-m', 'transformer_jax.sweep', f'--config={config_file}',
         '--sweep=crash', f'--workdir={workdir}']
  first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-2000:]
  assert '[1/2] model.num_heads=2: ok' in first.stdout
  assert '[2/2] data.name=no_such_dataset: FAILED' in first.stdout
  with open(os.path.join(workdir, 'results.csv')) as f:
    rows = {r['run']: r for r in csv.DictReader(f)}
  assert rows['model.num_heads=2']['status'] == 'ok'
  assert float(rows['model.num_heads=2']['eval_loss']) > 0
  assert rows['data.name=no_such_dataset']['status'] == 'failed'

  again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-2000:]
  assert 'model.num_heads=2' not in again.stdout.split('|')[0]  # skipped: not re-run.
  assert '[2/2] data.name=no_such_dataset: FAILED' in again.stdout  # failed runs retry.


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
