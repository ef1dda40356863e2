"""Ablation runner: a grid of config overrides, one process per run, and its report.

A sweep is declared next to its config: `get_sweep(name)` returns either a grid,
a dict {config key: [values]} whose product is run (`seed` is an axis like any
other), or an explicit list of override dicts.

  python -m transformer_jax.sweep --config=shakespeare_char \
      --sweep=ffn_x_heads --workdir=runs/ffn_x_heads [--config.total_steps=300 ...]

Each run trains in its own process (`python -m transformer_jax.main`), so a
crash of one run does not kill the grid; a run that finished is skipped when the
command is launched again. Then the report: `results.csv` (one row per run),
`results.md` (mean +/- std over seeds, with parameters and FLOPs per token so
capacity effects can be told from shape effects) and PNG plots.
"""

import csv
import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from absl import app
from absl import flags

from transformer_jax import config as config_lib
from transformer_jax import configs

_CONFIG = flags.DEFINE_string('config', None, 'Experiment config: a name in '
                               'transformer_jax/configs/, a module or a .py file; optionally :arg.')
_SWEEP = flags.DEFINE_string('sweep', None, 'Name passed to the config file\'s get_sweep().')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where the runs and the report go.')
_METRIC = flags.DEFINE_string('metric', 'loss', 'Eval metric the table and plots report.')
_REPORT_ONLY = flags.DEFINE_bool('report_only', False, 'Only rebuild the report.')

STATUS_FILE = 'sweep_status.json'


@dataclasses.dataclass
class Run:
  """One point of the grid: its overrides and its directory name."""
  overrides: Dict[str, Any]

  @property
  def name(self) -> str:
    return ','.join(f'{k}={v}' for k, v in self.overrides.items())


def expand(spec) -> List[Run]:
  """A grid dict {key: [values]} -> its product; a list of dicts -> those runs."""
  if isinstance(spec, dict):
    keys = list(spec)
    return [Run(dict(zip(keys, values))) for values in itertools.product(*spec.values())]
  return [Run(dict(overrides)) for overrides in spec]


def apply_overrides(config, overrides: Dict[str, Any]):
  """Sets dotted keys ('model.num_heads') on a ConfigDict; a missing key is an error."""
  for key, value in overrides.items():
    parent = config
    *path, leaf = key.split('.')
    try:
      for part in path:
        parent = parent[part]
      if leaf not in parent:
        raise KeyError(key)
    except (KeyError, AttributeError) as e:
      raise config_lib.ConfigError(
          f'sweep override {key}={value!r} names no config field; fix the key in get_sweep().'
      ) from e
    parent[leaf] = value
  return config


def check_runs(base, runs: Sequence[Run]):
  """Every run's overrides name existing fields and give a config that validates."""
  for run in runs:
    config_lib.validate(apply_overrides(base.copy_and_resolve_references(), run.overrides))


def check_extra(config_path: str, extra: Sequence[str]):
  """Command-line overrides for every run are checked once, by describing the model."""
  out = subprocess.run([sys.executable, '-m', 'transformer_jax.main', f'--config={config_path}',
                        '--mode=describe', *extra], capture_output=True, text=True)
  if out.returncode != 0:
    lines = out.stderr.strip().splitlines() or ['(no output)']
    raise config_lib.ConfigError(f'the overrides {" ".join(extra)} do not work: {lines[-1]}')


def fixed_params_grid(base, ffn_ratios: Sequence[float], scale: str = 'num_layers',
                      seeds: Sequence[int] = (0,)) -> List[Dict[str, Any]]:
  """Runs that vary ffn_ratio while holding the parameter count about fixed.

  For each ratio, `scale` ('num_layers' or 'd_model') is set to the value whose
  parameter count is closest to the base config's, so d_ff is traded against
  depth or width. Parameters grow with either, so the value is found by bisection.
  """
  from transformer_jax.models import accounting  # pylint: disable=g-import-not-at-top
  target = accounting.count_params(base.model)
  runs = []
  for ratio in ffn_ratios:
    def params_at(value, ratio=ratio):
      m = base.model.copy_and_resolve_references()
      m.ffn_ratio, m[scale] = ratio, value
      return accounting.count_params(m)

    if scale == 'num_layers':
      candidates = list(range(1, 4 * base.model.num_layers + 1))
    else:
      step = base.model.num_heads
      candidates = [d for d in range(step, 4 * base.model.d_model + 1, step)
                    if abs(ratio * d - round(ratio * d)) < 1e-9]
    lo, hi = 0, len(candidates) - 1
    while lo < hi:  # first candidate with at least the target's parameters.
      mid = (lo + hi) // 2
      if params_at(candidates[mid]) < target:
        lo = mid + 1
      else:
        hi = mid
    nearby = candidates[max(lo - 1, 0):lo + 1]
    best = min(nearby, key=lambda v: abs(params_at(v) - target))
    for seed in seeds:
      runs.append({'model.ffn_ratio': ratio, f'model.{scale}': best, 'seed': seed})
  return runs


