"""Checkpoints of a run with Orbax: periodic, keep-last-N plus keep-best, async, exact resume.

<workdir>/checkpoints/<step>/ holds five items:
  state      params, optimizer state, step and the dropout key (StandardSave);
  data       the train iterator's position (grain CheckpointSave), so a resumed
             run sees exactly the batches the uninterrupted run would have seen;
  config     the resolved config (JSON); resuming with a config that differs in a
             field that changes the run is refused, naming the fields;
  integrity  a checksum of every state array and of the data position, taken
             when the checkpoint was written and checked when it is restored,
             and the global batch size the data position counts in;
  course     the train loss's course up to the step (divergence.Course.state:
             the median train loss it was saved at), so a resumed run judges
             divergence as the uninterrupted one would.
Orbax writes a checkpoint into a temporary directory and renames it once every
item is complete, so a process killed mid-save leaves the previous checkpoints
intact and the partial one is ignored (and cleaned up on the next start).

A checkpoint damaged after it was written (a truncated or deleted file, a
flipped bit, an empty step directory) fails to restore or to match its
checksums. Resuming then falls back to the newest checkpoint that restores
intact and moves each damaged newer one to <workdir>/damaged_checkpoints/,
saying so in one line. When no checkpoint restores, nothing is moved (the cause
may be the code, not the files) and the error is one line. After a divergence
the trainer moves the checkpoints that hold the diverged state to
<workdir>/diverged_checkpoints/ (`set_aside_after`), so the run resumes from
the last good one.

Multi-host: every process calls save and restore together; arrays are global
(parallel.to_checkpoint), the data position is one file per process, and the
processes agree on which checkpoint is intact before any of them uses it. A
checkpoint is restored by as many processes as wrote it.

A save that fails (a full disk, a read-only directory), in the foreground or
in Orbax's background threads, raises run_log.WriteFailed, one line naming the
directory, the cause and the fix, at the save, at `wait`, or at the next
`check` (non-blocking, once per logged step) after it failed; the earlier
checkpoints are intact. Orbax's own pages about the failure (logs from each of
its threads, abandoned writes) are left out. A writable Checkpointer checks
that it can write its directory when it opens.

The latest `config.keep_checkpoints` are kept, plus the
`config.keep_best_checkpoints` with the lowest eval loss.
"""

import contextlib
import gc
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
import warnings
from typing import Optional

import grain
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from transformer_jax import config as config_lib
from transformer_jax import run_log

DAMAGED_DIR = 'damaged_checkpoints'
DIVERGED_DIR = 'diverged_checkpoints'


class _WithoutExpectedWarnings(logging.Filter):
  """Orbax warns at every save without an eval loss once it ranks checkpoints by
  one (most saves have none, by design), and when a step's item is read on its
  own (read_params; the step's metadata file is one level up)."""

  def filter(self, record):
    message = record.getMessage()
    return not ('did not provide metrics' in message
                or message.endswith('/state/_CHECKPOINT_METADATA'))


logging.getLogger('absl').addFilter(_WithoutExpectedWarnings())

_ORBAX = os.path.dirname(os.path.abspath(ocp.__file__))
_IN_PROGRESS = '.orbax-checkpoint-tmp'  # Orbax writes step N under N.orbax-checkpoint-tmp.


def _from_failed_save(error: Optional[BaseException], tb) -> bool:
  """Whether an error comes from a save: raised through Orbax's code, or about
  a file of a checkpoint in progress (TensorStore's array writes)."""
  while tb is not None:
    if tb.tb_frame.f_code.co_filename.startswith(_ORBAX):
      return True
    tb = tb.tb_next
  return _IN_PROGRESS in str(error)


class _WithoutFailedSaveNoise(logging.Filter):
  """Orbax logs a failed save from each of its threads, a page of traceback
  each, and asyncio logs the array writes it abandoned (as late as the exit);
  `Checkpointer` reports the failure once, in one line (run_log.WriteFailed)."""

  def filter(self, record):
    if record.levelno < logging.ERROR:
      return True
    return not (record.pathname.startswith(_ORBAX) or _IN_PROGRESS in record.getMessage()
                or record.exc_info and _from_failed_save(*record.exc_info[1:]))


for _name in ('absl', 'asyncio'):
  logging.getLogger(_name).addFilter(_WithoutFailedSaveNoise())


