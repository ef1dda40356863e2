"""The train step, the optimiser, determinism, the default experiment and the command line."""

import json
import os
import struct
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from conftest import REPOSITORY, override
from transformer_jax import run_log
from transformer_jax import train
from transformer_jax import trainer
from transformer_jax.models.transformer import build_model


def _state_and_batch(config, batch_size=8, seed=0, tx=None):
  model = build_model(config.model)
  tx = tx or train.create_optimizer(config, train.learning_rate_schedule(config))
  state = jax.jit(train.init_fn(config, model, tx))(jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)
  shape = (batch_size, config.seq_len)
  batch = {'inputs': rng.integers(1, config.model.vocab_size, shape, dtype=np.int32),
           'targets': rng.integers(1, config.model.vocab_size, shape, dtype=np.int32),
           'weights': (rng.random(shape) < 0.8).astype(np.float32)}
  return state, batch


def test_rsqrt_schedule_is_the_papers(char_config):
  config = override(char_config, {'learning_rate': 2.0, 'warmup_steps': 100})
  lr = train.learning_rate_schedule(config)
  for step in (1, 50, 100, 101, 1000):
    expected = 2.0 * 128**-0.5 * min(step**-0.5, step * 100**-1.5)
    np.testing.assert_allclose(lr(step - 1), expected, rtol=1e-6)


def test_cosine_and_constant_schedules(char_config):
  config = override(char_config, {'optimizer.schedule': 'cosine', 'learning_rate': 1e-3,
                                  'warmup_steps': 10, 'total_steps': 110,
                                  'optimizer.end_learning_rate': 1e-4})
  lr = train.learning_rate_schedule(config)
  # Half way after update 60; the end rate after the last update (109), not at it.
  np.testing.assert_allclose([lr(4), lr(9), lr(60), lr(110)], [5e-4, 1e-3, 5.5e-4, 1e-4],
                             rtol=1e-5)
  assert lr(109) > 1e-4
  lr = train.learning_rate_schedule(override(config, {'optimizer.schedule': 'constant'}))
  np.testing.assert_allclose([lr(4), lr(9), lr(500)], [5e-4, 1e-3, 1e-3], rtol=1e-6)


def test_label_smoothing_matches_optax():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(3, 5, 11)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 11, (3, 5)))
  weights = jnp.asarray(rng.random((3, 5)) < 0.7, jnp.float32)
  objective, sums = train.cross_entropy(logits, targets, weights, label_smoothing=0.1)
  soft = optax.smooth_labels(jax.nn.one_hot(targets, 11), 0.1)
  expected = (optax.softmax_cross_entropy(logits, soft) * weights).sum()
  np.testing.assert_allclose(objective, expected, rtol=1e-6)
  nll = (optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights).sum()
  np.testing.assert_allclose(sums['nll'], nll, rtol=1e-6)
  assert sums['weight'] == weights.sum()


def test_gradient_accumulation_equals_one_big_batch(tiny_config):
  """Compared under SGD, where the parameter change is the gradient itself (Adam's
  first update, lr * sign(g), would turn float noise in the key bias's gradient,
  zero in exact arithmetic, into +-lr)."""
  config = tiny_config(model__dropout_rate=0.0)
  state, batch = _state_and_batch(config, tx=optax.sgd(1.0))
  one, _ = train.make_steps(config)
  four, _ = train.make_steps(override(config, {'optimizer.grad_accum_steps': 4}))
  rng = jax.random.PRNGKey(1)
  state_1, m1 = jax.jit(one)(state, batch, rng)
  state_4, m4 = jax.jit(four)(state, batch, rng)
  for a, b in zip(jax.tree.leaves(state_1.params), jax.tree.leaves(state_4.params)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  np.testing.assert_allclose(m1['nll'], m4['nll'], rtol=1e-5)
  np.testing.assert_allclose(m1['grad_norm'], m4['grad_norm'], rtol=1e-5)
  assert m1['weight'] == m4['weight'] == batch['weights'].sum()


def test_bfloat16_compute_keeps_float32_params(tiny_config):
  config = tiny_config(model__dtype='bfloat16')
  state, batch = _state_and_batch(config)
  step, _ = train.make_steps(config)
  state, metrics = jax.jit(step)(state, batch, jax.random.PRNGKey(1))
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype('float32')}
  assert np.isfinite(metrics['nll'])


def test_dropout_differs_per_step_and_is_off_in_eval(tiny_config):
  config = tiny_config(model__dropout_rate=0.5, optimizer__grad_clip_norm=0.0)
  state, batch = _state_and_batch(config)
  step, _ = train.make_steps(config)
  step = jax.jit(step)
  _, a = step(state, batch, jax.random.PRNGKey(1))
  _, b = step(state.replace(step=state.step + 1), batch, jax.random.PRNGKey(1))
  _, c = step(state, batch, jax.random.PRNGKey(1))
  assert a['nll'] != b['nll'] and a['nll'] == c['nll']
  evaluate = jax.jit(train.eval_step)
  assert evaluate(state, batch)['nll'] == evaluate(state, batch)['nll']