def launch(config_path: str, run: Run, run_dir: str, extra: Sequence[str]) -> dict:
  """Trains one run in its own process; returns and stores its status."""
  os.makedirs(run_dir, exist_ok=True)
  cmd = [sys.executable, '-m', 'transformer_jax.main', f'--config={config_path}',
         f'--workdir={run_dir}', *[f'--config.{k}={v}' for k, v in run.overrides.items()],
         *extra]
  start = time.time()
  with open(os.path.join(run_dir, 'log.txt'), 'w') as log:
    returncode = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
  status = {'returncode': returncode, 'seconds': time.time() - start, 'command': cmd}
  with open(os.path.join(run_dir, STATUS_FILE), 'w') as f:
    json.dump(status, f)
  return status


def finished(run_dir: str) -> bool:
  path = os.path.join(run_dir, STATUS_FILE)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return json.load(f)['returncode'] == 0


def read_metrics(run_dir: str) -> List[dict]:
  path = os.path.join(run_dir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def summarise(run: Run, run_dir: str) -> dict:
  """One results.csv row: the overrides, capacity, and the last train/eval metrics.

  Capacity comes from the run's own resolved config (`config.json`).
  """
  from transformer_jax.models import accounting  # pylint: disable=g-import-not-at-top
  row = dict(run.overrides)
  config_path = os.path.join(run_dir, 'config.json')
  if os.path.exists(config_path):
    with open(config_path) as f:
      config = config_lib.from_saved(json.load(f))
    row['params'] = accounting.count_params(config.model)
    row['flops_per_token'] = accounting.flops_per_token(config.model, config.seq_len)
  records = read_metrics(run_dir)
  for split in ('train', 'eval'):
    last = [r for r in records if r.get('split') == split]
    if last:
      for k, v in last[-1].items():
        if k != 'split' and isinstance(v, (int, float)):
          row[f'{split}_{k}'] = v
  status_path = os.path.join(run_dir, STATUS_FILE)
  status = {}
  if os.path.exists(status_path):
    with open(status_path) as f:
      status = json.load(f)
  row['status'] = 'ok' if status.get('returncode') == 0 else 'failed'
  row['seconds'] = round(status.get('seconds', float('nan')), 1)
  row['run'] = run.name
  return row


def _order(value):
  """Sort numbers numerically and anything else by its text."""
  return (0, value, '') if isinstance(value, (int, float)) else (1, 0, str(value))


def mean_std(values: Sequence[float]) -> str:
  values = [v for v in values if v is not None and not math.isnan(v)]
  if not values:
    return 'n/a'
  mean = sum(values) / len(values)
  std = math.sqrt(sum((v - mean)**2 for v in values) / max(len(values) - 1, 1))
  return f'{mean:.4f} ± {std:.4f}' if len(values) > 1 else f'{mean:.4f}'


def markdown_table(rows: List[dict], axes: List[str], metric: str) -> str:
  """Mean +/- std over seeds for each setting of the other axes."""
  group_axes = [a for a in axes if a != 'seed']
  groups: Dict[tuple, List[dict]] = {}
  for row in rows:
    groups.setdefault(tuple(row.get(a, '') for a in group_axes), []).append(row)
  column = f'eval_{metric}'
  header = group_axes + ['params', 'flops/token', f'eval {metric} (mean ± std)', 'train loss',
                         'seeds']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for key, members in sorted(groups.items(), key=lambda kv: [_order(k) for k in kv[0]]):
    ok = [r for r in members if r['status'] == 'ok']
    cells = [str(k) for k in key] + [
        f"{members[0].get('params', float('nan')):,}",
        f"{members[0].get('flops_per_token', float('nan')):.3g}",
        mean_std([r.get(column) for r in ok]), mean_std([r.get('train_loss') for r in ok]),
        f'{len(ok)}/{len(members)}'
    ]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def plot(rows: List[dict], axes: List[str], metric: str, workdir: str, runs_dir: str):
  """metric vs the first axis, one line per value of the second; and learning curves."""
  # Figure objects, not pyplot: no backend is chosen for (or forced on) the caller.
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  group_axes = [a for a in axes if a != 'seed']
  column = f'eval_{metric}'
  x_axis = group_axes[0]
  line_axis = group_axes[1] if len(group_axes) > 1 else None
  rows = [r for r in rows if x_axis in r]
  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  for line_value in sorted({r.get(line_axis) for r in rows}, key=str):
    xs, means, stds = [], [], []
    for x in sorted({r[x_axis] for r in rows}):
      values = [r[column] for r in rows if r[x_axis] == x and r.get(line_axis) == line_value
                and r['status'] == 'ok' and column in r]
      if values:
        mean = sum(values) / len(values)
        xs.append(x)
        means.append(mean)
        stds.append(math.sqrt(sum((v - mean)**2 for v in values) / max(len(values) - 1, 1)))
    label = f'{line_axis}={line_value}' if line_axis else None
    ax.errorbar(xs, means, yerr=stds, marker='o', capsize=3, label=label)
  ax.set_xlabel(x_axis)
  ax.set_ylabel(f'final eval {metric}')
  if all(isinstance(r[x_axis], (int, float)) and r[x_axis] > 0 for r in rows):
    ax.set_xscale('log', base=2)
  if line_axis:
    ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, f'{metric}_vs_{x_axis.split(".")[-1]}.png'), dpi=120)

  fig = Figure(figsize=(8, 4.5))
  ax = fig.subplots()
  cmap = colormaps['viridis']
  settings = sorted({tuple(r.get(a) for a in group_axes) for r in rows}, key=str)
  labelled = set()
  curves = {row['run']: read_metrics(os.path.join(runs_dir, row['run'])) for row in rows}
  # Eval curves when every run evaluated at least twice, else the train-loss curves.
  split = 'eval' if all(sum(r.get('split') == 'eval' and metric in r for r in records) >= 2
                        for records in curves.values() if records) else 'train'
  for row in rows:
    records = [r for r in curves[row['run']] if r.get('split') == split and metric in r]
    if records:
      setting = tuple(row.get(a) for a in group_axes)
      label = None if setting in labelled else ', '.join(
          f'{a.split(".")[-1]}={v}' for a, v in zip(group_axes, setting))
      labelled.add(setting)
      ax.plot([r['step'] for r in records], [r[metric] for r in records],
              color=cmap(settings.index(setting) / max(len(settings) - 1, 1)),
              alpha=0.7, lw=1, label=label)
  ax.set_xlabel('step')
  ax.set_ylabel(f'{split} {metric}')
  ax.set_title('learning curves (one colour a setting, one line a seed)')
  ax.grid(alpha=0.3)
  if labelled:
    ax.legend(fontsize=6, ncol=2, loc='center left', bbox_to_anchor=(1.01, 0.5))
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, 'learning_curves.png'), dpi=120)