def _abandoned_write(unraisable) -> bool:
  """Whether an unraisable exception is Orbax's abandoned work after a failed
  save: an array write finalised after its loop closed, or TensorStore
  completing such a write on that closed loop."""
  error = unraisable.exc_value
  return (_from_failed_save(error, unraisable.exc_traceback)
          or isinstance(error, RuntimeError) and str(error) == 'Event loop is closed')


def _without_abandoned_writes(hook):
  def quiet_hook(unraisable):
    if not _abandoned_write(unraisable):
      hook(unraisable)
  return quiet_hook


sys.unraisablehook = _without_abandoned_writes(sys.unraisablehook)


class NoIntactCheckpoint(RuntimeError):
  """Every checkpoint of a workdir failed to restore; the message names why."""


def config_json(config) -> dict:
  """The config as plain JSON values (what a checkpoint stores)."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def _changed(saved: dict, current: dict) -> list:
  """(dotted name, saved value, current value) of every field that differs.

  Fields the code gained after the checkpoint was written count as their defaults.
  """
  saved = config_lib.flatten(config_json(config_lib.from_saved(saved)))
  current = config_lib.flatten(current)
  names = sorted(set(saved) | set(current))
  return [(n, saved.get(n, '<absent>'), current.get(n, '<absent>')) for n in names
          if saved.get(n, '<absent>') != current.get(n, '<absent>')]


def config_differences(saved: dict, current: dict) -> list:
  """Fields that differ and change what a run computes, so a resume is refused
  (every field marked neither `resumable` nor `tunable` in config.py)."""
  allowed = config_lib.RESUMABLE_FIELDS | config_lib.TUNABLE_FIELDS
  return [d for d in _changed(saved, current) if d[0] not in allowed]


def model_differences(saved: dict, current: dict) -> list:
  """Fields that differ and change the model (config.MODEL_FIELDS), so reading
  the checkpoint's parameters with `current` is refused (eval, decode)."""
  return [d for d in _changed(saved, current) if d[0] in config_lib.MODEL_FIELDS]


def tuned_fields(saved: dict, current: dict) -> list:
  """`tunable` fields (the optimiser's settings) that differ: a resume continues
  from the checkpoint with the new values and says so."""
  return [d for d in _changed(saved, current) if d[0] in config_lib.TUNABLE_FIELDS]


