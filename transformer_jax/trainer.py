"""Training: `setup` and the loop.

`setup(config, workdir)` builds everything training works on (the run's
datasets, the parallel strategy, the model, the placed state restored from the
workdir's latest checkpoint, the checkpointer, the workdir's lock) and returns
it as one `Run`; `train` loops over it. Eval, decode and export read a
finished run without any of this (restore.py, evaluation.py).

The loop resumes from the latest checkpoint (state, dropout key, data
position and the loss's course), logs metrics (run_log.py), evaluates,
checkpoints (checkpoint.py), stops cleanly on SIGTERM / Ctrl-C, and stops when
the loss leaves its course (divergence.py), setting aside the checkpoints that
hold the diverged state so that the same command resumes from the last good one.
"""

import dataclasses
import os
import shutil
import time
from typing import Any, Optional

from absl import logging
import jax
import numpy as np

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import config as config_lib
from transformer_jax import divergence
from transformer_jax import evaluation
from transformer_jax import generate
from transformer_jax import init_from as init_from_lib
from transformer_jax import lock as lock_lib
from transformer_jax import metrics as metrics_lib
from transformer_jax import parallel
from transformer_jax import progress
from transformer_jax import run_log
from transformer_jax import train as train_lib
from transformer_jax.data import datasets as datasets_lib
from transformer_jax.data import tokenizers as tokenizers_lib
from transformer_jax.models import accounting
from transformer_jax.models.transformer import build_model

class TrainingDiverged(RuntimeError):
  """The loss left its course (divergence.py); the message names the step and
  the last good checkpoint."""


class _LeftCourse(Exception):
  """Raised inside the loop at the step the loss left its course."""

  def __init__(self, divergence_found: divergence.Divergence):
    super().__init__(divergence_found.reason)
    self.divergence = divergence_found


@dataclasses.dataclass
class Run:
  """What training works on. Use as a context manager: leaving it waits for
  checkpoint writes in flight, closes the checkpointer and releases the
  workdir's lock."""
  config: Any
  workdir: str
  datasets: datasets_lib.Datasets
  strategy: Any  # parallel.PmapStrategy | parallel.MeshStrategy
  model: Any  # flax.linen.Module
  state: train_lib.TrainState  # placed on the devices.
  rng: jax.Array  # the dropout key.
  step: int  # optimizer updates in `state`.
  checkpointer: checkpoint_lib.Checkpointer
  lock: Optional[lock_lib.WorkdirLock] = None  # process 0's.

  @property
  def params(self):
    """The parameters as one copy (what sampling takes)."""
    return self.strategy.one_copy(self.state).params

  def close(self):
    try:
      self.checkpointer.close()
    finally:
      if self.lock is not None:
        self.lock.release()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False


def missing_root(path: str) -> Optional[str]:
  """The outermost directory of `path` that does not exist yet (None: it exists):
  how far `unmake` may go to undo making `path`."""
  missing, parent = None, os.path.abspath(path)
  while not os.path.exists(parent):
    missing, parent = parent, os.path.dirname(parent)
  return missing


def unmake(path: str, root: Optional[str], contents: bool = False):
  """Undoes making directory `path` whose outermost new directory was `root`
  (missing_root's answer before): `path` goes (with what is in it only if
  `contents`), then each parent up to `root` while it is empty, so a run made
  meanwhile beside it (another workdir under the same new parent) stays."""
  if root is None:
    return
  path = os.path.abspath(path)
  if contents:
    shutil.rmtree(path, ignore_errors=True)
  while True:
    try:
      os.rmdir(path)
    except FileNotFoundError:
      pass  # removed with its contents.
    except OSError:
      return
    if path == root:
      return
    path = os.path.dirname(path)