def report(runs: List[Run], workdir: str, metric: str) -> List[dict]:
  """Writes results.csv, results.md and the plots; returns the rows."""
  runs_dir = os.path.join(workdir, 'runs')
  rows = [summarise(run, os.path.join(runs_dir, run.name)) for run in runs]
  axes = list(dict.fromkeys(k for run in runs for k in run.overrides))
  fields = sorted({k for r in rows for k in r}, key=lambda k: (k not in axes, k))
  with open(os.path.join(workdir, 'results.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(markdown_table(rows, axes, metric))
  plot(rows, axes, metric, workdir, runs_dir)
  return rows


def run_sweep(config_path: str, sweep: Optional[str], workdir: str, extra_args: Sequence[str],
              metric: str = 'loss', report_only: bool = False) -> List[dict]:
  module = configs.load_module(config_path)
  if not hasattr(module, 'get_sweep'):
    raise config_lib.ConfigError(f'{config_path} has no get_sweep(); declare the grid there.')
  runs = expand(module.get_sweep(sweep) if sweep else module.get_sweep())
  base = configs.load(config_path)
  check_runs(base, runs)
  if extra_args and not report_only:
    check_extra(config_path, extra_args)
  os.makedirs(os.path.join(workdir, 'runs'), exist_ok=True)
  if not report_only:
    todo = [(i, run) for i, run in enumerate(runs)
            if not finished(os.path.join(workdir, 'runs', run.name))]
    if len(todo) < len(runs):
      print(f'{len(runs) - len(todo)} of {len(runs)} runs finished earlier: skipped.', flush=True)
    spent = 0.0
    for done, (i, run) in enumerate(todo, start=1):
      status = launch(config_path, run, os.path.join(workdir, 'runs', run.name), extra_args)
      spent += status['seconds']
      eta = spent / done * (len(todo) - done)
      print(f'[{i + 1}/{len(runs)}] {run.name}: '
            f"{'ok' if status['returncode'] == 0 else 'FAILED (see log.txt)'} "
            f"in {status['seconds']:.0f}s; about {eta / 60:.0f} min left", flush=True)
  rows = report(runs, workdir, metric)
  print(open(os.path.join(workdir, 'results.md')).read())
  return rows


def main(argv):
  if not _CONFIG.value or not _WORKDIR.value:
    raise app.UsageError('--config and --workdir are required.')
  try:
    run_sweep(_CONFIG.value, _SWEEP.value, _WORKDIR.value, argv[1:], _METRIC.value,
              _REPORT_ONLY.value)
  except (config_lib.ConfigError, FileNotFoundError) as e:
    print(f'Sweep error: {e}', file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=lambda argv: flags.FLAGS(argv, known_only=True))
