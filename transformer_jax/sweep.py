"""Ablation runner: a grid of config overrides, one process per run, and its report.

A sweep is declared next to its config: `get_sweep(name)` returns a grid, a dict
{config key: [values]} whose product is run (`seed` is an axis like any other),
an explicit list of override dicts, or a `search.Search` (Ray Tune search spaces
and a sample count: sampled points, run like grid points, optionally stopped
early by ASHA).

  python -m transformer_jax.sweep --config=shakespeare_char \
      --sweep=ffn_x_heads --workdir=runs/ffn_x_heads [--config.total_steps=300 ...] \
      [--executor=ray [--ray_address=auto] [--run_resources='{"GPU": 1}']]

Each run trains in its own process (`python -m transformer_jax.main`) in its own
directory, so a crash of one run does not kill the grid. Where that process
runs is the executor's only business: `local` (the default, no dependency
beyond the package) runs one after another here; `ray` (sweep_ray.py, the `ray`
extra) hands each run to Ray as a task with the run's declared resources, so
runs spread over the devices and hosts of a Ray cluster, and Ray retries a run
whose process or node died (it resumes from its checkpoint). Everything else is
shared: expanding the grid, the config each run is requested with, skipping
finished runs, the status file, the live view and the report.

Launched again, the sweep skips a run only if it finished with exactly the
config now requested (its resolved config in config.json equals the grid
point's with the command's overrides); any other run is launched again and
resumes from its checkpoint (a longer `--config.total_steps` trains on) or fails
in one line (a changed model needs another --workdir). Each launch appends to
the run's log.txt, nothing is overwritten. SIGTERM or Ctrl-C goes to the running
training runs, which save a checkpoint; the sweep waits for them, writes the
report of what finished and exits 128 + the signal while runs remain (launch it
again to go on). The sweep exits 1 when any run failed. The report:
`results.csv` (one row per run), `results.md` (mean +/- std over seeds, with
parameters and FLOPs per token so capacity effects can be told from shape
effects) and PNG plots, for any grid shape (a seed-only grid included),
rewritten as runs finish.
"""

import contextlib
import csv
import dataclasses
import hashlib
import itertools
import json
import math
import os
import signal
import subprocess
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from ml_collections import config_flags

from transformer_jax import config as config_lib
from transformer_jax import configs
from transformer_jax import progress
from transformer_jax import run_log
from transformer_jax import run_process
from transformer_jax import search
from transformer_jax.search import ASHA, Search  # what get_sweep() may return, as sweep.*.
from transformer_jax.models import accounting

_CONFIG = flags.DEFINE_string('config', None, 'Experiment config: a name in '
                               'transformer_jax/configs/, a module or a .py file; optionally :arg.')
_SWEEP = flags.DEFINE_string('sweep', None, 'Name passed to the config file\'s get_sweep().')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where the runs and the report go.')
_METRIC = flags.DEFINE_string('metric', 'loss', 'Eval metric the table and plots report.')
_REPORT_ONLY = flags.DEFINE_bool('report_only', False, 'Only rebuild the report.')
_EXECUTOR = flags.DEFINE_enum('executor', 'local', ['local', 'ray'], 'Where runs train: local '
                              '(one after another, here) or ray (tasks on a Ray cluster; the ray '
                              'extra).')
_RAY_ADDRESS = flags.DEFINE_string('ray_address', None, 'With --executor=ray: the cluster to join '
                                   '(host:port, or auto); unset, a local Ray instance is started.')
_RUN_RESOURCES = flags.DEFINE_string('run_resources', None, 'With --executor=ray: what one run '
                                     'needs, as JSON, e.g. \'{"CPU": 1}\' (the default) or '
                                     '\'{"CPU": 4, "GPU": 1}\'; other keys are custom Ray '
                                     'resources.')
_MAX_RETRIES = flags.DEFINE_integer('max_retries', None, 'With --executor=ray: how often a run '
                                    'whose process or node died is launched again (it resumes '
                                    'from its checkpoint); default 2.')

STATUS_FILE = run_process.STATUS_FILE
# Longest run directory name kept as written: NAME_MAX of Linux and macOS file
# systems, so every directory an earlier sweep could create keeps its name.
MAX_NAME_BYTES = 255
_PREFIX_BYTES = 96  # the readable part of a longer name, before its hash.


