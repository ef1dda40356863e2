"""Parallel strategies: the same pure train_step / eval_step, placed on devices.

`create(config, train_step, eval_step)` returns one of:

- `PmapStrategy` ('pmap'): data parallelism over the local devices. The state
  is replicated, the global batch is split along its first dimension, and the
  step runs with `axis_name='batch'`, so it averages gradients with
  `lax.pmean` and folds the device index into the dropout key.
- `MeshStrategy` ('mesh'): `jit` with `NamedSharding` over a `Mesh` of axes
  ('data', 'fsdp'). The batch is split over both axes; every parameter (and
  its optimizer state) is split along its largest dimension divisible by the
  'fsdp' size (FSDP / ZeRO-3 style) and replicated over 'data'. XLA inserts
  the collectives, and the same program runs on every host of a multi-host
  run, each feeding its own rows.

One device is the degenerate case of either. The steps themselves never
change: a strategy only adds placement and, for pmap, the axis name.
"""

import functools
from typing import Callable

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from transformer_jax import config as config_lib

PMAP_AXIS = 'batch'


class PmapStrategy:
  """Replicated state, batch split over local devices, gradients pmean'd."""

  name = 'pmap'

  def __init__(self, train_step: Callable, eval_step: Callable):
    self.devices = jax.local_devices()
    self.num_devices = jax.device_count()
    self._train_step = jax.pmap(functools.partial(train_step, axis_name=PMAP_AXIS),
                                axis_name=PMAP_AXIS, in_axes=(0, 0, None), donate_argnums=(0,))
    self._eval_step = jax.pmap(functools.partial(eval_step, axis_name=PMAP_AXIS),
                               axis_name=PMAP_AXIS)

  def init_state(self, init_fn: Callable, rng):
    """Builds the state on the first device and replicates it."""
    return self.from_checkpoint(jax.jit(init_fn)(rng))

  def checkpoint_target(self, state):
    """The abstract single-copy state a checkpoint restores into."""
    sharding = jax.sharding.SingleDeviceSharding(self.devices[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=sharding),
                        state)

  def to_checkpoint(self, state):
    """One copy of the replicated state."""
    return jax.tree.map(lambda x: x[0], state)

  def from_checkpoint(self, state):
    """One copy -> a copy per device, placed exactly as pmap places its outputs
    (so the step compiles once, not again for its own output)."""
    sharding = NamedSharding(Mesh(np.asarray(self.devices), (PMAP_AXIS,)), P(PMAP_AXIS))
    return jax.tree.map(
        lambda x: jax.device_put(np.stack([np.asarray(x)] * len(self.devices)), sharding), state)

  def put_batch(self, batch: dict) -> dict:
    """This host's rows [b, ...] -> [local devices, b / local devices, ...]."""
    n = len(self.devices)
    return {k: np.asarray(v).reshape(n, -1, *np.shape(v)[1:]) for k, v in batch.items()}

  def train_step(self, state, batch, rng):
    return self._train_step(state, batch, rng)

  def eval_step(self, state, batch):
    return self._eval_step(state, batch)

  def fetch(self, metrics):
    """Device metrics (identical on every device after psum) -> host numpy."""
    return jax.tree.map(lambda x: np.asarray(x)[0], metrics)


class MeshStrategy:
  """jit over a ('data', 'fsdp') mesh; parameters sharded along 'fsdp'."""

  name = 'mesh'

  def __init__(self, train_step: Callable, eval_step: Callable, fsdp: int = 1):
    devices = np.asarray(jax.devices())
    if devices.size % fsdp:
      raise config_lib.ConfigError(f'config.fsdp={fsdp} does not divide the {devices.size} '
                                   'devices; pick a divisor.')
    self.num_devices = devices.size
    self.fsdp = fsdp
    self.mesh = Mesh(devices.reshape(-1, fsdp), ('data', 'fsdp'))
    self.batch_sharding = NamedSharding(self.mesh, P(('data', 'fsdp')))
    self.replicated = NamedSharding(self.mesh, P())
    self._steps = (train_step, eval_step)
    self._train_step = self._eval_step = None

  def _sharding(self, x) -> NamedSharding:
    """FSDP: split the largest dimension divisible by the fsdp size, else replicate."""
    shape = np.shape(x)
    candidates = [i for i, size in enumerate(shape) if size % self.fsdp == 0]
    if self.fsdp == 1 or not candidates:
      return self.replicated
    axis = max(candidates, key=lambda i: shape[i])
    spec = [None] * len(shape)
    spec[axis] = 'fsdp'
    return NamedSharding(self.mesh, P(*spec))

  def _compile(self, state_shardings):
    train_step, eval_step = self._steps
    self._train_step = jax.jit(train_step, in_shardings=(state_shardings, self.batch_sharding,
                                                         self.replicated),
                               out_shardings=(state_shardings, self.replicated),
                               donate_argnums=(0,))
    self._eval_step = jax.jit(eval_step, in_shardings=(state_shardings, self.batch_sharding),
                              out_shardings=self.replicated)

  def init_state(self, init_fn: Callable, rng):
    """Builds the state directly in its shards (never whole on one device)."""
    shardings = jax.tree.map(self._sharding, jax.eval_shape(init_fn, rng))
    self._compile(shardings)
    return jax.jit(init_fn, out_shardings=shardings)(rng)

  def checkpoint_target(self, state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        state)

  def to_checkpoint(self, state):
    return state

  def from_checkpoint(self, state):
    return state

  def put_batch(self, batch: dict) -> dict:
    """This host's rows -> global arrays split over ('data', 'fsdp')."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
            for k, v in batch.items()}

  def train_step(self, state, batch, rng):
    return self._train_step(state, batch, rng)

  def eval_step(self, state, batch):
    return self._eval_step(state, batch)

  def fetch(self, metrics):
    """Replicated device values -> host numpy (this host's copy, so multi-host works)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), metrics)


def create(config, train_step: Callable, eval_step: Callable):
  """The strategy config.parallelism names (the config is validated: config.py),
  with the batch checked against the devices (config.global_batch_size)."""
  if config.parallelism == 'pmap':
    strategy = PmapStrategy(train_step, eval_step)
  else:
    strategy = MeshStrategy(train_step, eval_step, config.fsdp)
  config_lib.global_batch_size(config, strategy.num_devices)
  return strategy
