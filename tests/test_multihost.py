"""Multi-host training on JAX's distributed runtime, with real processes on this CPU.

Two processes of two CPU devices each (a local coordinator, gloo collectives)
against one process of four devices: same config, same seed, so the same global
batches, dropout keys and updates; only the cross-process reductions may round
differently. Then exact resume across processes, and SIGTERM to one process.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPOSITORY, TINY, override_flags
from transformer_jax import run_log

STEPS = 10
CONFIG = {**TINY, 'total_steps': STEPS, 'checkpoint_every': 5, 'batch_size': 8}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _command(workdir, values: dict, process_id=None, port=None) -> list:
  cmd = [sys.executable, '-m', 'transformer_jax.main', f'--workdir={workdir}',
         *override_flags({**CONFIG, **values})]
  if process_id is not None:
    cmd += ['--config.distributed.enabled=True',
            f'--config.distributed.coordinator_address=localhost:{port}',
            '--config.distributed.num_processes=2', f'--config.distributed.process_id={process_id}',
            '--config.distributed.initialization_timeout=120']
  return cmd


def _env(devices: int) -> dict:
  return dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')


def _start_two(workdir, **values) -> list:
  port = _free_port()
  return [subprocess.Popen(_command(workdir, values, i, port), cwd=REPOSITORY, env=_env(2),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
          for i in (0, 1)]


def _finish(processes, timeout=600) -> list:
  """Outputs of the processes (a hang guard of `timeout` seconds each)."""
  outputs = []
  for p in processes:
    try:
      outputs.append(p.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
      for q in processes:
        q.kill()
      raise
  return outputs


def _two_processes(workdir, **values) -> list:
  outputs = _finish(_start_two(workdir, **values))
  for i, output in enumerate(outputs):
    assert f'"step": {values.get("total_steps", STEPS)}' in output, f'process {i}:\n{output[-3000:]}'
  return outputs


def _one_process(workdir, **values):
  done = subprocess.run(_command(workdir, values), cwd=REPOSITORY, env=_env(4),
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _train(workdir) -> list:
  return [(r['step'], r['loss'], r['grad_norm']) for r in run_log.read_jsonl(workdir, 'train')]


# The tests reading `runs` run on one xdist worker (CI's --dist loadgroup), so its four
# trainings happen once, not once per worker.
SHARED_RUNS = pytest.mark.xdist_group('multihost_runs')


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """{(strategy, 'one' | 'two'): workdir} for 10 steps (checkpoints at 5 and 10)."""
  out = {}
  for name, values in (('pmap', {'parallelism': 'pmap'}),
                       ('mesh', {'parallelism': 'mesh', 'fsdp': 2})):
    out[name, 'one'] = str(tmp_path_factory.mktemp(f'{name}_one'))
    _one_process(out[name, 'one'], **values)
    out[name, 'two'] = str(tmp_path_factory.mktemp(f'{name}_two'))
    _two_processes(out[name, 'two'], **values)
  return out


@SHARED_RUNS
@pytest.mark.parametrize('strategy', ['pmap', 'mesh'])
def test_two_processes_train_as_one_process_of_as_many_devices(runs, strategy):
  one, two = _train(runs[strategy, 'one']), _train(runs[strategy, 'two'])
  assert [r[0] for r in two] == list(range(1, STEPS + 1))
  np.testing.assert_allclose([r[1] for r in two], [r[1] for r in one], rtol=0, atol=1e-5)
  np.testing.assert_allclose([r[2] for r in two], [r[2] for r in one], rtol=1e-5)
  # Records, TensorBoard and run files written once, by process 0.
  records = run_log.read_jsonl(runs[strategy, 'two'])
  assert len(records) == len({(r['step'], r['split']) for r in records})
  assert len(os.listdir(os.path.join(runs[strategy, 'two'], 'tensorboard'))) == 1
  # The data position is saved per process.
  assert sorted(os.listdir(os.path.join(runs[strategy, 'two'], 'checkpoints', '5', 'data'))) == [
      'commit_success.txt', 'process_0-of-2.json', 'process_1-of-2.json']


def _state(workdir, step):
  """A checkpoint's state item as numpy arrays (it was written across processes)."""
  import jax  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  return checkpointer.restore(path, jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree))