@dataclasses.dataclass
class Run:
  """One point of the grid: its overrides and its directory name."""
  overrides: Dict[str, Any]

  @property
  def name(self) -> str:
    """'key=value,...'; when that is no valid directory name (longer than
    MAX_NAME_BYTES, or holding '/'), its first _PREFIX_BYTES with '/' as '_',
    then '~' and 12 hex digits of its SHA-256: bounded, readable, and the same
    on every relaunch."""
    full = ','.join(f'{k}={v}' for k, v in self.overrides.items())
    if len(full.encode()) <= MAX_NAME_BYTES and '/' not in full and '\0' not in full:
      return full
    prefix = full.replace('/', '_').replace('\0', '_').encode()[:_PREFIX_BYTES]
    digest = hashlib.sha256(full.encode()).hexdigest()[:12]
    return f"{prefix.decode(errors='ignore')}~{digest}"


def expand(spec) -> List[Run]:
  """A grid dict {key: [values]} -> its product; a list of dicts -> those runs;
  a Search -> its sampled points."""
  if isinstance(spec, Search):
    spec = search.sample(spec)
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


def command(config_path: str, run: Run, run_dir: str, extra: Sequence[str]) -> List[str]:
  """The arguments after the interpreter that train `run` in `run_dir`."""
  return ['-m', 'transformer_jax.main', f'--config={config_path}', f'--workdir={run_dir}',
          *[f'--config.{k}={v}' for k, v in run.overrides.items()], *extra]


def stopped_early(status: dict) -> bool:
  """Whether the launch ended because early stopping asked it to (and it did
  not finish first)."""
  return bool(status.get('early_stopped')) and status.get('returncode') not in (0, None)


def outcome(status: dict) -> str:
  """What a launch came to, in words: 'ok', 'stopped early by ASHA at step N
  (...)', 'stopped by SIGINT, ...' or 'FAILED: ...'."""
  if stopped_early(status):
    return status['early_stopped']
  if status.get('returncode') == 0:
    return 'ok' if status.get('signal') is None else 'ok (it finished before the stop reached it)'
  if status.get('signal') is not None:
    return (f"stopped by {signal.Signals(status['signal']).name} (exit {status['returncode']}): "
            f"{status.get('last_line')}")
  return f"FAILED: {status.get('last_line')}"


class LocalExecutor:
  """Runs one launch after another in this process's machine (the default).

  A signal to the sweep is passed to the running training run (in its own
  session, so a terminal's Ctrl-C reaches it only this way, once), which saves
  and exits; no other run starts. A second signal is passed on too (the run then
  exits at once)."""

  name = 'local'

  def __init__(self):
    self.process: Optional[subprocess.Popen] = None
    self.stopping: Optional[int] = None  # the signal that stops the sweep.

  def signal(self, signum: int):
    self.stopping = signum
    if self.process is not None and self.process.poll() is None:
      self.process.send_signal(signum)

  def start(self):
    pass

  def _started(self, process: subprocess.Popen):
    self.process = process

  def run(self, launches: Sequence[Tuple[int, List[str], str]]) -> Iterator[Tuple[int, dict]]:
    """Yields (index, status) as each launch (index, args, run_dir) ends."""
    for index, args, run_dir in launches:
      if self.stopping:
        return
      status = run_process.launch(args, run_dir, on_start=self._started)
      if self.stopping and status['returncode'] is not None:
        status['signal'] = self.stopping
      yield index, status

  def close(self):
    pass