def _records(workdir):
  drop = ('tokens_per_sec', 'data_wait_fraction', 'mfu')
  return [{k: v for k, v in r.items() if k not in drop} for r in run_log.read_jsonl(workdir)]


def _tensorboard_scalars(workdir) -> dict:
  """{(step, tag): value} from the TFRecord event files, read without TensorFlow."""
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  scalars = {}
  for name in os.listdir(os.path.join(workdir, 'tensorboard')):
    with open(os.path.join(workdir, 'tensorboard', name), 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        scalars[(event.step, value.tag)] = value.simple_value
  return scalars


def test_same_seed_same_metrics_different_seed_differs(tiny_config, tmp_path, capsys):
  config = tiny_config(total_steps=4, eval_steps=1, num_samples=2, sample_length=40)
  samples = []
  for name, seed in (('a', 0), ('b', 0), ('c', 1)):
    trainer.train(override(config, {'seed': seed}), str(tmp_path / name))
    out = capsys.readouterr().out
    samples.append(out[out.index('--- sample 1 ---'):])
  assert samples[0] == samples[1] != samples[2]
  assert '--- sample 2 ---' in samples[0]
  a, b, c = (_records(tmp_path / name) for name in 'abc')
  assert a == b
  assert [r['loss'] for r in a] != [r['loss'] for r in c]
  assert [(r['step'], r['split']) for r in a] == [
      (1, 'train'), (2, 'train'), (3, 'train'), (4, 'train'), (4, 'eval')]
  # Throughput and MFU (against the measured CPU roof) after the compiling step.
  timed = [r for r in run_log.read_jsonl(tmp_path / 'a', 'train')][1:]
  assert timed and all(r['tokens_per_sec'] > 0 and 0 < r['mfu'] < 1 for r in timed)
  scalars = _tensorboard_scalars(tmp_path / 'a')
  for record in a:
    np.testing.assert_allclose(scalars[(record['step'], f'{record["split"]}/loss')],
                               record['loss'], rtol=1e-6)
  with open(tmp_path / 'a' / 'environment.json') as f:
    environment = json.load(f)['starts'][0]
  assert environment['step'] == 0 and environment['packages']['jax'] == jax.__version__ and 'git_commit' in environment
  with open(tmp_path / 'a' / 'config.json') as f:
    assert json.load(f)['seed'] == 0


def test_default_experiment_beats_unigram_baseline(char_config, tmp_path):
  """The default experiment, shortened to 150 steps and a 40-batch eval (the
  full 2000-step run and its samples are in README)."""
  from transformer_jax.data import datasets  # pylint: disable=g-import-not-at-top
  config = override(char_config, {'total_steps': 150, 'eval_steps': 40, 'num_samples': 0})
  result = trainer.train(config, str(tmp_path))
  unigram = datasets.create_datasets(config).info['unigram_entropy']
  assert result['loss'] < unigram - 0.5, (result, unigram)


def _main(*args, timeout=60):
  return subprocess.run([sys.executable, '-m', 'transformer_jax.main', *args], cwd=REPOSITORY,
                        capture_output=True, text=True, timeout=timeout)


def test_config_typo_fails_in_one_line_before_compiling(tmp_path):
  start = time.time()
  done = _main(f'--workdir={tmp_path}/w', '--config.model.num_head=4')
  assert done.returncode != 0
  assert done.stderr.strip().splitlines() == [done.stderr.strip()]
  assert 'num_head' in done.stderr and 'num_heads' in done.stderr
  assert 'Traceback' not in done.stderr
  assert not os.path.exists(tmp_path / 'w')
  assert time.time() - start < 30


def test_bad_value_fails_in_one_line(tmp_path):
  done = _main(f'--workdir={tmp_path}/w', '--config.optimizer.schedule=exponential')
  assert done.returncode != 0 and 'Traceback' not in done.stderr
  assert done.stderr.strip().splitlines() == [
      "Config error: config.optimizer.schedule='exponential' is unknown; use one of "
      "('rsqrt', 'cosine', 'constant', 'linear', 'wsd')."]
  assert not os.path.exists(tmp_path / 'w')


def test_describe_runs_without_a_config():
  done = _main('--mode=describe')
  assert done.returncode == 0, done.stderr
  assert '"variant": "decoder"' in done.stdout.strip().splitlines()[-1]


def test_cpu_devices_of_one_host_share_its_measured_roof():
  """JAX_NUM_CPU_DEVICES=2 splits one set of cores into 2 devices: MFU divides by the
  host's one measured roof, not by it twice (which halved the MFU a run printed)."""
  code = ('import jax; from conftest import load_config; from transformer_jax import metrics; '
          'roof = metrics.measured_matmul_flops(); '
          'peak = metrics.peak_flops(load_config()); '
          'print(jax.local_device_count(), '
          'metrics.mfu(1e6, 1e5, peak, jax.device_count()) * roof / (1e6 * 1e5))')
  env = dict(os.environ, JAX_NUM_CPU_DEVICES='2', JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join([os.path.join(REPOSITORY, 'tests'), REPOSITORY]))
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       timeout=300, check=True).stdout.split()
  assert out[0] == '2'
  np.testing.assert_allclose(float(out[1]), 1.0, rtol=1e-12)
