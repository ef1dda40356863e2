"""The parameters' exponential moving average (config.ema_decay, train.EmaTrainState):
the float64 update it stands for, exact resume under one device, pmap and mesh, and
--config.restore_params=ema read back, evaluated and recorded as such.

The pmap and mesh cases run in a subprocess with 8 simulated CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before JAX starts),
as test_parallel.py does.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from conftest import REPOSITORY, TINY, load_config, override, override_flags
from transformer_jax import config as config_lib
from transformer_jax import evaluation
from transformer_jax import generate
from transformer_jax import restore
from transformer_jax import run_log
from transformer_jax import sweep
from transformer_jax import train as train_lib
from transformer_jax import trainer
from transformer_jax.data import datasets

DECAY = 0.9
DEVICES = 8


def _reference_ema(params_after_each_step: list, decay: float):
  """float64 numpy: ema_t = decay ema_(t-1) + (1 - decay) p_t from ema_0 = 0, and the
  debiased weighted mean sum_i (1 - decay) decay^(t-i) p_i / sum_i (1 - decay) decay^(t-i)."""
  t = len(params_after_each_step)
  ema = jax.tree.map(lambda p: np.zeros(p.shape, np.float64), params_after_each_step[0])
  for p in params_after_each_step:
    ema = jax.tree.map(lambda e, x: decay * e + (1 - decay) * np.asarray(x, np.float64), ema, p)
  weights = [(1 - decay) * decay**(t - i) for i in range(1, t + 1)]
  mean = jax.tree.map(lambda *ps: sum(w * np.asarray(x, np.float64) for w, x in zip(weights, ps))
                      / sum(weights), *params_after_each_step)
  return ema, mean


def _assert_close(tree, reference, rtol):
  for x, y in zip(jax.tree.leaves(tree), jax.tree.leaves(reference), strict=True):
    np.testing.assert_allclose(np.asarray(x, np.float64), y, rtol=rtol, atol=1e-7)


def test_ema_of_a_toy_state_equals_the_float64_update_and_its_debiased_mean():
  """The real train_step on a toy linear model with Adam: after each of 6 steps, the
  state's EMA is decay ema + (1 - decay) params in float64 to float32 rounding, and
  ema_params is the debiased weighted mean of the parameters after every step."""
  decay = 0.8
  rng = np.random.default_rng(0)
  params = {'embed': jnp.asarray(rng.normal(size=(5, 4)), jnp.float32),
            'out': {'kernel': jnp.asarray(rng.normal(size=(4, 5)), jnp.float32),
                    'bias': jnp.zeros(5, jnp.float32)}}
  apply_fn = lambda p, batch, deterministic=True, rngs=None: (
      p['embed'][batch['inputs']] @ p['out']['kernel'] + p['out']['bias'])
  tx, ema_tx = optax.adam(0.1), train_lib.parameter_ema(decay)
  state = train_lib.EmaTrainState(step=jnp.zeros((), jnp.int32), params=params,
                                  opt_state=tx.init(params), apply_fn=apply_fn, tx=tx,
                                  ema=ema_tx.init(params), ema_tx=ema_tx)
  step = jax.jit(lambda s, b: train_lib.train_step(s, b, jax.random.PRNGKey(0),
                                                   learning_rate_fn=lambda count: 0.1))
  after_each_step = []
  for _ in range(6):
    batch = {'inputs': rng.integers(0, 5, (4, 3)), 'targets': rng.integers(0, 5, (4, 3)),
             'weights': np.ones((4, 3), np.float32)}
    state, _ = step(state, batch)
    after_each_step.append(jax.device_get(state.params))
  ema, mean = _reference_ema(after_each_step, decay)
  assert int(state.ema.count) == 6
  _assert_close(state.ema.ema, ema, rtol=1e-6)
  _assert_close(train_lib.ema_params(state.ema, decay), mean, rtol=1e-6)
  # Not the parameters themselves (the check means something), and after one step the
  # debiased average is that step's parameters.
  assert not np.allclose(mean['embed'], after_each_step[-1]['embed'], rtol=1e-3)
  _assert_close(train_lib.ema_params(optax.EmaState(count=1, ema=jax.tree.map(
      lambda p: (1 - decay) * p, after_each_step[0])), decay), after_each_step[0], rtol=1e-6)


@pytest.fixture(scope='module')
def ema_run(tmp_path_factory):
  """6 steps with an EMA in one go (checkpoints at 3 and 6), dropout on, mesh."""
  config = override(load_config(), {**TINY, 'parallelism': 'mesh', 'ema_decay': DECAY})
  workdir = str(tmp_path_factory.mktemp('ema'))
  trainer.train(config, workdir)
  return config, workdir


def _saved_state(workdir, step):
  with ocp.StandardCheckpointer() as reader:
    return reader.restore(os.path.join(workdir, 'checkpoints', str(step), 'state'))


def test_ema_resumes_bitwise_and_a_changed_decay_is_refused(ema_run, tmp_path):
  """3 steps, then a new train() to 6: the whole saved state, EMA included, equals the
  uninterrupted run's bitwise. Another decay on resume would weight the steps so far
  with one decay and debias them with another: refused in one line."""
  config, straight = ema_run
  resumed = str(tmp_path / 'resumed')
  trainer.train(override(config, {'total_steps': 3}), resumed)
  trainer.train(config, resumed)
  a, b = _saved_state(straight, 6), _saved_state(resumed, 6)
  assert int(a['train_state']['ema']['count']) == 6
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)
  with pytest.raises(config_lib.ConfigError) as error:
    trainer.train(override(config, {'ema_decay': 0.99, 'total_steps': 7}), resumed)
  message = str(error.value)
  assert '\n' not in message and 'ema_decay (checkpoint 0.9, now 0.99)' in message


def test_eval_of_the_ema_is_recorded_as_the_ema(ema_run):
  """--mode=eval --config.restore_params=ema evaluates the debiased EMA of the last
  checkpoint, prints and records it with weights=ema, and the sweep table keeps
  the run's own eval (of the parameters)."""
  config, workdir = ema_run
  own = run_log.read_jsonl(workdir, 'eval')[-1]
  run = restore.open_run(override(config, {'restore_params': 'ema'}), workdir)
  saved = _saved_state(workdir, 6)['train_state']['ema']
  assert run.step == 6 and run.weights == 'ema'
  _assert_close(run.params, jax.tree.map(
      lambda e: np.asarray(e, np.float64) / (1 - DECAY**6), saved['ema']), rtol=1e-6)

  done = subprocess.run([sys.executable, '-m', 'transformer_jax.main', f'--workdir={workdir}',
                         '--mode=eval', *override_flags({**TINY, 'parallelism': 'mesh',
                                                         'ema_decay': DECAY,
                                                         'restore_params': 'ema'})],
                        cwd=REPOSITORY, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  printed = json.loads(done.stdout.strip().splitlines()[-1])
  recorded = run_log.read_jsonl(workdir, 'eval')[-1]
  assert printed['weights'] == recorded['weights'] == 'ema'
  assert recorded['step'] == 6 and recorded['loss'] == printed['loss'] != own['loss']
  assert 'eval_overrides' not in recorded  # restore_params only says which weights.
  in_process = evaluation.evaluate_checkpoint(override(config, {'restore_params': 'ema'}),
                                              workdir)
  assert in_process['loss'] == pytest.approx(printed['loss'], rel=1e-6)
  row = sweep.summarise(sweep.Run({}), workdir)
  assert row['eval_loss'] == own['loss']


def test_an_ema_that_differs_from_its_checksums_is_skipped(ema_run, tmp_path, capsys):
  config, straight = ema_run
  workdir = str(tmp_path / 'run')
  shutil.copytree(straight, workdir)
  path = os.path.join(workdir, 'checkpoints', '6', 'integrity', 'metadata')
  with open(path) as f:
    integrity = json.load(f)
  name = next(k for k in integrity['state'] if k.startswith("['train_state'].ema.ema"))
  integrity['state'][name] ^= 1
  with open(path, 'w') as f:
    json.dump(integrity, f)
  assert restore.open_run(config, workdir).step == 6  # the parameters are intact.
  run = restore.open_run(override(config, {'restore_params': 'ema'}), workdir)
  assert run.step == 3 and run.weights == 'ema'
  assert f'the checksum of state{name} differs' in capsys.readouterr().out


def test_decode_of_the_ema_generates_from_the_ema(ema_run):
  config, workdir = ema_run
  decode = override(config, {'sample_length': 8, 'decode.method': 'greedy',
                             'restore_params': 'ema'})
  run = restore.open_run(decode, workdir)
  lines = ['ROMEO:', 'To be']
  expected = generate.generate_text(
      run.model, run.params, run.tokenizer, lines, max_new_tokens=8, method='greedy',
      encode=datasets.input_encoder(config, run.tokenizer), context=config.seq_len)
  assert evaluation.decode_checkpoint(decode, workdir, lines) == expected
  params = restore.open_run(override(decode, {'restore_params': 'params'}), workdir).params
  assert generate.generate_text(
      run.model, params, run.tokenizer, lines, max_new_tokens=8, method='greedy',
      encode=datasets.input_encoder(config, run.tokenizer), context=config.seq_len) != expected


def test_ema_decay_out_of_range_is_refused_in_one_line(tiny_config):
  for decay in (1.0, -0.1):
    with pytest.raises(config_lib.ConfigError, match=r'config.ema_decay=.* must be in \[0, 1\)'):
      config_lib.validate(tiny_config(ema_decay=decay))
  with pytest.raises(config_lib.ConfigError, match="config.restore_params='average'"):
    config_lib.validate(tiny_config(restore_params='average'))


def _strategies_resume_and_reference() -> dict:
  """Runs in the 8-device subprocess: for pmap and an fsdp mesh, 4 steps straight
  (a real checkpoint saved after step 2) against the state restored from that
  checkpoint and 2 more steps; and the EMA against the float64 update of the
  parameters after each step."""
  from transformer_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from transformer_jax import parallel  # pylint: disable=g-import-not-at-top
  from transformer_jax.models.transformer import build_model  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == DEVICES, jax.devices()
  config = override(load_config(), {**TINY, 'batch_size': 16, 'ema_decay': DECAY})
  model = build_model(config.model)
  rng = np.random.default_rng(0)
  shape = (config.batch_size, config.seq_len)
  batches = [{'inputs': rng.integers(1, 60, shape, dtype=np.int32),
              'targets': rng.integers(1, 60, shape, dtype=np.int32),
              'weights': np.ones(shape, np.float32)} for _ in range(4)]
  steps = train_lib.make_steps(config)
  out = {}
  for name, strategy in (('pmap', parallel.PmapStrategy(*steps)),
                         ('mesh 4x2 (fsdp)', parallel.MeshStrategy(*steps, fsdp=2))):
    host = lambda state, s=strategy: jax.device_get(s.to_checkpoint(state))
    state, dropout = train_lib.create_state(config, model, strategy)
    after_each_step = []
    with tempfile.TemporaryDirectory() as workdir:
      with checkpoint_lib.Checkpointer(workdir, config) as checkpoints:
        for step, batch in enumerate(batches, start=1):
          state, _ = strategy.train_step(state, strategy.put_batch(batch), dropout)
          after_each_step.append(host(state).params)
          if step == 2:
            checkpoints.save(2, strategy.to_checkpoint(state),
                             parallel.replicated_everywhere(dropout))
            checkpoints.wait()
        straight = host(state)
        ema_sharded_as_params = all(
            e.sharding == p.sharding for e, p in zip(jax.tree.leaves(state.ema.ema),
                                                     jax.tree.leaves(state.params)))
        # The interrupted run: a state restored from step 2's checkpoint, 2 more steps.
        _, restored, _ = checkpoints.restore(strategy.checkpoint_target(state),
                                             parallel.replicated_target(dropout))
    state = strategy.from_checkpoint(restored)
    for batch in batches[2:]:
      state, _ = strategy.train_step(state, strategy.put_batch(batch), dropout)
    resumed = host(state)

    ema, mean = _reference_ema(after_each_step, DECAY)
    relative = lambda tree, ref: max(  # per array: the largest difference over its scale.
        float(np.max(np.abs(np.asarray(x, np.float64) - y)) / max(np.max(np.abs(y)), 1e-6))
        for x, y in zip(jax.tree.leaves(tree), jax.tree.leaves(ref), strict=True))
    out[name] = {
        'bitwise': all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(straight),
                                                            jax.tree.leaves(resumed))),
        'leaves': len(jax.tree.leaves(straight.ema)),
        'count': int(straight.ema.count),
        'ema_vs_float64': relative(straight.ema.ema, ema),
        'debiased_vs_float64': relative(train_lib.ema_params(straight.ema, DECAY), mean),
        'ema_sharded_as_params': ema_sharded_as_params}
  return out


def test_ema_under_pmap_and_mesh_resumes_bitwise_and_equals_the_float64_update():
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={DEVICES}',
             JAX_PLATFORMS='cpu', PYTHONPATH=REPOSITORY)
  done = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=REPOSITORY, env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert set(result) == {'pmap', 'mesh 4x2 (fsdp)'}
  for name, r in result.items():
    assert r['bitwise'] and r['count'] == 4 and r['leaves'] > 2, (name, r)
    assert r['ema_vs_float64'] < 1e-5 and r['debiased_vs_float64'] < 1e-5, (name, r)
    assert r['ema_sharded_as_params'], (name, r)


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  print(json.dumps(_strategies_resume_and_reference()))
