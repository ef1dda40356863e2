"""Training: the state, the pure train and eval steps, the optimiser and the loop.

`train_step(state, batch, rng)` and `eval_step(state, batch)` are pure
functions; `parallel.py` compiles the same two functions for one device, pmap
or a device mesh. `train(config, workdir)` is the loop behind
`python -m transformer_jax.main --mode=train`: it resumes from the workdir's
latest checkpoint, logs metrics (metrics.py), evaluates, checkpoints
(checkpoint.py), stops cleanly on SIGTERM / Ctrl-C and on a non-finite loss.

Losses are normalised by the total weight of the *global* batch, so the update
is the same whatever the split over devices or gradient-accumulation
micro-batches.
"""

import functools
import time
from typing import Any, Callable, Optional

from absl import logging
from flax import struct
from flax.core import meta
import jax
import jax.numpy as jnp
import numpy as np
import optax

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import config as config_lib
from transformer_jax import metrics as metrics_lib
from transformer_jax import parallel
from transformer_jax.data import batch as batch_lib
from transformer_jax.models import accounting
from transformer_jax.models.transformer import build_model


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite; the message names the step."""


class TrainState(struct.PyTreeNode):
  """Everything an update changes. `apply_fn(params, batch, deterministic, rngs)`
  returns logits; `tx` is the optax optimiser."""
  step: jax.Array  # optimizer updates done.
  params: Any
  opt_state: Any
  apply_fn: Callable = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  def apply_gradients(self, grads):
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state)


# ----------------------------------------------------------------------------
# Optimiser.


def learning_rate_schedule(config) -> Callable:
  """Learning rate of update `count` (0-based; the paper's step is count + 1).

  rsqrt (paper, eq. 3): learning_rate * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)
  cosine: linear warmup to learning_rate, then cosine decay to
          optimizer.end_learning_rate at total_steps.
  constant: linear warmup to learning_rate, then flat.
  """
  peak, warmup, total = config.learning_rate, config.warmup_steps, config.total_steps
  schedule, end = config.optimizer.schedule, config.optimizer.end_learning_rate
  scale = peak * config.model.d_model**-0.5

  def learning_rate(count):
    step = jnp.asarray(count, jnp.float32) + 1.0
    if schedule == 'rsqrt':
      return scale * jnp.minimum(step**-0.5, step * warmup**-1.5)
    warm = jnp.minimum(1.0, step / warmup) if warmup else 1.0
    if schedule == 'constant':
      return peak * warm
    progress = jnp.clip((step - warmup) / max(total - warmup, 1), 0.0, 1.0)
    return warm * (end + 0.5 * (peak - end) * (1.0 + jnp.cos(jnp.pi * progress)))

  return learning_rate


def create_optimizer(config, learning_rate_fn: Callable) -> optax.GradientTransformation:
  """Adam (paper: b1 0.9, b2 0.98, eps 1e-9) or AdamW, after global-norm clipping."""
  o = config.optimizer
  if o.name == 'adamw':
    # Decay matrices only, not biases and LayerNorm scales.
    tx = optax.adamw(learning_rate_fn, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                     mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params))
  else:
    tx = optax.adam(learning_rate_fn, b1=o.b1, b2=o.b2, eps=o.eps)
  if o.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), tx)
  return tx


# ----------------------------------------------------------------------------
# State.


def make_apply_fn(model, variant: str) -> Callable:
  """apply_fn(params, batch, deterministic, rngs) -> logits, for any variant."""
  names = batch_lib.MODEL_INPUTS[variant]

  def apply_fn(params, batch, deterministic=True, rngs=None):
    inputs = {k: v for k, v in batch.items() if k in names}
    return model.apply({'params': params}, **inputs, deterministic=deterministic, rngs=rngs)

  return apply_fn


def init_fn(config, model, tx) -> Callable:
  """rng -> a fresh TrainState (pure, so a strategy can jit it into its shards)."""
  shape = (1, config.seq_len)
  args = [jnp.ones(shape, jnp.int32)] * (2 if config.model.variant == 'seq2seq' else 1)
  apply_fn = make_apply_fn(model, config.model.variant)

  def init(rng):
    params = meta.unbox(model.init(rng, *args)['params'])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      apply_fn=apply_fn, tx=tx)

  return init


# ----------------------------------------------------------------------------
# Losses and the steps.


def cross_entropy(logits, targets, weights, label_smoothing: float = 0.0):
  """Weighted sums over targets: (objective, {'nll', 'correct', 'weight'}).

  logits [..., V] float32, targets [...] int, weights [...] (0 = ignore). The
  objective is the cross-entropy against the label-smoothed distribution
  (1 - eps) one_hot + eps / V (paper 5.4); 'nll' is the unsmoothed negative
  log-likelihood that loss and perplexity report.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  loss = nll
  if label_smoothing > 0:
    loss = (1.0 - label_smoothing) * nll - label_smoothing * log_probs.mean(-1)
  weights = weights.astype(jnp.float32)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  sums = {'nll': (nll * weights).sum(), 'correct': (correct * weights).sum(),
          'weight': weights.sum()}
  return (loss * weights).sum(), sums


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def train_step(state: TrainState, batch: dict, rng, *, learning_rate_fn: Callable,
               label_smoothing: float = 0.0, grad_accum_steps: int = 1,
               axis_name: Optional[str] = None):
  """One optimizer update. Returns (state, metrics) with metrics summed over the
  global batch: nll, correct, weight, plus grad_norm and learning_rate.

  `rng` is the run's dropout key; the step number (and, under pmap over several
  devices, the device index) is folded in, so every step and device drops
  differently and a resumed run drops exactly as the uninterrupted one. Under pmap (`axis_name` set) the
  batch is this device's share and gradients are averaged with `lax.pmean`.
  With `grad_accum_steps` > 1 the batch is split into micro-batches whose
  gradients are summed in a `lax.scan` before the one update.
  """
  rng = jax.random.fold_in(rng, state.step)
  num_shards = 1 if axis_name is None else jax.lax.axis_size(axis_name)
  if num_shards > 1:  # one device draws as jit does, so it is the degenerate case.
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  total_weight = _psum(batch['weights'].astype(jnp.float32).sum(), axis_name)
  # pmean of (local sum * shards / global weight) = global sum / global weight.
  scale = num_shards / jnp.where(total_weight > 0, total_weight, 1.0)

  def loss_fn(params, micro_batch, micro_rng):
    logits = state.apply_fn(params, micro_batch, deterministic=False,
                            rngs={'dropout': micro_rng})
    objective, sums = cross_entropy(logits, micro_batch['targets'], micro_batch['weights'],
                                    label_smoothing)
    return objective * scale, sums

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum_steps == 1:
    (_, sums), grads = grad_fn(state.params, batch, rng)
  else:
    # Strided split (row i goes to micro-batch i % k): each device keeps its own rows.
    micro_batches = jax.tree.map(
        lambda x: x.reshape(-1, grad_accum_steps, *x.shape[1:]).swapaxes(0, 1), batch)

    def accumulate(carry, inputs):
      index, micro_batch = inputs
      (_, sums), grads = grad_fn(state.params, micro_batch, jax.random.fold_in(rng, index))
      return jax.tree.map(jnp.add, carry, (grads, sums)), None

    zeros = (jax.tree.map(jnp.zeros_like, state.params),
             {k: jnp.zeros((), jnp.float32) for k in ('nll', 'correct', 'weight')})
    (grads, sums), _ = jax.lax.scan(accumulate, zeros,
                                    (jnp.arange(grad_accum_steps), micro_batches))
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
    sums = jax.lax.psum(sums, axis_name)
  metrics = dict(sums, grad_norm=optax.tree.norm(grads),
                 learning_rate=learning_rate_fn(state.step))
  return state.apply_gradients(grads), metrics


