"""Ablation runner: a grid of config overrides, one process per run, and its report.

A sweep is declared next to its config: `get_sweep(name)` returns either a grid,
a dict {config key: [values]} whose product is run (`seed` is an axis like any
other), or an explicit list of override dicts.

  python -m transformer_jax.sweep --config=shakespeare_char \
      --sweep=ffn_x_heads --workdir=runs/ffn_x_heads [--config.total_steps=300 ...]

Each run trains in its own process (`python -m transformer_jax.main`), so a
crash of one run does not kill the grid. Launched again, the sweep skips a run
only if it finished with exactly the config now requested (its resolved config
in config.json equals the grid point's with the command's overrides); any other
run is launched again and resumes from its checkpoint (a longer
`--config.total_steps` trains on) or fails in one line (a changed model needs
another --workdir). Each launch appends to the run's log.txt, nothing is
overwritten. SIGTERM or Ctrl-C goes to the training run, which saves a
checkpoint; the sweep waits for it, then stops (launch it again to go on). The
sweep exits non-zero when any run failed. Then the report: `results.csv` (one
row per run), `results.md` (mean +/- std over seeds, with parameters and FLOPs
per token so capacity effects can be told from shape effects) and PNG plots,
for any grid shape (a seed-only grid included).
"""

import csv
import dataclasses
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from transformer_jax import config as config_lib
from transformer_jax import configs
from transformer_jax import run_log

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
    unknown = config_lib.unknown_override(config, [f'--config.{key}'])
    if unknown:
      raise config_lib.ConfigError(f'sweep override {key}={value!r}: {unknown} Fix the key in '
                                   'get_sweep().')
    *path, leaf = key.split('.')
    parent = config
    for part in path:
      parent = parent[part]
    parent[leaf] = value
  return config


def _config_args(extra: Sequence[str]) -> List[str]:
  """The --config.* overrides among the extra command-line arguments."""
  out, args = [], list(extra)
  for i, arg in enumerate(args):
    if arg.startswith('--config.'):
      out.append(arg)
      if '=' not in arg and i + 1 < len(args):
        out.append(args[i + 1])
  return out


def requested_config(config_path: str, run: Run, extra: Sequence[str]):
  """The resolved config a run is launched with: the base config, the grid
  point and the command's --config.* overrides, parsed as main parses them.

  Raises:
    ConfigError: an override names no field, does not parse or fails validation.
  """
  args = ['sweep', *[f'--config.{k}={v}' for k, v in run.overrides.items()],
          *_config_args(extra)]
  config = configs.load(config_path)
  values = flags.FlagValues()
  try:
    config_flags.DEFINE_config_dict('config', config, flag_values=values, sys_argv=args)
    values(args)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    message = config_lib.unknown_override(config, args) or ' '.join(str(e).split())
    raise config_lib.ConfigError(f'the overrides of run {run.name or "(base)"} '
                                 f'({" ".join(args[1:])}) do not work: {message}') from None
  config = values.config
  config_lib.validate(config)
  return config


def check_runs(base, runs: Sequence[Run]):
  """Every run's overrides name existing fields and give a config that validates."""
  for run in runs:
    config_lib.validate(apply_overrides(base.copy_and_resolve_references(), run.overrides))


