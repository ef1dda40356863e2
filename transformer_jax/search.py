"""What a sweep may declare beyond a grid: sampled points (`Search`) and their
early stopping (`ASHA`), both Ray Tune's own machinery.

A config's get_sweep() builds them (`from transformer_jax import search`); this
module defines no flags, so a config file imports it under any entry point.

`Search` points are drawn by Ray Tune's variant generator from a seed. ASHA
(asynchronous successive halving; Li et al. 2020, "A System for Massively
Parallel Hyperparameter Tuning", section 3) stops a run at a rung (grace_period
x reduction_factor^k steps) when its eval metric there is not in the best
1 / reduction_factor of the runs that reached that rung before it. The decision is
Ray Tune's `AsyncHyperBandScheduler`; this module only feeds it each run's eval
records as they are written to the run's metrics.jsonl, and asks a run to stop
through a file in its directory (run_process.STOP_FILE), which the process
launching the run (on whichever node, under either executor) turns into SIGTERM:
the run saves a checkpoint and exits, and its status says it was stopped early.

Decisions are asynchronous, as the paper's: they depend on the order in which
runs reach each rung, so with runs in parallel two launches of one sweep may stop
different runs. A stopped run counts as finished: a relaunch does not resume it.
"""

import dataclasses
import json
import os
import sys
import threading
from typing import Any, Dict, Iterable, List, Optional

from transformer_jax import config as config_lib
from transformer_jax import run_log
from transformer_jax import run_process


@dataclasses.dataclass(frozen=True)
class ASHA:
  """ASHA on the runs' eval `metric` (`mode` 'min' for a loss or an error rate,
  'max' for accuracy or BLEU). A run may be stopped once it has trained
  `grace_period` steps; each rung keeps the best 1/`reduction_factor`;
  `brackets` > 1 staggers the grace period as Hyperband does."""
  metric: str = 'loss'
  mode: str = 'min'
  grace_period: int = 100
  reduction_factor: float = 3
  brackets: int = 1

  def check(self, max_steps: int):
    """Raises ConfigError (one line) for a value ASHA cannot work with."""
    problems = [
        (self.mode in ('min', 'max'), f"mode={self.mode!r}; give 'min' or 'max'"),
        (isinstance(self.metric, str) and self.metric, f'metric={self.metric!r}; give an eval '
         "metric's name, e.g. 'loss'"),
        (isinstance(self.grace_period, int) and 1 <= self.grace_period <= max_steps,
         f'grace_period={self.grace_period!r}; give a step count from 1 to the runs\' '
         f'total_steps ({max_steps})'),
        (isinstance(self.reduction_factor, (int, float)) and self.reduction_factor > 1,
         f'reduction_factor={self.reduction_factor!r}; give a number > 1, e.g. 3'),
        (isinstance(self.brackets, int) and self.brackets >= 1,
         f'brackets={self.brackets!r}; give an integer >= 1'),
    ]
    for ok, problem in problems:
      if not ok:
        raise config_lib.ConfigError(f'ASHA {problem} (in get_sweep()).')


@dataclasses.dataclass
class Search:
  """Sampled points for get_sweep() to return: a search beyond grids.

  `space` maps config keys to Ray Tune search spaces (`tune.loguniform(1e-4,
  1e-2)`, `tune.choice([...])`, ...) or to lists, which are grid axes (every
  value is run). Each grid point gets `num_samples` draws of the sampled keys,
  drawn by Ray Tune's own sampler from `seed`, so a relaunch draws the same
  points and finds their runs. The points are then run and reported like grid
  points. Sampling needs Ray (the ray extra); running them does not.

  `early_stopping=ASHA(metric, mode, grace_period, ...)` stops the runs whose
  eval metric falls behind (early_stopping.py: Ray Tune's ASHA scheduler, under
  either executor); they are reported as stopped early, and count as finished.
  """
  space: Dict[str, Any]
  num_samples: int = 1
  seed: int = 0
  early_stopping: Optional[ASHA] = None