def eval_step(state: TrainState, batch: dict, *, axis_name: Optional[str] = None) -> dict:
  """Sums of nll, correct and weight over the (global) batch; no dropout."""
  logits = state.apply_fn(state.params, batch, deterministic=True)
  _, sums = cross_entropy(logits, batch['targets'], batch['weights'])
  return jax.tree.map(lambda x: _psum(x, axis_name), sums)


def make_steps(config):
  """The pure steps with the config's static options bound."""
  step = functools.partial(train_step, learning_rate_fn=learning_rate_schedule(config),
                           label_smoothing=config.optimizer.label_smoothing,
                           grad_accum_steps=config.optimizer.grad_accum_steps)
  return step, eval_step


# ----------------------------------------------------------------------------
# The loop.


def evaluate(strategy, state, batches, max_batches: int = 0) -> dict:
  """Sums of eval_step over `batches` (all of them when max_batches is 0)."""
  total = None
  for i, batch in enumerate(batches):
    if max_batches and i >= max_batches:
      break
    sums = strategy.eval_step(state, strategy.put_batch(batch))
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  if total is None:
    raise ValueError('The eval split yielded no batches; check config.data.')
  return strategy.fetch(total)


def _tokens(batch: dict, variant: str) -> int:
  """Positions a step computes on: target tokens (input tokens for encoders)."""
  return int(np.size(batch['inputs'] if variant == 'encoder' else batch['targets']))