class _Forward:
  """While a run trains: SIGTERM / Ctrl-C go to the run (in its own session, so
  a terminal's Ctrl-C reaches it only this way, once), which saves and exits;
  the sweep then stops. A second signal is forwarded too (the run exits at once)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, process: subprocess.Popen):
    self.process, self.signum, self._previous = process, None, {}

  def _handle(self, signum, frame):
    del frame
    self.signum = signum
    print(f'\nReceived {signal.Signals(signum).name}: passed to the training run, which saves '
          'a checkpoint; the sweep stops after it.', flush=True)
    if self.process.poll() is None:
      self.process.send_signal(signum)

  def __enter__(self):
    for s in self.SIGNALS:
      self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    return False


def _last_line(path: str, start: int) -> str:
  """The last non-empty line written to `path` after byte `start`."""
  with open(path, encoding='utf-8', errors='replace') as f:
    f.seek(start)
    lines = [line.strip() for line in f.read().splitlines() if line.strip()]
  return lines[-1] if lines else '(no output)'


def launch(config_path: str, run: Run, run_dir: str, extra: Sequence[str]) -> dict:
  """Trains one run in its own process; returns and stores its status.

  The run's output is appended to its log.txt under a header naming the launch.
  The status has `signal` set when the sweep was stopped by one meanwhile.
  """
  os.makedirs(run_dir, exist_ok=True)
  cmd = [sys.executable, '-m', 'transformer_jax.main', f'--config={config_path}',
         f'--workdir={run_dir}', *[f'--config.{k}={v}' for k, v in run.overrides.items()],
         *extra]
  start = time.time()
  log_path = os.path.join(run_dir, 'log.txt')
  with open(log_path, 'a') as log:
    log.write(f'=== launched {time.strftime("%Y-%m-%d %H:%M:%S")}: {" ".join(cmd)}\n')
    log.flush()
    offset = log.tell()
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    with _Forward(process) as forward:
      returncode = process.wait()
  status = {'returncode': returncode, 'seconds': time.time() - start, 'command': cmd,
            'signal': forward.signum}
  if returncode != 0:
    status['last_line'] = _last_line(log_path, offset)
  run_log.write_atomically(os.path.join(run_dir, STATUS_FILE), json.dumps(status))
  return status


def _read_status(run_dir: str) -> dict:
  """The run's last launch status ({} if never launched, or if the file does
  not read: the run then counts as not finished, and is launched again)."""
  try:
    with open(os.path.join(run_dir, STATUS_FILE)) as f:
      status = json.load(f)
  except (OSError, ValueError):
    return {}
  return status if isinstance(status, dict) else {}


def finished(run_dir: str, requested) -> bool:
  """Whether the run in `run_dir` finished (exit 0) with exactly the `requested` config."""
  config_path = os.path.join(run_dir, 'config.json')
  if _read_status(run_dir).get('returncode') != 0 or not os.path.exists(config_path):
    return False
  with open(config_path) as f:
    return json.load(f) == json.loads(requested.to_json_best_effort(sort_keys=True))


def read_metrics(run_dir: str) -> List[dict]:
  """The run's records ([] before its first); a bad line is a RecordError naming it."""
  try:
    return run_log.read_jsonl(run_dir)
  except FileNotFoundError:
    return []


