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
import math
from typing import Any, Callable, Optional

from flax import struct
from flax.core import meta
import jax
import jax.numpy as jnp
import numpy as np
import optax

from transformer_jax import config as config_lib
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


class EmaTrainState(TrainState):
  """A TrainState that also averages the parameters after every update
  (config.ema_decay > 0, `parameter_ema`). A subclass, not a field that is None
  without an EMA: a run without one saves and restores the very state (and
  checkpoint layout) it did before the EMA existed."""
  # optax.EmaState of the parameters: count (updates averaged) and ema (not debiased:
  # `ema_params` reads it).
  ema: Any
  ema_tx: optax.GradientTransformation = struct.field(pytree_node=False)

  def apply_gradients(self, grads):
    state = super().apply_gradients(grads)
    return state.replace(ema=self.ema_tx.update(state.params, self.ema)[1])


# ----------------------------------------------------------------------------
# Optimiser.


def learning_rate_schedule(config) -> Callable:
  """Learning rate of update `count` (0-based; the paper's step is count + 1).

  rsqrt (paper, eq. 3): learning_rate * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5).
  The others warm up linearly to learning_rate over warmup_steps (update `count` at
  (count + 1) / warmup_steps of it), then, with S = `config_lib.schedule_steps`
  (optimizer.schedule_steps, else total_steps) and E = optimizer.end_learning_rate:
  constant: flat.
  cosine:   E + (learning_rate - E) (1 + cos(pi p)) / 2, p = (count - warmup) / (S - warmup)
            (Loshchilov & Hutter 2017, SGDR, eq. 5, one cycle);
  linear:   E + (learning_rate - E) (1 - p);
  wsd:      warmup-stable-decay (Hu et al. 2024, MiniCPM, section 4; Hagele et al. 2024):
            learning_rate until the last D = `config_lib.wsd_decay_steps` of the S, then
            linear to E over those: p = (count - (S - D)) / D.
  p is clipped to [0, 1], so E is reached after update S - 1, not at it: the last update
  of a schedule as long as the run still learns, and updates past S train at E.
  """
  peak, warmup = config.learning_rate, config.warmup_steps
  schedule, end = config.optimizer.schedule, config.optimizer.end_learning_rate
  steps = config_lib.schedule_steps(config)
  scale = peak * config.model.d_model**-0.5

  def learning_rate(count):
    step = jnp.asarray(count, jnp.float32) + 1.0
    if schedule == 'rsqrt':
      return scale * jnp.minimum(step**-0.5, step * warmup**-1.5)
    warm = jnp.minimum(1.0, step / warmup) if warmup else 1.0
    if schedule == 'constant':
      return peak * warm
    start = steps - config_lib.wsd_decay_steps(config) if schedule == 'wsd' else warmup
    progress = jnp.clip((step - 1.0 - start) / max(steps - start, 1), 0.0, 1.0)
    if schedule == 'cosine':
      return warm * (end + 0.5 * (peak - end) * (1.0 + jnp.cos(jnp.pi * progress)))
    return warm * (end + (peak - end) * (1.0 - progress))  # linear, and wsd's decay.

  return learning_rate


def decay_mask(params, decay: str):
  """Which parameters AdamW's weight decay shrinks (`config.optimizer.decay`): matrices,
  every parameter of 2 or more dims (kernels and embeddings, not biases or norm scales,
  as nanoGPT's configure_optimizers), or all. A tree of bools like `params`."""
  return jax.tree.map(lambda p: decay == 'all' or p.ndim >= 2, params)


def create_optimizer(config, learning_rate_fn: Callable) -> optax.GradientTransformation:
  """Adam (paper: b1 0.9, b2 0.98, eps 1e-9) or AdamW (Loshchilov & Hutter 2019)
  decaying the parameters `decay_mask` picks, after global-norm clipping."""
  o = config.optimizer
  if o.name == 'adamw':
    # A mask in both cases, so the state has one shape and the mask may change on resume.
    tx = optax.adamw(learning_rate_fn, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                     mask=functools.partial(decay_mask, decay=o.decay))
  else:
    tx = optax.adam(learning_rate_fn, b1=o.b1, b2=o.b2, eps=o.eps)
  # The same chain with clipping on or off, so the optimizer state has one shape
  # and grad_clip_norm may change when a run resumes (config.tunable).
  clip = optax.clip_by_global_norm(o.grad_clip_norm) if o.grad_clip_norm > 0 else optax.identity()
  return optax.chain(clip, tx)