class _Interval:
  """Per-step device metrics since the last train record, fetched only when
  logged, and the time, tokens and data wait they took."""

  def __init__(self):
    self.steps, self.metrics = [], []
    self.restart_clock()

  def restart_clock(self):
    self.start, self.tokens, self.data_wait = time.perf_counter(), 0, 0.0

  def check_finite(self, strategy):
    """Host copies of the pending metrics; raises TrainingDiverged at the first bad step."""
    fetched = [strategy.fetch(m) for m in self.metrics]
    for step, m in zip(self.steps, fetched):
      if not (np.isfinite(m['nll']) and np.isfinite(m['grad_norm'])):
        raise TrainingDiverged(f'loss is {m["nll"] / max(m["weight"], 1e-9)} (grad norm '
                               f'{m["grad_norm"]}) at step {step}')
    return fetched


def train(config, workdir: str) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the final eval metrics.

  Raises ConfigError for a config that cannot work or does not match the
  workdir's checkpoint, TrainingDiverged for a non-finite loss (after which the
  last checkpoint is the last good state), and returns early (with
  `result['interrupted']` set to the signal number) after saving on SIGTERM or
  Ctrl-C.
  """
  config_lib.validate(config)
  with checkpoint_lib.Checkpointer(workdir, config) as checkpointer:
    checkpointer.check_compatible(workdir)
    return _train(config, workdir, checkpointer)


def _train(config, workdir: str, checkpointer) -> dict:
  """The body of `train` once the workdir is known to be compatible."""
  from transformer_jax.data import datasets as datasets_lib  # pylint: disable=g-import-not-at-top
  datasets = datasets_lib.create_datasets(config, workdir)
  strategy = parallel.create(config, *make_steps(config))
  model = build_model(config.model)
  learning_rate_fn = learning_rate_schedule(config)
  tx = create_optimizer(config, learning_rate_fn)
  init_rng, rng = jax.random.split(jax.random.PRNGKey(config.seed))
  state = strategy.init_state(init_fn(config, model, tx), init_rng)
  train_iter = datasets.train
  if checkpointer.latest_step() is not None:
    restored, rng = checkpointer.restore(strategy.checkpoint_target(state), rng, train_iter)
    state = strategy.from_checkpoint(restored)
    logging.info('Resumed from step %d.', checkpointer.latest_step())
  start_step = int(strategy.fetch({'step': state.step})['step'])
  metrics_lib.write_run_info(workdir, config)
  writer = metrics_lib.MetricWriter(workdir, config.total_steps)
  task = config.data.task
  flops_per_token = accounting.flops_per_token(config.model, config.seq_len)
  peak = metrics_lib.peak_flops(config)
  baseline = datasets.info.get('unigram_entropy')
  print(f'{workdir}: {accounting.count_params(config.model):,} parameters, '
        f'{strategy.num_devices} {jax.devices()[0].platform} device(s) ({strategy.name}), '
        + (f'resuming at step {start_step}' if start_step else 'starting at step 0')
        + f' of {config.total_steps}'
        + (f'; unigram baseline {baseline:.4f} nats/token.' if baseline else '.'), flush=True)

  def run_eval(step):
    sums = evaluate(strategy, state, datasets.eval(), config.eval_steps)
    values = metrics_lib.summarize(sums, task)
    writer.write(step, 'eval', values)
    return values

  def save(step, eval_metrics=None):
    checkpointer.save(step, strategy.to_checkpoint(state), rng, train_iter, eval_metrics)

  interval = _Interval()
  eval_metrics = None
  step = start_step
  try:
    with checkpoint_lib.StopSignal() as stop:
      while step < config.total_steps and stop.signum is None:
        wait_start = time.perf_counter()
        batch = next(train_iter)
        interval.data_wait += time.perf_counter() - wait_start
        state, step_metrics = strategy.train_step(state, strategy.put_batch(batch), rng)
        step += 1
        interval.steps.append(step)
        interval.metrics.append(step_metrics)
        interval.tokens += _tokens(batch, config.model.variant)
        if step == start_step + 1:  # the first step compiles: time the rest.
          jax.block_until_ready(step_metrics)
          interval.restart_clock()
        is_last = step == config.total_steps
        is_eval = step % config.eval_every == 0 or is_last
        is_save = is_eval or step % config.checkpoint_every == 0
        if step % config.log_every == 0 or is_last or is_save or stop.signum is not None:
          _log_train(writer, interval, strategy, step, task, flops_per_token, peak)
          if is_eval:
            eval_metrics = run_eval(step)
          if is_save:
            save(step, eval_metrics if is_eval else None)
          interval.restart_clock()  # eval and saving are not train time.
      if interval.metrics:
        _log_train(writer, interval, strategy, step, task, flops_per_token, peak)
      if stop.signum is not None:
        save(step)
        checkpointer.wait()
        print(f'Saved a checkpoint at step {step} in {checkpointer.directory}; run the same '
              'command to resume.', flush=True)
        return {'interrupted': stop.signum, 'step': step}
    if eval_metrics is None:  # resumed a finished run: evaluate it again.
      eval_metrics = run_eval(step)
    save(step, eval_metrics)
    checkpointer.wait()
  except TrainingDiverged as e:
    checkpointer.wait()
    good = checkpointer.latest_step()
    raise TrainingDiverged(
        f'Training diverged: {e}; stopped. The last good checkpoint is '
        + (f'step {good} in {checkpointer.directory}' if good is not None else 'none')
        + '; lower config.learning_rate or set config.optimizer.grad_clip_norm.') from None
  finally:
    writer.close()
  if config.num_samples and config.model.variant == 'decoder':
    from transformer_jax import generate  # pylint: disable=g-import-not-at-top
    # TODO(integration): encode=the data recipe's encode_input; tokenizer.encode is today's.
    generate.print_samples(config, model, strategy.to_checkpoint(state).params,
                           datasets.tokenizer, encode=datasets.tokenizer.encode)
  return dict(eval_metrics, step=step)


def _log_train(writer, interval: _Interval, strategy, step: int, task: str,
               flops_per_token: float, peak: Optional[float]):
  """Writes one train record for the steps since the last one (after checking them)."""
  fetched = interval.check_finite(strategy)
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


def restore_latest(config, workdir: str):
  """(step, strategy, placed state, datasets, model) from the workdir's latest checkpoint."""
  from transformer_jax.data import datasets as datasets_lib  # pylint: disable=g-import-not-at-top
  config_lib.validate(config)
  with checkpoint_lib.Checkpointer(workdir, config) as checkpointer:
    step = checkpointer.latest_step()
    if step is None:
      raise FileNotFoundError(f'{workdir} holds no checkpoint; train first (--mode=train).')
    checkpointer.check_compatible(workdir)
    datasets = datasets_lib.create_datasets(config, workdir)
    strategy = parallel.create(config, *make_steps(config))
    model = build_model(config.model)
    tx = create_optimizer(config, learning_rate_schedule(config))
    state = strategy.init_state(init_fn(config, model, tx), jax.random.PRNGKey(0))
    restored, _ = checkpointer.restore(strategy.checkpoint_target(state),
                                       jax.random.PRNGKey(0))
  return step, strategy, strategy.from_checkpoint(restored), datasets, model


