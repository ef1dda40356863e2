"""Checkpoints of a run with Orbax: periodic, keep-last-N plus keep-best, async, exact resume.

<workdir>/checkpoints/<step>/ holds three items:
  state   params, optimizer state, step and the dropout key (StandardSave);
  data    the train iterator's position (grain CheckpointSave), so a resumed
          run sees exactly the batches the uninterrupted run would have seen;
  config  the resolved config (JSON); resuming with a config that differs in a
          field that changes the run is refused, naming the fields.
Orbax writes a checkpoint into a temporary directory and renames it once every
item is complete, so a process killed mid-save leaves the previous checkpoints
intact and the partial one is ignored (and cleaned up on the next start).

The latest `config.keep_checkpoints` are kept, plus the
`config.keep_best_checkpoints` with the lowest eval loss.
"""

import json
import os
import signal
import threading
from typing import Optional

import grain
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from transformer_jax import config as config_lib

def _flatten(tree: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out

def config_json(config) -> dict:
  """The config as plain JSON values (what a checkpoint stores)."""
  return json.loads(config.to_json_best_effort(sort_keys=True))

def config_differences(saved: dict, current: dict) -> list:
  """Fields (dotted names) whose values differ and that change what a run computes
  (every field not marked `resumable` in config.py).

  Fields the code gained after the checkpoint was written count as their defaults.
  """
  saved, current = _flatten(config_json(config_lib.from_saved(saved))), _flatten(current)
  names = sorted(set(saved) | set(current))
  return [(n, saved.get(n, '<absent>'), current.get(n, '<absent>')) for n in names
          if saved.get(n, '<absent>') != current.get(n, '<absent>')
          and n not in config_lib.RESUMABLE_FIELDS]

class Checkpointer:
  """An Orbax CheckpointManager for one workdir."""

  def __init__(self, workdir: str, config):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    policies = [checkpoint_managers.LatestN(n=config.keep_checkpoints)]
    if config.keep_best_checkpoints > 0:
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=lambda metrics: -metrics['loss'], n=config.keep_best_checkpoints,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=config.async_checkpointing,
        cleanup_tmp_directories=True, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    # Orbax cleans up partial saves in a background thread; finish it here, so a
    # process that stops at once (a data error) does not exit under it.
    self.manager._maybe_await_cleanup_tmp_directory()  # pylint: disable=protected-access
    self.config = config_json(config)
    self._last_step = self.manager.latest_step()

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list:
    return list(self.manager.all_steps())

  def check_compatible(self, workdir: str):
    """Raises ConfigError if the latest checkpoint was written by a different config."""
    step = self.latest_step()
    if step is None:
      return
    saved = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    differences = config_differences(saved['config'], self.config)
    if differences:
      fields = ', '.join(f'{name} (checkpoint {old!r}, now {new!r})'
                         for name, old, new in differences)
      raise config_lib.ConfigError(
          f'{workdir} holds a checkpoint (step {step}) of a different config: {fields}; '
          'use another --workdir, or set those fields back to resume.')

  def save(self, step: int, state, rng, data_iterator=None, eval_metrics: Optional[dict] = None):
    """Starts saving (asynchronously if configured); a step already saved is skipped."""
    if step == self._last_step:
      return
    items = {'state': ocp.args.StandardSave({'train_state': state, 'rng': rng}),
             'config': ocp.args.JsonSave(self.config)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    metrics = {'loss': float(eval_metrics['loss'])} if eval_metrics else None
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
    self._last_step = step

  def restore(self, target_state, target_rng, data_iterator=None, step: Optional[int] = None):
    """(state, rng) of a checkpoint (the latest by default), restored into the
    targets' shapes and shardings; the data iterator, if given, is moved to the
    saved position in place."""
    step = self.latest_step() if step is None else step
    target = {'train_state': target_state, 'rng': target_rng}
    items = {'state': ocp.args.StandardRestore(target)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored['state']['train_state'], restored['state']['rng']

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    """Waits for a save in flight and stops Orbax's threads."""
    self.manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False

class StopSignal:
  """Context manager: SIGTERM or Ctrl-C (SIGINT) sets `signum` instead of killing
  the process, so the loop can save a checkpoint and exit. A second signal
  interrupts at once."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: Optional[int] = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:
      signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
      signal.raise_signal(signum)
    self.signum = signum
    print(f'\nReceived {signal.Signals(signum).name}: saving a checkpoint after this step '
          '(signal again to exit at once).', flush=True)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    return False