def summarise(run: Run, run_dir: str) -> dict:
  """One results.csv row: the overrides, capacity, and the last train/eval metrics.

  Capacity comes from the run's own resolved config (`config.json`). The eval
  columns come from the last eval record measured as the run's first eval was
  (run_log.MEASURE_KEYS: same split, same batch cap, no overrides), so a later
  `--mode=eval` on the test split, on a few batches or on other held-out files
  (config.data.eval_files) never stands in for the run's own eval;
  one measured the same way (e.g. with BLEU or error rates added) does.
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
  measure = lambda r: tuple(r.get(k) for k in run_log.MEASURE_KEYS)
  evals = [r for r in records if r.get('split') == 'eval']
  chosen = {'train': [r for r in records if r.get('split') == 'train'],
            'eval': [r for r in evals if measure(r) == measure(evals[0])] if evals else []}
  for split, last in chosen.items():
    if last:
      for k, v in last[-1].items():
        if k != 'split' and k not in run_log.MEASURE_KEYS and isinstance(v, (int, float)):
          row[f'{split}_{k}'] = v
  status = _read_status(run_dir)
  row['status'] = ('not run' if not status else 'ok' if status.get('returncode') == 0 else
                   'failed')
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


def _positions(values: list) -> tuple:
  """x positions and tick labels: the values themselves when all are numbers,
  else their order (categorical axis)."""
  if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
    return list(values), None
  return list(range(len(values))), [str(v) for v in values]


def plot(rows: List[dict], axes: List[str], metric: str, workdir: str, runs_dir: str):
  """metric vs the first axis, one line per setting of the other axes (mean and
  std over seeds; a seed-only grid plots each seed); and learning curves."""
  # Figure objects, not pyplot: no backend is chosen for (or forced on) the caller.
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  group_axes = [a for a in axes if a != 'seed']
  column = f'eval_{metric}'
  x_axis = group_axes[0] if group_axes else 'seed'
  line_axes = group_axes[1:]
  rows = [r for r in rows if x_axis in r]
  x_values = sorted({r[x_axis] for r in rows}, key=_order)
  positions, labels = _positions(x_values)
  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  for line in sorted({tuple(r.get(a) for a in line_axes) for r in rows}, key=str):
    xs, means, stds = [], [], []
    for x, position in zip(x_values, positions):
      values = [r[column] for r in rows if r[x_axis] == x and r['status'] == 'ok'
                and column in r and tuple(r.get(a) for a in line_axes) == line]
      if values:
        mean = sum(values) / len(values)
        xs.append(position)
        means.append(mean)
        stds.append(math.sqrt(sum((v - mean)**2 for v in values) / max(len(values) - 1, 1)))
    label = ', '.join(f'{a}={v}' for a, v in zip(line_axes, line)) or None
    ax.errorbar(xs, means, yerr=stds, marker='o', capsize=3, label=label)
  ax.set_xlabel(x_axis)
  ax.set_ylabel(f'final eval {metric}')
  if labels is not None:
    ax.set_xticks(positions, labels)
  elif x_axis != 'seed' and x_values and min(x_values) > 0 and max(x_values) >= 4 * min(x_values):
    ax.set_xscale('log', base=2)
  if line_axes:
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
      label = None if setting in labelled else (', '.join(
          f'{a.split(".")[-1]}={v}' for a, v in zip(group_axes, setting)) or 'every seed')
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
  """Runs the grid (what is not finished yet) and writes the report; returns its rows.

  Raises:
    ConfigError: the grid or the overrides cannot work.
    SweepStopped: a signal stopped the sweep (after the running run saved).
  """
  module = configs.load_module(config_path)
  if not hasattr(module, 'get_sweep'):
    raise config_lib.ConfigError(f'{config_path} has no get_sweep(); declare the grid there.')
  runs = expand(module.get_sweep(sweep) if sweep else module.get_sweep())
  check_runs(configs.load(config_path), runs)
  requested = {run.name: requested_config(config_path, run, extra_args) for run in runs}
  os.makedirs(os.path.join(workdir, 'runs'), exist_ok=True)
  if not report_only:
    todo = [(i, run) for i, run in enumerate(runs)
            if not finished(os.path.join(workdir, 'runs', run.name), requested[run.name])]
    if len(todo) < len(runs):
      print(f'{len(runs) - len(todo)} of {len(runs)} runs finished earlier with this config: '
            'skipped.', flush=True)
    spent = 0.0
    for done, (i, run) in enumerate(todo, start=1):
      status = launch(config_path, run, os.path.join(workdir, 'runs', run.name), extra_args)
      spent += status['seconds']
      eta = spent / done * (len(todo) - done)
      if status['signal'] is not None:
        outcome = f"stopped by {signal.Signals(status['signal']).name}: {status.get('last_line')}"
      else:
        outcome = 'ok' if status['returncode'] == 0 else f"FAILED: {status.get('last_line')}"
      print(f'[{i + 1}/{len(runs)}] {run.name}: {outcome} (in {status["seconds"]:.0f}s; log: '
            f'{os.path.join(workdir, "runs", run.name, "log.txt")}); about {eta / 60:.0f} min '
            'left', flush=True)
      if status['signal'] is not None:
        raise SweepStopped(status['signal'], f'Sweep stopped by {signal.Signals(status["signal"]).name} '
                           f'during {run.name} (exit {status["returncode"]}); launch the same '
                           'command to go on.')
  rows = report(runs, workdir, metric)
  print(open(os.path.join(workdir, 'results.md')).read())
  return rows


class SweepStopped(Exception):
  """A signal stopped the sweep; `signum` is the signal."""

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.signum = signum


def main(argv):
  if not _CONFIG.value or not _WORKDIR.value:
    raise app.UsageError('--config and --workdir are required.')
  try:
    rows = run_sweep(_CONFIG.value, _SWEEP.value, _WORKDIR.value, argv[1:], _METRIC.value,
                     _REPORT_ONLY.value)
  except (config_lib.ConfigError, FileNotFoundError, run_log.RecordError) as e:
    print(f'Sweep error: {e}', file=sys.stderr, flush=True)
    sys.exit(2)
  except SweepStopped as e:
    print(e, file=sys.stderr, flush=True)
    sys.exit(128 + e.signum)
  failed = [r['run'] for r in rows if r['status'] == 'failed']
  if failed:
    print(f'{len(failed)} of {len(rows)} runs failed: {", ".join(failed)}; see each run\'s '
          'log.txt, fix the cause and launch the same command (finished runs are skipped).',
          file=sys.stderr, flush=True)
    sys.exit(1)
  not_run = [r['run'] for r in rows if r['status'] == 'not run']
  if not_run:
    print(f'{len(not_run)} of {len(rows)} runs have not run yet: {", ".join(not_run)}; launch '
          'the same command without --report_only to run them.', file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main, flags_parser=lambda argv: flags.FLAGS(argv, known_only=True))