@SHARED_RUNS
def test_two_processes_resume_exactly(runs, tmp_path):
  """From the straight run's step-5 checkpoint, both processes restarted: steps 6-10
  and the final state bitwise those of the run that never stopped."""
  straight = runs['pmap', 'two']
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(os.path.join(straight, 'checkpoints', '5'),
                  os.path.join(resumed, 'checkpoints', '5'))
  outputs = _two_processes(resumed, parallelism='pmap')
  assert 'resuming at step 5 of 10' in outputs[0]
  assert _train(resumed) == _train(straight)[5:]
  a, b = _state(straight, 10), _state(resumed, 10)
  import jax  # pylint: disable=g-import-not-at-top
  assert len(jax.tree.leaves(a)) > 5
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
  workdir = str(tmp_path)
  processes = _start_two(workdir, parallelism='mesh', total_steps=100000, checkpoint_every=100000)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + 600  # a hang guard.
  while not (os.path.exists(metrics) and len(open(metrics).readlines()) >= 3):
    assert all(p.poll() is None for p in processes) and time.time() < deadline, _finish(processes)
    time.sleep(0.1)
  processes[1].send_signal(signal.SIGTERM)  # the process that writes no records.
  outputs = _finish(processes)
  assert [p.returncode for p in processes] == [128 + signal.SIGTERM] * 2, outputs
  saved = [int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit()]
  assert len(saved) == 1
  for output in outputs:
    assert f'Saved a checkpoint at step {saved[0]}' in output
  assert '[process 1 of 2] ' in outputs[1]  # the other process's lines say which it is.

  outputs = _two_processes(workdir, parallelism='mesh', total_steps=saved[0] + 1,
                           checkpoint_every=100000)
  assert f'resuming at step {saved[0]} of {saved[0] + 1}' in outputs[0]


def _start_two_each(workdir, values: list, devices=(2, 2)) -> list:
  """Two processes, process i with the overrides values[i] and devices[i] devices."""
  port = _free_port()
  return [subprocess.Popen(_command(workdir, values[i], i, port), cwd=REPOSITORY,
                           env=_env(devices[i]), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
          for i in (0, 1)]


def _last_lines(outputs) -> list:
  return [[line for line in output.splitlines() if 'Gloo' not in line][-1] for output in outputs]


def test_processes_with_different_configs_all_stop_in_one_line(tmp_path):
  processes = _start_two_each(str(tmp_path), [{'seed': 0}, {'seed': 1}])
  outputs = _finish(processes, timeout=300)
  assert [p.returncode for p in processes] == [2, 2], outputs
  for line in _last_lines(outputs):
    assert 'Config error: the processes of this multi-host run have different configs: seed ' \
        '(process 0 0, process 1 1); start every process with the same command' in line, outputs
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_processes_with_different_device_counts_all_stop_in_one_line(tmp_path):
  processes = _start_two_each(str(tmp_path), [{'batch_size': 6}] * 2, devices=(2, 1))
  outputs = _finish(processes, timeout=300)
  assert [p.returncode for p in processes] == [2, 2], outputs
  for line in _last_lines(outputs):
    assert line.endswith('Config error: the processes of this multi-host run have different '
                         'numbers of devices (process 0: 2, process 1: 1); give every process as '
                         'many (the same XLA_FLAGS, CUDA_VISIBLE_DEVICES or machine type).'), outputs


def test_a_locked_workdir_stops_every_process_in_one_line(tmp_path):
  from transformer_jax import lock  # pylint: disable=g-import-not-at-top
  with lock.WorkdirLock(str(tmp_path)):
    processes = _start_two_each(str(tmp_path), [{}, {}])
    outputs = _finish(processes, timeout=300)
  assert [p.returncode for p in processes] == [2, 2], outputs
  first, second = _last_lines(outputs)
  assert f'{tmp_path} is in use by another training run' in first, outputs
  assert second.startswith(f'[process 1 of 2] Process 0 of 2 did not start ({tmp_path} is in '
                           'use'), outputs
  assert all('Traceback' not in output for output in outputs), outputs


@pytest.mark.parametrize('values,message', [
    ({'distributed.num_processes': 2}, 'config.distributed.enabled is False'),
    ({'distributed.enabled': True, 'distributed.coordinator_address': 'localhost'},
     'is not HOST:PORT'),
    ({'distributed.enabled': True, 'distributed.coordinator_address': 'localhost:1234'},
     'num_processes and process_id must be too'),
    ({'distributed.enabled': True, 'distributed.num_processes': 2,
      'distributed.process_id': 2}, 'must be in 0..num_processes-1'),
])
def test_distributed_config_errors_are_one_line(values, message):
  from conftest import load_config, override  # pylint: disable=g-import-not-at-top
  from transformer_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  with pytest.raises(config_lib.ConfigError, match=message) as error:
    config_lib.validate(override(load_config(), values))
  assert '\n' not in str(error.value)


def test_a_checkpoint_from_before_the_distributed_section_still_resumes():
  from transformer_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from transformer_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  current = checkpoint_lib.config_json(config_lib.base_config())
  saved = dict(current, distributed=False)  # the flag it used to be.
  assert checkpoint_lib.config_differences(saved, current) == []
