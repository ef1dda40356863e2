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

One device is the degenerate case of either, and runs as the mesh (plain `jit`)
whatever config.parallelism says. The steps themselves never change: a strategy
only adds placement and, for pmap, the axis name.

Multi-host (`config.distributed`, `initialize_distributed`): the same program
runs in one process per host, each feeding its own rows of the global batch;
pmap averages over every device of every host, the mesh spans them all, and
checkpoints hold global arrays that all processes write and read together.
A process that dies ends the others within config.distributed.peer_timeout
seconds, each with one line (`_PeerWatch`), rather than leaving them blocked in
a collective until JAX's runtime aborts them with pages of C++ output.
"""

import functools
import json
import os
import sys
import threading
import time
from typing import Callable, Optional

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from transformer_jax import config as config_lib

PMAP_AXIS = 'batch'


class DistributedError(RuntimeError):
  """Joining the multi-host runtime, or starting with every process, failed; the
  message names the cause and the fix."""


def initialize_distributed(d) -> None:
  """Joins JAX's multi-controller runtime as config.distributed `d` says (a no-op
  when it is off). Must run before anything touches a device. On CPU, the
  collectives between processes go through gloo.

  Raises:
    DistributedError: jax.distributed refused the settings (e.g. no cluster to
      auto-detect). A peer that never joins within d.initialization_timeout
      seconds ends the process from inside JAX's runtime, after the line this
      prints names what it waited for.
  """
  if not d.enabled:
    return
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  explicit = {}
  if d.coordinator_address:
    explicit = dict(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                    process_id=d.process_id)
  # Said first: if a peer never comes, JAX's runtime aborts the process itself
  # after the timeout, with its own message.
  print(f'Joining the multi-host run at {d.coordinator_address or "(auto-detected)"}'
        + (f' as process {d.process_id} of {d.num_processes}' if explicit else '')
        + f'; waiting up to {d.initialization_timeout} s for every process.', flush=True)
  try:
    # JAX's own heartbeat is the backstop: our watch of the peers ends a process first.
    jax.distributed.initialize(**explicit, initialization_timeout=d.initialization_timeout,
                               heartbeat_timeout_seconds=max(100, 3 * d.peer_timeout))
  except (RuntimeError, ValueError) as e:
    where = d.coordinator_address or 'the auto-detected coordinator'
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    raise DistributedError(
        f'Could not join the multi-host run at {where} ({first}); start the same command on '
        'every host with the same coordinator_address and num_processes and a distinct '
        'process_id, or set config.distributed.enabled=False.') from None
  global _WATCH
  _WATCH = _PeerWatch(d.peer_timeout)
  _WATCH.start()


class _PeerWatch(threading.Thread):
  """Ends this process, in one line and within `timeout` seconds, when another
  process of the run stops, instead of blocking in a collective until JAX's
  runtime aborts it (after its heartbeat timeout, with pages of C++ output).

  Every second each process adds one to its counter in the coordination
  service's key-value store and reads the others'; a counter that has not moved
  for `timeout` seconds, from a process that did not finish (`finish_distributed`),
  means that process died, hangs or stopped on an error of its own. Process 0
  runs the service: when it dies, JAX's runtime ends the others at once, on its
  own (its C++ abort, which this cannot replace).
  """

  PREFIX = 'transformer_jax/alive/'
  DONE = 'transformer_jax/done/'
  LEAVING = 'transformer_jax/leaving/'

  def __init__(self, timeout: int):
    super().__init__(name='peer_watch', daemon=True)
    self.timeout = timeout
    self._stop = threading.Event()

  def run(self):
    from jax._src import distributed  # pylint: disable=g-import-not-at-top  # the runtime's client.
    client = distributed.global_state.client
    me, count = jax.process_index(), jax.process_count()
    last = {i: (None, time.monotonic()) for i in range(count) if i != me}
    while not self._stop.wait(1.0):
      try:
        client.key_value_increment(f'{self.PREFIX}{me}', 1)
        counts = dict(client.key_value_dir_get(self.PREFIX))
        done = {key for key, _ in client.key_value_dir_get(self.DONE)}
      except Exception:  # pylint: disable=broad-except  # the service went with process 0.
        if not self._stop.is_set():
          self._lost('process 0, which runs the coordination service,')
        return
      now = time.monotonic()
      for i, (seen, since) in list(last.items()):
        if f'{self.DONE}{i}' in done:
          del last[i]
        elif counts.get(f'{self.PREFIX}{i}') != seen:
          last[i] = (counts.get(f'{self.PREFIX}{i}'), now)
        elif now - since > self.timeout and not self._stop.is_set():
          self._lost(f'process {i} of {count}')

  def _lost(self, who: str):
    """One line, then this process ends at once (without JAX's shutdown barrier,
    which would wait for the process that is gone)."""
    sys.stdout.flush()
    print(f'Lost {who}: no sign of life for {self.timeout} s (it died, hangs, or stopped on an '
          'error of its own: see its output); this process stops too. Fix that, then run the '
          'same command on every host to resume from the last checkpoint.', file=sys.stderr,
          flush=True)
    os._exit(2)

  def leave(self, wait_s: float = 10.0):
    """This process stops on an error of its own. An error every process finds
    (a config or device count that differs) stops them all at about the same
    time; process 0 leaves last, for its end takes the coordination service
    with it and JAX's runtime then aborts the others (SIGABRT, before their own
    line). So each process says it is leaving, and process 0 waits up to
    `wait_s` seconds for the others to say so (or to have finished)."""
    self._stop.set()
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    client = distributed.global_state.client
    me, count = jax.process_index(), jax.process_count()
    try:
      client.key_value_set(f'{self.LEAVING}{me}', '1', allow_overwrite=True)
      if me != 0:
        return
      deadline = time.monotonic() + wait_s
      while time.monotonic() < deadline:
        said = {key for prefix in (self.LEAVING, self.DONE)
                for key, _ in client.key_value_dir_get(prefix)}
        if all(f'{self.LEAVING}{i}' in said or f'{self.DONE}{i}' in said
               for i in range(1, count)):
          time.sleep(0.5)  # for the last to say so to reach its own exit.
          return
        time.sleep(0.1)
    except Exception:  # pylint: disable=broad-except  # the service is gone: nothing to wait for.
      return

  def finish(self):
    """Stops watching; this process finished as the run did (the others may
    end before they see it stop)."""
    self._stop.set()
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    distributed.global_state.client.key_value_set(f'{self.DONE}{jax.process_index()}', '1')


_WATCH: Optional[_PeerWatch] = None


def finish_distributed():
  """Multi-host: this process ran to its end with the others (finished, or
  stopped with them at a checkpoint); the others no longer wait for its sign
  of life. A no-op in one process."""
  if _WATCH is not None:
    _WATCH.finish()


def exit_now(code: int):
  """Ends the process with `code`. Multi-host, without JAX's shutdown at exit
  (os._exit), which waits for every process: after an error of this one's the
  others are gone or stopping (they see this one stop: `_PeerWatch`). Process 0,
  whose end ends the others' runtime, leaves after those stopping on the same
  error (`_PeerWatch.leave`)."""
  if _WATCH is None:
    sys.exit(code)
  sys.stdout.flush()
  sys.stderr.flush()
  _WATCH.leave()
  os._exit(code)


def _allgather_text(text: str, name: str, timeout_s: int) -> list:
  """Every process's `text`, in process order (each process calls it), after
  waiting up to `timeout_s` for all of them at the runtime's barrier `name`
  (gloo allows only 30 s between the first and the last to arrive)."""
  from orbax.checkpoint import multihost  # pylint: disable=g-import-not-at-top
  multihost.get_barrier_sync_fn()(key=f'transformer_jax {name}', timeout_ms=timeout_s * 1000)
  data = np.frombuffer(text.encode(), np.uint8)
  length = int(np.max(multihost_utils.process_allgather(np.int32(data.size))))
  padded = np.zeros(length, np.uint8)
  padded[:data.size] = data
  return [bytes(row).rstrip(b'\0').decode() for row in multihost_utils.process_allgather(padded)]


def start_together(config, refusal: Optional[Exception] = None) -> None:
  """Multi-host: every process starts with the same config, or none starts.

  Every process calls it before the run's first collective; `refusal` is why
  this process cannot start (e.g. process 0 found the workdir locked). A
  no-op with one process (but for raising `refusal`).

  Raises:
    ConfigError: (every process) the processes have different numbers of
      devices, or a config differs from process 0's outside
      config.distributed; names them.
    DistributedError: (the other processes) a process passed a refusal, which
      is re-raised where it happened.
  """
  if jax.process_count() == 1:
    if refusal is not None:
      raise refusal
    return
  counts = np.bincount([d.process_index for d in jax.devices()], minlength=jax.process_count())
  if len(set(counts)) > 1:
    raise config_lib.ConfigError(
        'the processes of this multi-host run have different numbers of devices ('
        + ', '.join(f'process {i}: {n}' for i, n in enumerate(counts)) + '); give every process '
        'as many (the same XLA_FLAGS, CUDA_VISIBLE_DEVICES or machine type).')
  ours = json.loads(config.to_json_best_effort(sort_keys=True))
  del ours['distributed']  # how each process joins (e.g. localhost on process 0's host).
  mine = {'config': ours, 'refusal': ' '.join(str(refusal).split()) if refusal else ''}
  gathered = [json.loads(text) for text in _allgather_text(
      json.dumps(mine), 'start', config.distributed.initialization_timeout)]
  if refusal is not None:
    raise refusal
  refused = [(i, g['refusal']) for i, g in enumerate(gathered) if g['refusal']]
  if refused:
    i, message = refused[0]
    raise DistributedError(f'Process {i} of {len(gathered)} did not start ({message}); '
                           'this process stops with it.')
  first = config_lib.flatten(gathered[0]['config'])
  for i, g in enumerate(gathered[1:], start=1):
    other = config_lib.flatten(g['config'])
    fields = ', '.join(f'{name} (process 0 {first.get(name)!r}, process {i} {other.get(name)!r})'
                       for name in sorted(set(first) | set(other))
                       if first.get(name) != other.get(name))
    if fields:
      raise config_lib.ConfigError(
          f'the processes of this multi-host run have different configs: {fields}; start every '
          'process with the same command, only config.distributed.* differing.')


class _InStep:
  """A step function of a multi-host run whose processes enter each new program
  together: compiled ahead on its first call, then a barrier of every process
  (the runtime's, not a collective) before it first runs. On CPU, gloo gives the
  processes 30 s to start a new collective program together, and under load one
  may still be compiling when another starts."""

  def __init__(self, fn: Callable, name: str):
    self._fn, self._name, self._ready = fn, name, jax.process_count() == 1

  def __call__(self, *args):
    if not self._ready:
      from orbax.checkpoint import multihost  # pylint: disable=g-import-not-at-top
      self._fn.lower(*args).compile()
      multihost.get_barrier_sync_fn()(key=f'transformer_jax {self._name} compiled',
                                      timeout_ms=3_600_000)
      self._ready = True
    return self._fn(*args)


def replicated_everywhere(x) -> jax.Array:
  """A host-local value (the same on every process) -> one global array,
  replicated on every device of every process (what a multi-host checkpoint
  can hold)."""
  value = np.asarray(x)
  sharding = NamedSharding(Mesh(np.asarray(jax.devices()), ('all',)), P())
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def replicated_target(x) -> jax.ShapeDtypeStruct:
  """The abstract `replicated_everywhere(x)`: what a checkpoint restores it into."""
  sharding = NamedSharding(Mesh(np.asarray(jax.devices()), ('all',)), P())
  return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


def local_value(x) -> jax.Array:
  """This process's copy of a replicated global array, as an uncommitted value."""
  return jax.numpy.asarray(np.asarray(x.addressable_data(0)))


class PmapStrategy:
  """Replicated state, batch split over local devices, gradients pmean'd."""

  name = 'pmap'

  def __init__(self, train_step: Callable, eval_step: Callable):
    self.devices = jax.local_devices()
    self.num_devices = jax.device_count()
    self._train_step = train_step and _InStep(
        jax.pmap(functools.partial(train_step, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS,
                 in_axes=(0, 0, None), donate_argnums=(0,)), 'pmap train_step')
    self._eval_step = _InStep(jax.pmap(functools.partial(eval_step, axis_name=PMAP_AXIS),
                                       axis_name=PMAP_AXIS), 'pmap eval_step')

  def init_state(self, init_fn: Callable, rng):
    """Builds the state on the first device and replicates it."""
    return self.from_checkpoint(jax.jit(init_fn)(rng))

  def place(self, state):
    """A state built elsewhere (one copy: eval's, of a finished run's
    parameters) replicated on the local devices, for eval_step."""
    return self.from_checkpoint(state)

  def checkpoint_target(self, state):
    """The abstract state a checkpoint restores into: one copy, replicated on
    every device of every process."""
    sharding = NamedSharding(Mesh(np.asarray(jax.devices()), ('all',)), P())
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=sharding),
                        state)

  def to_checkpoint(self, state):
    """The replicated state as global arrays (the local devices' copies, no
    host transfer), so every process of a multi-host run saves it jointly."""
    sharding = NamedSharding(Mesh(np.asarray(jax.devices()), ('all',)), P())

    def global_copy(x):
      copies = [shard.data.reshape(x.shape[1:]) for shard in x.addressable_shards]
      return jax.make_array_from_single_device_arrays(x.shape[1:], sharding, copies)

    return jax.tree.map(global_copy, state)

  def one_copy(self, state):
    """One copy of the replicated state, on the first local device."""
    return jax.tree.map(lambda x: x[0], state)

  def with_params(self, state, params):
    """`state` with host `params` (one copy) in place of its parameters."""
    return state.replace(params=self.from_checkpoint(params))

  def from_checkpoint(self, state):
    """One copy -> a copy per local device, placed exactly as pmap places its
    outputs (so the step compiles once, not again for its own output)."""
    sharding = NamedSharding(Mesh(np.asarray(self.devices), (PMAP_AXIS,)), P(PMAP_AXIS))
    def copies(x):
      one = np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)
      return jax.device_put(np.stack([one] * len(self.devices)), sharding)

    return jax.tree.map(copies, state)

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
    self._train_step = train_step and _InStep(jax.jit(
        train_step, in_shardings=(state_shardings, self.batch_sharding, self.replicated),
        out_shardings=(state_shardings, self.replicated), donate_argnums=(0,)), 'mesh train_step')
    self._eval_step = _InStep(jax.jit(
        eval_step, in_shardings=(state_shardings, self.batch_sharding),
        out_shardings=self.replicated), 'mesh eval_step')

  def init_state(self, init_fn: Callable, rng):
    """Builds the state directly in its shards (never whole on one device)."""
    shardings = jax.tree.map(self._sharding, jax.eval_shape(init_fn, rng))
    self._compile(shardings)
    return jax.jit(init_fn, out_shardings=shardings)(rng)

  def place(self, state):
    """A state built elsewhere (eval's, of a finished run's parameters) put in
    its shards, as init_state places a fresh one, for eval_step."""
    shardings = jax.tree.map(self._sharding, state)
    self._compile(shardings)
    return jax.device_put(state, shardings)

  def checkpoint_target(self, state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        state)

  def to_checkpoint(self, state):
    return state

  def one_copy(self, state):
    return state

  def with_params(self, state, params):
    """`state` with host `params` in place of its parameters, in their shards."""
    return state.replace(params=jax.tree.map(lambda x, like: jax.device_put(x, like.sharding),
                                             params, state.params))

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


def create(config, train_step: Optional[Callable], eval_step: Callable):
  """The strategy config.parallelism names (the config is validated: config.py),
  with the batch checked against the devices (config.global_batch_size).
  `train_step` None: one that only evaluates (--mode=eval)."""
  if config.parallelism == 'pmap' and jax.device_count() > 1:
    strategy = PmapStrategy(train_step, eval_step)
  else:
    # On one device pmap's program is this one plus a one-device all-reduce, and
    # pmap's dispatch costs more per call: plain jit is 1.04-1.06x faster at the
    # default shape (benchmarks/README.md, step_candidates.py), losses equal.
    strategy = MeshStrategy(train_step, eval_step, config.fsdp)
  config_lib.global_batch_size(config, strategy.num_devices)
  return strategy