def evaluate_checkpoint(config, workdir: str) -> dict:
  """--mode=eval: the latest checkpoint's metrics on the eval split (all of it
  unless config.eval_steps is set), with the task's decoding metrics
  (evaluation.py), also appended to metrics.jsonl."""
  from transformer_jax import evaluation  # pylint: disable=g-import-not-at-top
  step, strategy, state, datasets, model = restore_latest(config, workdir)
  values = metrics_lib.summarize(evaluate(strategy, state, datasets.eval(), config.eval_steps),
                                 config.data.task)
  params = strategy.to_checkpoint(state).params
  values.update(evaluation.task_metrics(config, model, params, datasets.tokenizer,
                                        values['loss'], datasets))
  tags = evaluation.describe(config, datasets)
  writer = metrics_lib.MetricWriter(workdir, config.total_steps)
  writer.write(step, 'eval', values, tags)
  writer.close()
  return dict(values, step=step, **tags)


def decode_checkpoint(config, workdir: str, lines) -> list:
  """--mode=decode: the latest checkpoint's output for each input line."""
  from transformer_jax import evaluation  # pylint: disable=g-import-not-at-top
  _, strategy, state, datasets, model = restore_latest(config, workdir)
  return evaluation.decode_lines(config, model, strategy.to_checkpoint(state).params,
                                 datasets.tokenizer, lines)
