"""pmap and mesh strategies each equal one single-device step on the same global batch.

The comparison runs in a subprocess with 8 simulated CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before JAX
starts), so the other tests keep their one fast device.
"""

import json
import os
import subprocess
import sys

from conftest import REPOSITORY

DEVICES = 8


def _max_differences() -> dict:
  """Runs in the 8-device subprocess: max |difference| to the single-device step."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from conftest import TINY, load_config, override  # pylint: disable=g-import-not-at-top
  from transformer_jax import parallel, train  # pylint: disable=g-import-not-at-top
  from transformer_jax.models.transformer import build_model  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == DEVICES, jax.devices()
  config = override(load_config(), {**TINY, 'model.dropout_rate': 0.0, 'batch_size': 16})
  model = build_model(config.model)
  # SGD, so the parameter change is the gradient itself: Adam's first update,
  # lr * sign(g), turns float noise in a gradient that is zero in exact
  # arithmetic (the key bias's) into +-lr.
  init = train.init_fn(config, model, optax.sgd(1.0))
  rng = np.random.default_rng(0)
  shape = (config.batch_size, config.seq_len)
  batch = {'inputs': rng.integers(1, 88, shape, dtype=np.int32),
           'targets': rng.integers(1, 88, shape, dtype=np.int32),
           # Uneven weights per device: the loss must still be the global mean.
           'weights': (rng.random(shape) < np.linspace(0.2, 1.0, shape[0])[:, None]).astype(
               np.float32)}
  dropout_rng = jax.random.PRNGKey(1)
  train_step, eval_step = train.make_steps(config)

  state, metrics = jax.jit(train_step)(jax.jit(init)(jax.random.PRNGKey(0)), batch, dropout_rng)
  reference = jax.device_get((state.params, metrics, jax.jit(eval_step)(state, batch)))

  strategies = {'pmap': parallel.PmapStrategy(train_step, eval_step),
                'mesh 8x1': parallel.MeshStrategy(train_step, eval_step, fsdp=1),
                'mesh 4x2 (fsdp)': parallel.MeshStrategy(train_step, eval_step, fsdp=2)}
  out = {}
  for name, strategy in strategies.items():
    state = strategy.init_state(init, jax.random.PRNGKey(0))
    state, metrics = strategy.train_step(state, strategy.put_batch(batch), dropout_rng)
    sums = strategy.fetch(strategy.eval_step(state, strategy.put_batch(batch)))
    params = jax.device_get(strategy.to_checkpoint(state).params)
    got = (params, strategy.fetch(metrics), sums)
    sharded = any(len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated
                  for x in jax.tree.leaves(state.params))
    out[name] = {
        'params': max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(got[0]),
                                                                 jax.tree.leaves(reference[0]))),
        'metrics': {k: abs(float(got[1][k]) - float(reference[1][k])) / max(
            abs(float(reference[1][k])), 1.0) for k in reference[1]},
        'eval': {k: abs(float(got[2][k]) - float(reference[2][k])) / max(
            abs(float(reference[2][k])), 1.0) for k in reference[2]},
        'params_sharded': sharded}
  return out


def test_pmap_and_mesh_steps_equal_one_device_step():
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={DEVICES}',
             JAX_PLATFORMS='cpu', PYTHONPATH=REPOSITORY)
  done = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=REPOSITORY, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert set(result) == {'pmap', 'mesh 8x1', 'mesh 4x2 (fsdp)'}
  for name, diffs in result.items():
    assert diffs['params'] < 1e-5, (name, diffs)
    assert max(diffs['metrics'].values()) < 1e-5, (name, diffs)
    assert max(diffs['eval'].values()) < 1e-5, (name, diffs)
  assert result['mesh 4x2 (fsdp)']['params_sharded']
  assert not result['mesh 8x1']['params_sharded']


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  print(json.dumps(_max_differences()))