def sample(search: Search) -> List[Dict[str, Any]]:
  """The concrete overrides of a Search (Ray Tune's variant generator)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  try:
    from ray import tune  # pylint: disable=g-import-not-at-top
    from ray.tune.search import variant_generator  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise config_lib.ConfigError('get_sweep() returned a Search, which Ray Tune samples; install '
                                 "it with pip install 'transformer_jax[ray]'.") from None
  if not isinstance(search.num_samples, int) or search.num_samples < 1:
    raise config_lib.ConfigError(f'Search.num_samples={search.num_samples!r}; give a count >= 1.')
  spec = {k: tune.grid_search(v) if isinstance(v, (list, tuple)) else v
          for k, v in search.space.items()}
  rng = np.random.default_rng(search.seed)
  points = []
  for _ in range(search.num_samples):
    for _, variant in variant_generator.generate_variants(spec, random_state=rng):
      points.append({k: variant[k] for k in search.space})
  unique = list({json.dumps(p, sort_keys=True, default=str): p for p in points}.values())
  if len(unique) < len(points):
    print(f'The search drew {len(points) - len(unique)} point(s) twice; each distinct point runs '
          f'once ({len(unique)} runs).', flush=True)
  return unique


class _Trial:
  """What Ray Tune's scheduler reads of a trial: its id (here the run's name)."""

  def __init__(self, trial_id: str):
    self.trial_id = trial_id


class Stopper:
  """Watches the runs' eval records in a thread and stops the runs ASHA drops.

  `runs` maps each run's name to its directory; `max_steps` is the runs'
  largest total_steps (ASHA's max_t). Every run's records inform the rungs
  (those of runs that finished in an earlier launch too); only the runs named
  in `active` (default: all) are asked to stop.

  Raises:
    ConfigError: Ray Tune is not installed, or `asha` cannot work.
  """

  POLL_SECONDS = 0.5

  def __init__(self, asha: ASHA, runs: Dict[str, str], max_steps: int,
               active: Optional[Iterable[str]] = None):
    asha.check(max_steps)
    try:
      from ray.tune import schedulers  # pylint: disable=g-import-not-at-top  # the ray extra.
    except ImportError:
      raise config_lib.ConfigError('Early stopping (ASHA) is decided by Ray Tune; install it with '
                                   "pip install 'transformer_jax[ray]'.") from None
    self.asha, self.runs = asha, dict(runs)
    self.active = set(runs if active is None else active)
    self._stop_action = schedulers.TrialScheduler.STOP
    self.scheduler = schedulers.AsyncHyperBandScheduler(
        time_attr='step', metric=asha.metric, mode=asha.mode, max_t=max_steps,
        grace_period=asha.grace_period, reduction_factor=asha.reduction_factor,
        brackets=asha.brackets, stop_last_trials=False)
    self._trials = {name: _Trial(name) for name in runs}
    for trial in self._trials.values():
      self.scheduler.on_trial_add(None, trial)
    self._seen = {name: 0 for name in runs}
    self.stopped: Dict[str, str] = {}  # run name -> why.
    self.problem: Optional[str] = None  # set once the metric is found missing.
    self._halt = threading.Event()
    self._thread = threading.Thread(target=self._watch, name='asha', daemon=True)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._halt.set()
    self._thread.join()
    return False

  def _watch(self):
    while not self._halt.wait(self.POLL_SECONDS):
      self.poll()

  def _evals(self, run_dir: str) -> list:
    """The run's eval records measured as its first eval was (its own series)."""
    try:
      evals = run_log.read_jsonl(run_dir, 'eval')
    except (FileNotFoundError, run_log.RecordError):
      return []
    measure = lambda r: tuple(r.get(k) for k in run_log.MEASURE_KEYS)
    return [r for r in evals if measure(r) == measure(evals[0])]

  def poll(self):
    """Feeds each running run's new eval records to the scheduler; asks the runs
    it drops to stop."""
    if self.problem:
      return
    for name, run_dir in self.runs.items():
      if name in self.stopped:
        continue
      evals = self._evals(run_dir)
      for record in evals[self._seen[name]:]:
        if self.asha.metric not in record:
          recorded = ', '.join(k for k in record if k not in ('step', 'split')
                               and k not in run_log.MEASURE_KEYS)
          self.problem = (f'ASHA: the eval records of {name} have no {self.asha.metric!r} (they '
                          f'have {recorded}): no run is stopped early; fix ASHA(metric=...) in '
                          'get_sweep().')
          print(self.problem, file=sys.stderr, flush=True)
          return
        result = {'step': record['step'], self.asha.metric: record[self.asha.metric]}
        decision = self.scheduler.on_trial_result(None, self._trials[name], result)
        if decision == self._stop_action and name in self.active:
          why = (f'stopped early by ASHA at step {record["step"]} ({self.asha.metric} '
                 f'{record[self.asha.metric]:.4g} not in the best 1/{self.asha.reduction_factor:g} '
                 'at that rung)')
          self.stopped[name] = why
          run_process.request_stop(run_dir, why, early=True)
          break
      self._seen[name] = len(evals)