class _Signals:
  """While the executor runs: SIGTERM / Ctrl-C are recorded and passed to it."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, executor):
    self.executor, self.signum, self._previous = executor, None, {}

  def _handle(self, signum, frame):
    del frame
    self.signum = signum
    print(f'\nReceived {signal.Signals(signum).name}: the running training runs save a '
          'checkpoint and stop; the sweep then writes the report of what finished and stops '
          '(signal again to stop the runs at once).', flush=True)
    self.executor.signal(signum)

  def __enter__(self):
    for s in self.SIGNALS:
      self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    return False


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
  """Whether the run in `run_dir` finished (exit 0, or stopped early by the
  search's early stopping) with exactly the `requested` config."""
  config_path = os.path.join(run_dir, 'config.json')
  status = _read_status(run_dir)
  if not (status.get('returncode') == 0 or stopped_early(status)) or not os.path.exists(
      config_path):
    return False
  with open(config_path) as f:
    return json.load(f) == json.loads(requested.to_json_best_effort(sort_keys=True))


def read_metrics(run_dir: str) -> List[dict]:
  """The run's records ([] before its first); a bad line is a RecordError naming it."""
  try:
    return run_log.read_jsonl(run_dir)
  except FileNotFoundError:
    return []


def summarise(run: Run, run_dir: str, status: Optional[dict] = None) -> dict:
  """One results.csv row: the overrides, capacity, and the last train/eval metrics.

  Capacity comes from the run's own resolved config (`config.json`). The eval
  columns come from the last eval record measured as the run's first eval was
  (run_log.MEASURE_KEYS: same split, same batch cap, no overrides), so a later
  `--mode=eval` on the test split, on a few batches or on other held-out files
  (config.data.eval_files) never stands in for the run's own eval;
  one measured the same way (e.g. with BLEU or error rates added) does.
  `status` stands in for the run's status file (a launch whose status could not
  be written there).
  """
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
  status = status or _read_status(run_dir)
  row['status'] = ('not run' if not status else 'stopped early' if stopped_early(status) else
                   'ok' if status.get('returncode') == 0 else
                   'stopped' if status.get('signal') is not None else 'failed')
  row['seconds'] = round(status.get('seconds', float('nan')), 1)
  row['host'] = status.get('hostname', '')
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
  """Mean +/- std over seeds for each setting of the other axes (finished runs;
  a setting whose runs were all stopped early says so)."""
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
    early = sum(r['status'] == 'stopped early' for r in members)
    cells = [str(k) for k in key] + [
        f"{members[0].get('params', float('nan')):,}",
        f"{members[0].get('flops_per_token', float('nan')):.3g}",
        mean_std([r.get(column) for r in ok]) if ok or not early else 'stopped early',
        mean_std([r.get('train_loss') for r in ok]),
        f'{len(ok)}/{len(members)}' + (f' ({early} stopped early)' if early else '')
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


def report(runs: List[Run], workdir: str, metric: str,
           statuses: Optional[Dict[str, dict]] = None) -> List[dict]:
  """Writes results.csv, results.md and the plots; returns the rows. `statuses`
  ({run name: status}) stand in for status files that could not be written."""
  runs_dir = os.path.join(workdir, 'runs')
  rows = [summarise(run, os.path.join(runs_dir, run.name), (statuses or {}).get(run.name))
          for run in runs]
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


def make_executor(executor: str = 'local', ray_address: Optional[str] = None,
                  run_resources: Optional[str] = None, max_retries: Optional[int] = None):
  """The executor named on the command line.

  Raises:
    ConfigError: a Ray option without --executor=ray, bad --run_resources, or
      the ray extra missing.
  """
  if executor == 'local':
    given = [name for name, value in (('--ray_address', ray_address),
                                      ('--run_resources', run_resources),
                                      ('--max_retries', max_retries)) if value is not None]
    if given:
      raise config_lib.ConfigError(f'{", ".join(given)} only apply to --executor=ray; add it or '
                                   'drop them.')
    return LocalExecutor()
  try:
    from transformer_jax import sweep_ray  # pylint: disable=g-import-not-at-top  # the ray extra.
  except ImportError as e:
    raise config_lib.ConfigError(f'--executor=ray needs Ray ({e}); install it with pip install '
                                 "'transformer_jax[ray]'.") from None
  return sweep_ray.RayExecutor(ray_address, sweep_ray.parse_resources(run_resources),
                               2 if max_retries is None else max_retries)


def _where(status: dict) -> str:
  node = status.get('node_id')
  return status.get('hostname', '?') + (f', node {node[:8]}' if node else '')


def run_sweep(config_path: str, sweep: Optional[str], workdir: str, extra_args: Sequence[str],
              metric: str = 'loss', report_only: bool = False, executor=None) -> List[dict]:
  """Runs the grid (what is not finished yet) on `executor` (default: local,
  one run after another) and writes the report as runs finish; returns its rows.

  The live view: a progress bar (runs finished of all, elapsed, ETA) on stderr
  and one line per ended run on stdout (its outcome, metric, wall time and
  where it ran).

  Raises:
    ConfigError: the grid or the overrides cannot work.
    SweepStopped: a signal stopped the sweep while runs remain (the running
      runs saved; the report of what finished is written).
  """
  module = configs.load_module(config_path)
  if not hasattr(module, 'get_sweep'):
    raise config_lib.ConfigError(f'{config_path} has no get_sweep(); declare the grid there.')
  spec = module.get_sweep(sweep) if sweep else module.get_sweep()
  runs = expand(spec)
  check_runs(configs.load(config_path), runs)
  requested = {run.name: requested_config(config_path, run, extra_args) for run in runs}
  runs_dir = os.path.join(workdir, 'runs')
  asha = spec.early_stopping if isinstance(spec, Search) else None
  if asha:
    asha.check(max(requested[run.name].total_steps for run in runs))
  os.makedirs(runs_dir, exist_ok=True)
  statuses: Dict[str, dict] = {}
  stopped = None
  if not report_only:
    todo = [(i, run) for i, run in enumerate(runs)
            if not finished(os.path.join(runs_dir, run.name), requested[run.name])]
    if len(todo) < len(runs):
      print(f'{len(runs) - len(todo)} of {len(runs)} runs finished earlier with this config: '
            'skipped.', flush=True)
    executor = executor or LocalExecutor()
    stopper = search.Stopper(
        asha, {run.name: os.path.join(runs_dir, run.name) for run in runs},
        max(requested[run.name].total_steps for run in runs),
        active=[run.name for _, run in todo]) if asha else contextlib.nullcontext()
    # Paths every node reads alike: a config file given relative to here, and the workdir.
    spec, colon, arg = config_path.partition(':')
    where_config = os.path.abspath(spec) + colon + arg if os.path.isfile(spec) else config_path
    launches = [(i, command(where_config, run, os.path.abspath(os.path.join(runs_dir, run.name)),
                            extra_args), os.path.abspath(os.path.join(runs_dir, run.name)))
                for i, run in todo]
    bar = progress.bar(total=len(runs), initial=len(runs) - len(todo), unit='run',
                       desc='runs finished', file=sys.stderr, dynamic_ncols=True)
    try:
      if todo:
        executor.start()
      with _Signals(executor) as signals, stopper:
        for i, status in executor.run(launches):
          run = runs[i]
          run_dir = os.path.join(runs_dir, run.name)
          if not run_process.write_status(run_dir, status):
            statuses[run.name] = status
          row = {r['run']: r for r in report(runs, workdir, metric, statuses)}[run.name]
          value = row.get(f'eval_{metric}')
          measured = f', eval {metric} {value:.4f}' if isinstance(value, float) else ''
          bar.write(f'[{i + 1}/{len(runs)}] {run.name}: {outcome(status)}{measured} (in '
                    f'{status["seconds"]:.0f}s on {_where(status)}; log: '
                    f'{os.path.join(run_dir, "log.txt")})', file=sys.stdout)
          sys.stdout.flush()
          if status['signal'] is None or status['returncode'] == 0 or stopped_early(status):
            bar.update(1)
      stopped = signals.signum
    finally:
      bar.close()
      executor.close()
  rows = report(runs, workdir, metric, statuses)
  print(open(os.path.join(workdir, 'results.md')).read(), flush=True)
  remaining = [r for r in rows if r['status'] not in ('ok', 'stopped early')]
  if stopped is not None and remaining:
    saved = [r['run'] for r in remaining if r['status'] == 'stopped']
    others = [r['run'] for r in remaining if r['status'] != 'stopped']
    raise SweepStopped(stopped, f'Sweep stopped by {signal.Signals(stopped).name}: '
                       f'{len(rows) - len(remaining)} of {len(rows)} runs finished'
                       f'{"; saved a checkpoint and stopped: " + ", ".join(saved) if saved else ""}'
                       f'{"; not run or failed: " + ", ".join(others) if others else ""}. '
                       f'The report in {workdir} covers the finished runs; launch the same '
                       'command to go on (finished runs are skipped, the others resume).')
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
    executor = None if _REPORT_ONLY.value else make_executor(
        _EXECUTOR.value, _RAY_ADDRESS.value, _RUN_RESOURCES.value, _MAX_RETRIES.value)
    rows = run_sweep(_CONFIG.value, _SWEEP.value, _WORKDIR.value, argv[1:], _METRIC.value,
                     _REPORT_ONLY.value, executor)
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
  stopped = [r['run'] for r in rows if r['status'] == 'stopped']
  if stopped:
    print(f'{len(stopped)} of {len(rows)} runs were stopped by a signal after saving: '
          f'{", ".join(stopped)}; launch the same command without --report_only to resume them.',
          file=sys.stderr, flush=True)
    sys.exit(1)
  not_run = [r['run'] for r in rows if r['status'] == 'not run']
  if not_run:
    print(f'{len(not_run)} of {len(rows)} runs have not run yet: {", ".join(not_run)}; launch '
          'the same command without --report_only to run them.', file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main, flags_parser=lambda argv: flags.FLAGS(argv, known_only=True))