def setup(config, workdir: str) -> Run:
  """The run in `workdir` for training, resumed from its newest intact checkpoint.

  Takes the workdir's lock (lock.py), starts fresh when there is no checkpoint
  (from config.init_from's parameters if set: init_from.py), and restores the
  data position with the state; it may change the optimiser's `tunable`
  settings on resume (said in one line). A first start that is refused (a
  config error found once the data is read, data that is not there) leaves no
  vocabulary behind, so the corrected command builds the one it asks for, and
  no workdir where there was none.

  Raises:
    ConfigError: the config cannot work, differs from the checkpoint's in a
      field that changes what the run computes (or, multi-host, from process
      0's), or asks for fewer steps than the checkpoint has done.
    WorkdirLocked: another process trains in the workdir.
    DistributedError: (multi-host) another process refused to start.
    NoIntactCheckpoint: no checkpoint of the workdir restores.
  """
  config_lib.validate(config)
  new_root = missing_root(workdir)
  lock = refusal = None
  if jax.process_index() == 0:
    try:
      lock = lock_lib.WorkdirLock(workdir).acquire()
    except lock_lib.WorkdirLocked as e:
      refusal = e
  checkpointer = None
  vocabulary = os.path.join(workdir, tokenizers_lib.RUN_DIRECTORY)
  new_vocabulary = False
  try:
    parallel.start_together(config, refusal)
    checkpointer = checkpoint_lib.Checkpointer(workdir, config)
    latest = checkpointer.latest_step()
    new_vocabulary = latest is None and not tokenizers_lib.is_saved(vocabulary)
    checkpointer.check_compatible()
    if latest is not None:
      _announce_tuned(checkpointer)
    starts_from_another_run = latest is None and config.init_from
    if starts_from_another_run:
      init_from_lib.copy_vocabulary(config, workdir)
    datasets = datasets_lib.create_datasets(config, workdir)
    strategy = parallel.create(config, *train_lib.make_steps(config))
    model = build_model(config.model)
    state, rng = train_lib.create_state(config, model, strategy)
    if latest is not None:
      step, restored, rng = checkpointer.restore(strategy.checkpoint_target(state),
                                                 parallel.replicated_target(rng), datasets.train)
      state, rng = strategy.from_checkpoint(restored), parallel.local_value(rng)
      logging.info('Resumed from step %d.', step)
    elif starts_from_another_run:
      fresh = jax.device_get(strategy.one_copy(state).params)
      params, report = init_from_lib.load(config, fresh, datasets.tokenizer)
      state = strategy.with_params(state, params)
      print(report, flush=True)
    step = int(strategy.fetch({'step': state.step})['step'])
    if step > config.total_steps:
      raise config_lib.ConfigError(
          f'{workdir} is already at step {step}, past config.total_steps={config.total_steps}; '
          f'set --config.total_steps above {step} to train on, or use another --workdir.')
  except BaseException:
    if new_vocabulary and jax.process_index() == 0:  # no checkpoint was made with it.
      shutil.rmtree(vocabulary, ignore_errors=True)
    if checkpointer is not None:
      checkpointer.close()
    if lock is not None:  # the workdir was made by us, under our lock.
      unmake(workdir, new_root, contents=True)
    if lock is not None:
      lock.release()
    raise
  return Run(config=config, workdir=workdir, datasets=datasets, strategy=strategy, model=model,
             state=state, rng=rng, step=step, checkpointer=checkpointer, lock=lock)


def _announce_tuned(checkpointer: checkpoint_lib.Checkpointer):
  """One line naming the optimiser settings that differ from the checkpoint's."""
  saved = checkpointer.saved_config()
  tuned = checkpoint_lib.tuned_fields(saved, checkpointer.config) if saved else []
  if tuned:
    changes = ', '.join(f'{name} {old!r} -> {new!r}' for name, old, new in tuned)
    print(f'Resuming with changed optimiser settings: {changes} (recorded in '
          'environment.json).', flush=True)


def _tokens(batch: dict, model) -> int:
  """Positions a step computes on: target tokens (input tokens for encoders; for
  images, each row's patch tokens and [CLS])."""
  if model.patch_size:
    return len(batch['targets']) * config_lib.ModelConfig.of(model).image_length
  return int(np.size(batch['inputs'] if model.variant == 'encoder' else batch['targets']))


class _Interval:
  """Per-step device metrics since the last train record, fetched only when
  logged, and the time, tokens and data wait they took."""

  def __init__(self):
    self.steps, self.metrics = [], []
    self.restart_clock()

  def restart_clock(self):
    self.start, self.tokens, self.data_wait = time.perf_counter(), 0, 0.0

  def check_course(self, strategy, course: divergence.Course):
    """Host copies of the pending metrics, each step put to `course`; raises
    _LeftCourse at the first step off it."""
    fetched = [strategy.fetch(m) for m in self.metrics]
    for step, m in zip(self.steps, fetched):
      found = course.update(step, m['nll'], m['weight'], m['grad_norm'])
      if found:
        raise _LeftCourse(found)
    return fetched