# ----------------------------------------------------------------------------
# The parameters' exponential moving average.


def parameter_ema(decay: float) -> Optional[optax.GradientTransformation]:
  """The EMA of the parameters that config.ema_decay asks for (None for 0): optax.ema
  fed the parameters after each update t, so its state holds
  ema_t = decay ema_(t-1) + (1 - decay) p_t, ema_0 = 0, and the number of updates t
  (Polyak & Juditsky 1992 average the iterates; the exponential weighting as in
  TensorFlow's ExponentialMovingAverage). Not debiased here: `ema_params` does that
  once, when the weights are read."""
  return optax.ema(decay, debias=False) if decay > 0 else None


def ema_params(ema, decay: float):
  """The debiased EMA of an optax.EmaState `ema` (`parameter_ema`'s, after t =
  ema.count updates): ema_t / (1 - decay^t) = sum_i (1 - decay) decay^(t - i) p_i /
  (1 - decay^t), a weighted mean of the parameters p_1..p_t after every update whose
  weights sum to 1, so early on it is not pulled towards ema_0 = 0 (Adam's bias
  correction, Kingma & Ba 2015, section 3). On the host, in float64 (1 - decay^t via
  expm1, no cancellation for decay near 1), cast back to each array's dtype; a tree of
  numpy arrays like the parameters.

  Raises:
    ValueError: ema.count is 0 (no update averaged yet).
  """
  count = int(np.asarray(ema.count))
  if count < 1:
    raise ValueError('the EMA has averaged no update yet (count 0).')
  scale = -1.0 / math.expm1(count * math.log(decay))  # 1 / (1 - decay^count)
  return jax.tree.map(lambda x: (np.asarray(x, np.float64) * scale).astype(x.dtype), ema.ema)


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
  ema_tx = parameter_ema(config.ema_decay)

  def init(rng):
    params = meta.unbox(model.init(rng, *args)['params'])
    fields = dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                  apply_fn=apply_fn, tx=tx)
    if ema_tx is None:
      return TrainState(**fields)
    return EmaTrainState(**fields, ema=ema_tx.init(params), ema_tx=ema_tx)

  return init


def create_state(config, model, strategy=None) -> tuple:
  """(state, rng): a fresh TrainState (the schedule, the optimiser, the
  parameters' init from config.seed, the optimiser state and the EMA's) placed by
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


def cross_entropy(logits, targets, weights, label_smoothing: float = 0.0, z_loss: float = 0.0):
  """Weighted sums over targets: (objective, {'nll', 'correct', 'weight'}).

  logits [..., V] float32, targets [...] int, weights [...] (0 = ignore). The
  objective is the cross-entropy against the label-smoothed distribution
  (1 - eps) one_hot + eps / V (paper 5.4), plus z_loss * log(Z)^2, Z = sum(exp(logits))
  the softmax's normaliser (PaLM, Chowdhery et al. 2022, section 5: 1e-4), which pulls
  log Z towards 0; 'nll' is the unsmoothed negative log-likelihood without the z-loss
  that loss and perplexity report.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  loss = nll
  if label_smoothing > 0:
    loss = (1.0 - label_smoothing) * nll - label_smoothing * log_probs.mean(-1)
  if z_loss > 0:
    loss = loss + z_loss * jnp.square(jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1))
  weights = weights.astype(jnp.float32)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  sums = {'nll': (nll * weights).sum(), 'correct': (correct * weights).sum(),
          'weight': weights.sum()}
  return (loss * weights).sum(), sums


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def train_step(state: TrainState, batch: dict, rng, *, learning_rate_fn: Callable,
               label_smoothing: float = 0.0, z_loss: float = 0.0, grad_accum_steps: int = 1,
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
                                    label_smoothing, z_loss)
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
                           z_loss=config.z_loss,
                           grad_accum_steps=config.optimizer.grad_accum_steps)
  return step, eval_step