@jax.jit
def _checksums(tree):
  """A uint32 checksum per array: sum over its words of word x (2 i + 1) mod 2^32.
  The weights are odd, so any change of one word (a flipped bit) changes it."""

  def checksum(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
      x = x.astype(jnp.uint8)
    words = jax.lax.bitcast_convert_type(x, jnp.dtype(f'uint{8 * x.dtype.itemsize}'))
    words = words.astype(jnp.uint32).ravel()
    weights = jnp.arange(words.size, dtype=jnp.uint32) * 2 + 1
    return jnp.sum(words * weights, dtype=jnp.uint32)

  return jax.tree.map(checksum, tree)


def fingerprint(state_item: dict, data_iterator=None) -> dict:
  """{'state': {array path: checksum}, 'data': sha256 of the iterator's state}."""
  sums = jax.device_get(_checksums(state_item))
  out = {'state': {jax.tree_util.keystr(path): int(v)
                   for path, v in jax.tree_util.tree_leaves_with_path(sums)}}
  if data_iterator is not None:
    out['data'] = hashlib.sha256(
        json.dumps(data_iterator.get_state(), sort_keys=True, default=str).encode()).hexdigest()
  return out


def _check_sums(saved: dict, now: dict):
  """Raises ValueError when the checksums `now` (fingerprint's 'state') are not
  the `saved` ones, naming the first array that differs."""
  bad = [path for path, value in saved.items() if now.get(path) != value]
  if bad or set(now) != set(saved):
    raise ValueError(f'the checksum of state{(bad or ["(array set)"])[0]} differs from the one '
                     'saved with it')


def _reason(e: BaseException) -> str:
  """One short line from an exception (Orbax's can run to pages)."""
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  text = lines[0].split(' See full TensorStore details')[0] if lines else ''
  return f'{type(e).__name__}: {text[:200]}' if text else type(e).__name__


@contextlib.contextmanager
def _quiet_abandoned_reads():
  """A failed Orbax restore leaves its other array reads behind as coroutines
  whose errors Python prints, a page each, when they are collected; collect them
  here, without the pages (the one line about the damage says it all)."""
  previous = sys.unraisablehook
  sys.unraisablehook = lambda unraisable: None
  try:
    yield
  finally:
    gc.collect()
    sys.unraisablehook = previous


class Checkpointer:
  """An Orbax CheckpointManager for one workdir.

  `writable=False` (eval, decode, export: restore.py) opens the checkpoints
  read-only: nothing is created or cleaned up, so it works on a read-only
  workdir and never touches a save that a trainer has in flight; the config
  then need only match the checkpoint's model (`check_compatible`).
  """

  def __init__(self, workdir: str, config, writable: bool = True):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, 'checkpoints')
    self.writable = writable
    policies = [checkpoint_managers.LatestN(n=config.keep_checkpoints)]
    if config.keep_best_checkpoints > 0:
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=lambda metrics: -metrics['loss'], n=config.keep_best_checkpoints,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        # Orbax writes a step's metrics (so keep-best and `best` survive a restart)
        # only when it is told how to rank them.
        best_fn=lambda metrics: metrics['loss'], best_mode='min',
        enable_async_checkpointing=config.async_checkpointing,
        # In the foreground: a step directory that cannot be made is an error at
        # the save, where in the background Orbax's other threads wait for it.
        async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
        cleanup_tmp_directories=writable, create=writable)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    if writable:
      # Orbax cleans up partial saves in a background thread; finish it here, so a
      # process that stops at once (a data error) does not exit under it.
      self.manager._maybe_await_cleanup_tmp_directory()  # pylint: disable=protected-access
      run_log.check_writable(self.directory)
    self.config = config_json(config)
    self._last_step = self.manager.latest_step()
    self._failure: Optional[run_log.WriteFailed] = None

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list:
    return list(self.manager.all_steps())

  def select(self, which) -> int:
    """The step `which` names: 'latest', 'best' (lowest eval loss; the latest if
    no checkpoint has an eval loss) or a step number.

    Raises:
      FileNotFoundError: no checkpoint, or none at that step (names the steps there).
    """
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f'{self.directory} holds no checkpoint.')
    if which == 'latest':
      return max(steps)
    if which == 'best':
      best = self.manager.best_step()
      return max(steps) if best is None else best
    if int(which) not in steps:
      raise FileNotFoundError(f'{self.directory} holds no checkpoint at step {which}; it holds '
                              f'steps {sorted(steps)}.')
    return int(which)

  def read_params(self, step: int) -> dict:
    """The parameters of checkpoint `step` as numpy arrays (a nested dict), read
    without a model: what another run starts from (init_from.py)."""
    return jax.device_get(self._restore_params(step))

  def restore_params(self, step: Optional[int] = None, part: str = 'params') -> tuple:
    """(step, params) of the newest checkpoint that restores intact (or of
    `step`): the parameters alone (a nested dict of arrays on the first local
    device), read without a model and without the optimiser state, and checked
    against the checksums saved with them. Damaged newer checkpoints are
    skipped (or set aside) as `restore` does. `part` 'ema' reads the train
    state's parameter EMA instead (train.EmaTrainState: {'count', 'ema'}).

    Raises:
      NoIntactCheckpoint: no checkpoint (or not `step`) restores.
    """
    steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    return self._newest_intact(steps, lambda candidate: self._restore_params(candidate, part))

  def last_steps(self, n: int) -> list:
    """The steps of the last `n` checkpoints, oldest first (what
    config.restore_checkpoint=average:N averages): among the latest
    keep_checkpoints the run kept, not an older one kept as the best.

    Raises:
      ConfigError: fewer than `n` are there; names how many, and the field that
        keeps more.
    """
    saved = self.saved_config() or self.config
    keep = int(saved.get('keep_checkpoints', n))
    latest = sorted(self.all_steps())[-keep:]
    if len(latest) >= n:
      return latest[-n:]
    listed = ', '.join(map(str, latest)) or 'none'
    why = (f'the run keeps only its latest config.keep_checkpoints={keep}; train with '
           f'--config.keep_checkpoints={n} or more to average {n}' if len(latest) == keep else
           f'the run has saved no more (every config.checkpoint_every='
           f'{saved.get("checkpoint_every")} steps and at each eval)')
    raise config_lib.ConfigError(
        f'config.restore_checkpoint=average:{n} averages the last {n} checkpoints, and '
        f'{self.directory} holds {len(latest)} (steps {listed}): {why}; or average '
        f'{len(latest)} or fewer.')

  def _restore_params(self, step: int, part: str = 'params') -> dict:
    """The `part` subtree ('params', 'ema') of `step`'s train state (Orbax's
    partial restore), checked against the saved checksums of its arrays."""
    step_dir = os.path.join(self.directory, str(step))
    with ocp.StandardCheckpointer() as reader:
      tree = reader.metadata(os.path.join(step_dir, 'state')).item_metadata.tree
    if part not in tree['train_state']:
      raise ValueError(f'step {step} holds no {part}')
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          tree['train_state'][part])
    item = {'train_state': {part: target}}
    items = {'state': ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)}
    has_integrity = os.path.isdir(os.path.join(step_dir, 'integrity'))
    if has_integrity:
      items['integrity'] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    params = restored['state']['train_state'][part]
    if has_integrity:
      # A saved NamedTuple (the EMA's optax.EmaState) comes back as a dict: paths are
      # matched by their names, ".count" and "['count']" alike, and named as saved.
      plain = lambda path: re.sub(r"\['([^'\]]*)'\]", r'.\1', path)
      prefix = plain(f"['train_state'].{part}")
      saved = {path: value for path, value in restored['integrity']['state'].items()
               if plain(path).startswith(prefix + '.')}
      as_saved = {plain(path): path for path in saved}
      now = {as_saved.get(prefix + plain(path), prefix + plain(path)): value
             for path, value in fingerprint(params)['state'].items()}
      _check_sums(saved, now)
    return params

  def course(self, step: int) -> Optional[dict]:
    """The train loss's course checkpoint `step` recorded (divergence.Course.state;
    None for a checkpoint written before checkpoints recorded it)."""
    if not os.path.isdir(os.path.join(self.directory, str(step), 'course')):
      return None
    restored = self.manager.restore(step, args=ocp.args.Composite(course=ocp.args.JsonRestore()))
    return restored['course']

  def _saved_config(self, step: int) -> dict:
    restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return restored['config']

  def saved_config(self) -> Optional[dict]:
    """The config of the newest checkpoint whose config reads (None if none)."""
    for step in sorted(self.all_steps(), reverse=True):
      try:
        return self._saved_config(step)
      except Exception:  # pylint: disable=broad-except  # damaged: restore() deals with it.
        continue
    return None

  def check_compatible(self):
    """Raises ConfigError if the newest checkpoint was written by a config that
    differs in a field that changes what the run computes (read-only: in a
    field of the model, config.MODEL_FIELDS)."""
    saved = self.saved_config()
    if saved is None:
      return
    if self.writable:
      differences, fix = config_differences(saved, self.config), 'to resume'
    else:
      differences, fix = model_differences(saved, self.config), 'to read its parameters'
    if differences:
      fields = ', '.join(f'{name} (checkpoint {old!r}, now {new!r})'
                         for name, old, new in differences)
      raise config_lib.ConfigError(
          f'{self.workdir} holds a checkpoint of a different config: {fields}; '
          f'use another --workdir, or set those fields back {fix}.')

  def save(self, step: int, state, rng, data_iterator=None, eval_metrics: Optional[dict] = None,
           course: Optional[dict] = None):
    """Starts saving (asynchronously if configured); a step already saved is
    skipped. `course`: the train loss's course (divergence.Course.state)."""
    if step == self._last_step:
      return
    state_item = {'train_state': state, 'rng': rng}
    integrity = fingerprint(state_item, data_iterator)
    if data_iterator is not None:
      integrity['batch_size'] = self._batch_size()
    items = {'state': ocp.args.StandardSave(state_item),
             'config': ocp.args.JsonSave(self.config),
             'integrity': ocp.args.JsonSave(integrity)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    if course is not None:
      items['course'] = ocp.args.JsonSave(course)
    metrics = {'loss': float(eval_metrics['loss'])} if eval_metrics else None
    with self._writing():
      self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
    self._last_step = step

  @contextlib.contextmanager
  def _writing(self):
    """Turns a failed save (Orbax raises many kinds) into one run_log.WriteFailed,
    raised again by every later save, wait and check."""
    if self._failure is not None:
      raise self._failure
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      self._failure = run_log.write_failed(self.directory, e)
      # Its abandoned writes: collected now, while the interpreter is whole, and
      # without Python's warning at exit about each one that was never awaited.
      warnings.filterwarnings('ignore', r"coroutine '.*' was never awaited", RuntimeWarning)
      gc.collect()
      raise self._failure from None

  def _restore_verified(self, step: int, target: dict, data_iterator):
    """The state item of `step`, after checking it (and the data position the
    iterator was moved to) against the checksums saved with it."""
    items = {'state': ocp.args.StandardRestore(target)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    step_dir = os.path.join(self.directory, str(step))
    has_integrity = os.path.isdir(os.path.join(step_dir, 'integrity'))
    if has_integrity:
      items['integrity'] = ocp.args.JsonRestore()
    if os.path.isdir(os.path.join(step_dir, 'course')):
      items['course'] = ocp.args.JsonRestore()  # read, so that a damaged one is found here.
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if has_integrity:
      saved = restored['integrity']
      now = fingerprint(restored['state'], data_iterator)
      _check_sums(saved['state'], now['state'])
      if data_iterator is not None and saved.get('data') != now.get('data'):
        raise ValueError('the data position differs from the one saved with it')
    return restored['state']

  def restore(self, target_state, target_rng, data_iterator=None, step: Optional[int] = None):
    """(step, state, rng) of the newest checkpoint that restores intact (or of
    `step`), restored into the targets' shapes and shardings; the data
    iterator, if given, is moved to the saved position in place.

    Damaged newer checkpoints are moved aside (writable) or skipped, each with
    one line; see the module doc.

    Raises:
      NoIntactCheckpoint: no checkpoint (or not `step`) restores.
    """
    target = {'train_state': target_state, 'rng': target_rng}
    steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    if steps and data_iterator is not None:
      self._check_process_count(steps[0])
      self._check_batch_size(steps[0])
    found, restored = self._newest_intact(
        steps, lambda candidate: self._restore_verified(candidate, target, data_iterator))
    return found, restored['train_state'], restored['rng']

  def _newest_intact(self, steps: list, read) -> tuple:
    """(step, read(step)) for the first of `steps` that `read` restores without
    an error; the damaged ones before it are set aside (`_set_aside`).

    Raises:
      NoIntactCheckpoint: none of `steps` restores; names each one's reason.
    """
    failures = []
    for candidate in steps:
      with _quiet_abandoned_reads():
        try:
          restored, reason = read(candidate), None
        except Exception as e:  # pylint: disable=broad-except  # Orbax raises many kinds.
          restored, reason = None, _reason(e)
      if jax.process_count() > 1:  # intact only if intact for every process.
        oks = multihost_utils.process_allgather(np.int32(reason is None))
        if reason is None and not np.all(oks):
          reason = 'damaged as another process reads it'
      if reason is not None:
        failures.append((candidate, reason))
        continue
      for damaged, reason in failures:
        self._set_aside(damaged, reason, candidate)
      return candidate, restored
    listed = '; '.join(f'step {s}: {reason}' for s, reason in failures)
    raise NoIntactCheckpoint(
        f'No checkpoint in {self.directory} restores ({listed}); if the files are damaged, '
        'move them away to start afresh; if the code changed, use the version that wrote them.')

  def _check_process_count(self, step: int):
    """Raises ConfigError when `step` was written by another number of processes."""
    names = glob.glob(os.path.join(self.directory, str(step), 'data', 'process_*-of-*.json'))
    counts = {int(m.group(1)) for m in (re.search(r'-of-(\d+)\.json$', n) for n in names) if m}
    if counts and counts != {jax.process_count()}:
      raise config_lib.ConfigError(
          f'{self.directory}/{step} was written by {max(counts)} process(es), and this run has '
          f'{jax.process_count()}; resume it with {max(counts)} (config.distributed).')

  def _batch_size(self) -> int:
    """The global batch this run trains on (config.data.uneven_batch=drop may
    lower config.batch_size to split over the devices)."""
    return config_lib.global_batch_size(config_lib.from_saved(self.config), jax.device_count())

  def _check_batch_size(self, step: int):
    """Raises ConfigError when `step`'s data position counts batches of another
    size than this run's (uneven_batch=drop on another device count)."""
    try:
      with open(os.path.join(self.directory, str(step), 'integrity', 'metadata')) as f:
        saved = json.load(f).get('batch_size')
    except (OSError, ValueError, AttributeError):
      return  # older or damaged: restore() deals with it.
    now = self._batch_size()
    if saved is not None and saved != now:
      raise config_lib.ConfigError(
          f'{self.directory}/{step} was trained on global batches of {saved} rows, and '
          f'config.batch_size={self.config["batch_size"]} gives {now} on {jax.device_count()} '
          f'device(s) (config.data.uneven_batch=drop); resume on a device count that gives '
          f'{saved}, or use another --workdir.')

  def _set_aside(self, step: int, reason: str, fallback: int):
    if not self.writable:
      print(f'Checkpoint step {step} in {self.directory} is damaged ({reason}); using step '
            f'{fallback}.', flush=True)
      return
    destination = self._move(step, DAMAGED_DIR)
    if jax.process_index() == 0:
      print(f'Checkpoint step {step} is damaged ({reason}); moved it to {destination}; '
            f'resuming from step {fallback}.', flush=True)

  def set_aside_after(self, step: Optional[int]) -> list:
    """Moves every checkpoint after `step` (every one: None) to
    <workdir>/diverged_checkpoints/, after a save in flight ends; returns the
    steps moved. What a run that diverged does with the checkpoints that hold
    the diverged state, so that it resumes from the last good one."""
    self.wait()
    steps = sorted(s for s in self.all_steps() if step is None or s > step)
    for s in steps:
      self._move(s, DIVERGED_DIR)
    return steps

  def _move(self, step: int, directory: str) -> str:
    """Moves checkpoint `step` to <workdir>/<directory>/<step>-<time> (every
    process calls it); returns where it went."""
    source = os.path.join(self.directory, str(step))
    destination = os.path.join(self.workdir, directory, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(destination), exist_ok=True)
      shutil.move(source, destination)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'move checkpoint {step} to {directory}')
    self.manager.reload()
    self._last_step = self.manager.latest_step()
    return destination

  def wait(self):
    """Waits for a save in flight.

    Raises:
      run_log.WriteFailed: a save failed.
    """
    with self._writing():
      self.manager.wait_until_finished()

  def last_saved(self) -> Optional[int]:
    """The newest checkpoint written in full, after a save in flight ends (one
    that failed is not one; nothing is raised)."""
    try:
      self.wait()
    except run_log.WriteFailed:
      pass
    self.manager.reload()
    return self.manager.latest_step()

  def check(self):
    """Raises run_log.WriteFailed if a save failed, without waiting for one in flight."""
    if not self.manager.is_saving_in_progress():
      self.wait()

  def close(self):
    """Waits for a save in flight and stops Orbax's threads.

    Raises:
      run_log.WriteFailed: a save failed and was not reported yet.
    """
    try:
      if self.writable and self._failure is None:
        self.wait()
    finally:
      try:
        self.manager.close()
      except Exception:  # pylint: disable=broad-except
        if self._failure is None:
          raise

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False


class StopSignal:
  """Context manager: SIGTERM or Ctrl-C (SIGINT) asks the loop to save a
  checkpoint and exit instead of killing the process; `should_stop(step)` says
  when. A second signal interrupts at once.

  Multi-host (`sync=True`), every process must stop at the same step, wherever
  the signal landed: SIGTERM is left to JAX's preemption notifier (installed by
  jax.distributed.initialize), Ctrl-C is passed on to it as a SIGTERM, and
  `should_stop` is Orbax's/JAX's preemption sync point, true on every process
  at the same step.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, sync: bool = False):
    self.sync = sync
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
    if self.sync:
      os.kill(os.getpid(), signal.SIGTERM)  # to the preemption notifier, which tells all.

  def should_stop(self, step: int) -> bool:
    """Whether to save and exit after `step` (called once per step, by every process)."""
    if not self.sync:
      return self.signum is not None
    if multihost_utils.reached_preemption_sync_point(step):
      self.signum = self.signum or signal.SIGTERM
      return True
    return False

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in ((signal.SIGINT,) if self.sync else self.SIGNALS):
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    return False