def train(config, workdir: str) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the final eval metrics.

  Raises ConfigError for a config that cannot work or does not match the
  workdir's checkpoint, TrainingDiverged when the loss leaves its course (after
  which the latest checkpoint is the last good one: `_stop_diverged`), and
  returns early (with `result['interrupted']` set to the signal number) after
  saving on SIGTERM or Ctrl-C.
  """
  with setup(config, workdir) as run:
    return _loop(run)


def _loop(run: Run) -> dict:
  """The training loop over a set-up run."""
  config, workdir, strategy, checkpointer = run.config, run.workdir, run.strategy, run.checkpointer
  datasets, rng, state, start_step = run.datasets, run.rng, run.state, run.step
  train_iter = datasets.train
  dropped = run_log.cut_back(workdir, start_step)
  if dropped:
    print(f'Dropped {dropped} record(s) past step {start_step} from metrics.jsonl (steps that '
          'are trained again).', flush=True)
  run_log.write_run_info(workdir, config, start_step)
  writer = run_log.MetricWriter(workdir, config.total_steps, resume_step=start_step, config=config)
  task = config.data.task
  flops_per_token = accounting.flops_per_token(config.model, config.seq_len)
  peak = metrics_lib.peak_flops(config)
  baseline = datasets.info.get('unigram_entropy')
  course = divergence.Course(config, checkpointer.course(start_step) if start_step else None)
  print(f'{workdir}: {accounting.count_params(config.model):,} parameters, '
        f'{strategy.num_devices} {jax.devices()[0].platform} device(s) ({strategy.name}), '
        + (f'resuming at step {start_step}' if start_step else 'starting at step 0')
        + f' of {config.total_steps}'
        + (f'; unigram baseline {baseline:.4f} nats/token.' if baseline else '.'), flush=True)

  def run_eval(step, record=True):
    sums = evaluation.evaluate(strategy, state, datasets.eval(), config.eval_steps)
    values = metrics_lib.summarize(sums, task)
    texts = []
    # Decoding runs on one process's devices.
    if record and config.eval_decode_examples and jax.process_count() == 1:
      decoded, texts = evaluation.training_task_metrics(
          config, run.model, strategy.one_copy(state).params, datasets, values['loss'])
      values.update(decoded)
    if record:
      writer.write(step, 'eval', values, evaluation.eval_measure(config, datasets))
      if texts:
        writer.write_texts(step, 'eval/decoded', texts)
    return values

  def save(step, eval_metrics=None):
    checkpointer.save(step, strategy.to_checkpoint(state), parallel.replicated_everywhere(rng),
                      train_iter, eval_metrics, course.state())

  interval = _Interval()
  profile = _Profile(config, workdir)
  eval_metrics = None
  step = start_step
  try:
    with checkpoint_lib.StopSignal(sync=jax.process_count() > 1) as stop:
      stopping = False
      while step < config.total_steps and not stopping:
        profile.before(step + 1)
        wait_start = time.perf_counter()
        batch = next(train_iter)
        interval.data_wait += time.perf_counter() - wait_start
        state, step_metrics = strategy.train_step(state, strategy.put_batch(batch), rng)
        step += 1
        interval.steps.append(step)
        interval.metrics.append(step_metrics)
        interval.tokens += _tokens(batch, config.model)
        stopping = stop.should_stop(step)
        profile.after(step, state)
        if step == start_step + 1:  # the first step compiles: time the rest.
          jax.block_until_ready(step_metrics)
          interval.restart_clock()
        is_last = step == config.total_steps
        is_eval = step % config.eval_every == 0 or is_last
        is_save = is_eval or step % config.checkpoint_every == 0
        if step % config.log_every == 0 or is_last or is_save or stopping:
          _log_train(writer, interval, course, strategy, step, task, flops_per_token, peak)
          checkpointer.check()  # a save that failed in the background stops the run here.
          if is_eval:
            eval_metrics = run_eval(step)
          if is_save:
            save(step, eval_metrics if is_eval else None)
          interval.restart_clock()  # eval and saving are not train time.
      if interval.metrics:
        _log_train(writer, interval, course, strategy, step, task, flops_per_token, peak)
      if stopping or stop.signum is not None:  # a signal in the last step's eval or save too.
        save(step)
        checkpointer.wait()
        print(f'Saved a checkpoint at step {step} in {checkpointer.directory}; run the same '
              'command to resume.', flush=True)
        return {'interrupted': stop.signum, 'step': step}
    if eval_metrics is None:  # resumed a finished run: evaluate it again, recorded once.
      eval_metrics = run_eval(step, record=not _has_eval_record(
          workdir, step, evaluation.eval_measure(config, datasets)))
    save(step, eval_metrics)
    checkpointer.wait()
    run.state, run.step = state, step
    if config.num_samples and config.model.variant == 'decoder' and jax.process_count() == 1:
      writer.write_texts(step, 'samples', generate.print_samples(
          config, run.model, run.params, datasets.tokenizer, encode=datasets.encode_input))
  except _LeftCourse as e:
    raise TrainingDiverged(_stop_diverged(e.divergence, checkpointer)) from None
  except run_log.WriteFailed as e:
    raise run_log.WriteFailed(f'{e} Stopped at step {step}: {_resume_from(checkpointer)}',
                              e.errno, e.strerror, e.filename) from None
  finally:
    profile.close()
    writer.close()
  return dict(eval_metrics, step=step)


class _Profile:
  """A jax.profiler trace of the steps config.profile_steps names, in
  <workdir>/profile/ (TensorBoard's Profile tab reads it: plugins/profile/<run>/)."""

  def __init__(self, config, workdir: str):
    self.range = config_lib.profile_range(config)
    self.directory = os.path.join(workdir, 'profile')
    self.tracing = False

  def before(self, step: int):
    """Starts the trace before the step numbered `step` runs, when it is in the range."""
    if self.range and not self.tracing and self.range[0] <= step <= self.range[1]:
      jax.profiler.start_trace(self.directory)
      self.tracing = True

  def after(self, step: int, state):
    """Ends the trace once the range's last step has run (its arrays computed)."""
    if self.tracing and step >= self.range[1]:
      jax.block_until_ready(state)
      self.close()
      print(f'Traced steps {self.range[0]} to {step} in {self.directory}; open it with '
            f'tensorboard --logdir={self.directory} (Profile tab).', flush=True)

  def close(self):
    if self.tracing:
      self.tracing = False
      jax.profiler.stop_trace()


def _resume_from(checkpointer: checkpoint_lib.Checkpointer) -> str:
  """Where the same command resumes after a failed write: the last checkpoint."""
  good = checkpointer.last_saved()
  if good is None:
    return 'no checkpoint was saved; the same command starts again from step 0.'
  return (f'the same command resumes from step {good}, the last checkpoint in '
          f'{checkpointer.directory}.')


def _stop_diverged(found: divergence.Divergence, checkpointer: checkpoint_lib.Checkpointer) -> str:
  """Sets aside the checkpoints that hold the diverged state (those after the
  last good one, divergence.Divergence.last_good), so that the same command
  resumes from the last good one; returns the one line that says so."""
  checkpointer.wait()
  good = found.last_good(checkpointer.all_steps())
  moved = checkpointer.set_aside_after(good)
  plural = 's' * (len(moved) > 1)
  aside = (f'step{plural} {", ".join(map(str, moved))} held the diverged state and moved to '
           f'{os.path.join(checkpointer.workdir, checkpoint_lib.DIVERGED_DIR)}/; ')
  if good is not None:
    recorded = checkpointer.course(good)
    loss = (f' (train loss {recorded["loss"]:.4f})'
            if recorded and recorded.get('loss') is not None else '')
    where = (f'The last good checkpoint is step {good}{loss} in {checkpointer.directory}; '
             f'{aside if moved else ""}to continue from it')
  elif moved:
    where = f'No checkpoint is good: {aside}to start again from step 0'
  else:
    where = 'No checkpoint was saved before it; to start again from step 0'
  return (f'Training diverged: {found.reason}; stopped. {where}, run the same command with a '
          'lower --config.learning_rate or a --config.optimizer.grad_clip_norm (optimiser '
          'settings may change on resume).')


def _has_eval_record(workdir: str, step: int, measure: dict) -> bool:
  """Whether metrics.jsonl holds an eval record at `step` measured as `measure`
  says (evaluation.eval_measure)."""
  try:
    records = run_log.read_jsonl(workdir, 'eval')
  except FileNotFoundError:
    return False
  return any(r['step'] == step and all(r.get(k) == measure.get(k)
                                      for k in run_log.MEASURE_KEYS)
             for r in records)


def _log_train(writer, interval: _Interval, course: divergence.Course, strategy, step: int,
               task: str, flops_per_token: float, peak: Optional[float]):
  """Writes one train record for the steps since the last one (after putting
  them to the divergence rule)."""
  fetched = interval.check_course(strategy, course)
  seconds = max(time.perf_counter() - interval.start, 1e-9)
  sums = {k: sum(float(m[k]) for m in fetched) for k in ('nll', 'correct', 'weight')}
  values = metrics_lib.summarize(sums, task)
  tokens_per_sec = interval.tokens / seconds if interval.tokens else None
  values.update(learning_rate=float(fetched[-1]['learning_rate']),
                grad_norm=float(np.mean([m['grad_norm'] for m in fetched])),
                tokens_per_sec=tokens_per_sec,
                data_wait_fraction=interval.data_wait / seconds,
                mfu=metrics_lib.mfu(flops_per_token, tokens_per_sec or 0.0, peak,
                                    strategy.num_devices))
  writer.write(step, 'train', values)
  interval.steps, interval.metrics = [], []
