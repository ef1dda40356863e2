"""Training maths: the state (`create_state`), the optimiser and schedule, the
loss, and the pure train and eval steps.

`train_step(state, batch, rng)` and `eval_step(state, batch)` are pure
functions; `parallel.py` compiles the same two functions for one device, pmap
or a device mesh, and `trainer.py` runs them in the loop.

Losses are normalised by the total weight of the *global* batch, so the update
is the same whatever the split over devices or gradient-accumulation
micro-batches.
"""

import functools
from typing import Any, Callable, Optional

from flax import struct
from flax.core import meta
import jax
import jax.numpy as jnp
import optax

from transformer_jax.data import batch as batch_lib
from transformer_jax.models.transformer import init_inputs


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
  # The same chain with clipping on or off, so the optimizer state has one shape
  # and grad_clip_norm may change when a run resumes (config.tunable).
  clip = optax.clip_by_global_norm(o.grad_clip_norm) if o.grad_clip_norm > 0 else optax.identity()
  return optax.chain(clip, tx)


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
  args = init_inputs(config.model, config.seq_len)
  apply_fn = make_apply_fn(model, config.model.variant)

  def init(rng):
    params = meta.unbox(model.init(rng, *args)['params'])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      apply_fn=apply_fn, tx=tx)

  return init


def create_state(config, model, strategy=None) -> tuple:
  """(state, rng): a fresh TrainState (the schedule, the optimiser, the
  parameters' init from config.seed and the optimiser state) placed by
  `strategy` (parallel.py; without one, jitted on the default device), and the
  dropout key split off the same seed. What every training start builds
  (trainer.py, the benchmarks) before it restores or loads anything."""
  tx = create_optimizer(config, learning_rate_schedule(config))
  init_rng, rng = jax.random.split(jax.random.PRNGKey(config.seed))
  init = init_fn(config, model, tx)
  state = jax.jit(init)(init_rng) if strategy is None else strategy.init_state(init, init_rng)
  return state, rng


def eval_state(config, model, params, step: int = 0) -> TrainState:
  """The state eval_step reads for `params` (a finished run's, restore.py): no
  optimiser and no optimiser state, which evaluation never touches."""
  return TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=None,
                    apply_fn=make_apply_fn(model, config.model.variant), tx=None)


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
