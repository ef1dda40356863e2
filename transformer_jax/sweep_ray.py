"""The sweep's Ray executor: each run a Ray task, placed by Ray (the `ray` extra).

A run stays what it is under the local executor, `python -m transformer_jax.main`
in its own directory; here that process is started by a Ray task that declares
the run's resources (`--run_resources`, e.g. {"CPU": 1} or {"GPU": 1}), so Ray
decides where it runs and, for GPUs, pins the task's devices through
CUDA_VISIBLE_DEVICES, which the training process inherits: a run sees only its
own devices. The sweep's workdir must be on storage every node sees (a shared
filesystem); a node that cannot see it fails that run in one line naming the path.

Faults are Ray's: a run whose training process was killed (by a signal the sweep
did not send) raises RunKilled, which Ray retries (`max_retries`); a run whose
worker or node died is retried by Ray as well. A retry launches the same command
in the same directory, so it resumes from the run's last checkpoint (the
training process dies with its task's worker, so no orphan holds the run's
lock). A signal to the sweep cancels the tasks: one not started never starts,
a running one gets a KeyboardInterrupt, which `run_process.launch` passes to its
training run as SIGTERM (it saves and exits).
"""

import ctypes
import json
import os
import signal
import socket
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import ray

from transformer_jax import config as config_lib
from transformer_jax import run_process

_OPTIONS = {'CPU': 'num_cpus', 'GPU': 'num_gpus', 'memory': 'memory'}


class RunKilled(RuntimeError):
  """The run's training process died of a signal nobody in the sweep sent; Ray
  retries the task. `status` is the launch's status."""

  def __init__(self, message: str, status: dict):
    super().__init__(message)
    self.status = status

  def __reduce__(self):
    return RunKilled, (str(self), self.status)


def parse_resources(text: Optional[str]) -> Dict[str, float]:
  """--run_resources JSON -> {resource: amount}; default {"CPU": 1}.

  Raises:
    ConfigError: not a JSON object of non-negative numbers.
  """
  if text is None:
    return {'CPU': 1}
  try:
    resources = json.loads(text)
  except ValueError as e:
    raise config_lib.ConfigError(f'--run_resources={text!r} is not JSON ({e}); give e.g. '
                                 '\'{"CPU": 1}\' or \'{"CPU": 4, "GPU": 1}\'.') from None
  if not isinstance(resources, dict) or not all(
      isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
      for v in resources.values()):
    raise config_lib.ConfigError(f'--run_resources={text!r} must map resource names to amounts '
                                 '>= 0, e.g. \'{"CPU": 1, "GPU": 1}\'.')
  return resources


def task_options(resources: Dict[str, float], max_retries: int) -> dict:
  """Ray task options for one run: CPU, GPU and memory as Ray's own options (CPU
  1 unless given, as Ray's default), any other key a custom resource; RunKilled
  and lost workers or nodes retried."""
  options = {'num_cpus': 1, 'max_retries': max_retries, 'retry_exceptions': [RunKilled]}
  custom = {}
  for key, amount in resources.items():
    if key in _OPTIONS:
      options[_OPTIONS[key]] = amount
    else:
      custom[key] = amount
  if custom:
    options['resources'] = custom
  return options


def _die_with_parent():
  """In the training process, before exec (Linux): SIGKILL when the task's
  worker dies, so a retry elsewhere never meets an orphan holding the run's lock."""
  if sys.platform.startswith('linux'):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG.


@ray.remote
def _train(args: List[str], run_dir: str, workdir: str) -> dict:
  """One run on whichever node Ray chose; returns its launch status."""
  where = {'node_id': ray.get_runtime_context().get_node_id()}
  if not os.path.isdir(workdir):
    return {'hostname': socket.gethostname(), **where, 'returncode': None, 'seconds': 0.0,
            'signal': None,
            'last_line': f'the sweep workdir {workdir} is not visible on {socket.gethostname()}; '
                         'put it on a filesystem every node mounts at that path (NFS, a '
                         'cluster filesystem).'}
  status = run_process.launch(args, run_dir, where, preexec_fn=_die_with_parent)
  run_process.write_status(run_dir, status)  # here too: a cancelled task's value may not arrive.
  returncode = status['returncode']
  if returncode is not None and returncode < 0 and status['signal'] is None:
    raise RunKilled(f'the training process in {run_dir} was killed by '
                    f'{signal.Signals(-returncode).name} on {status["hostname"]}', status)
  return status


def _one_line(error: Exception) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return f'{type(error).__name__}: {lines[-1] if lines else ""}'


class RayExecutor:
  """Runs the launches as Ray tasks, as many at once as the cluster's resources
  allow; yields each status as its run ends."""

  name = 'ray'

  def __init__(self, address: Optional[str], resources: Dict[str, float], max_retries: int):
    self.address, self.resources, self.max_retries = address, resources, max_retries
    self.signals = 0  # signals received; the run loop acts on them (not in the handler).
    self._acted = 0

  def start(self):
    """Joins the cluster (or starts a local instance) before the sweep takes
    SIGTERM / SIGINT (ray.init sets a SIGTERM handler of its own)."""
    if not ray.is_initialized():
      ray.init(address=self.address)

  def signal(self, signum: int):
    del signum
    self.signals += 1

  def _cancel(self, pending: Dict[Any, str]):
    """First signal: cancel every task {ref: run_dir} (a running one saves);
    again: kill them. Ray's cancel of a running task is best effort, so the
    first also leaves a stop request in each run's directory, which the launch
    polls for (`run_process.request_stop`)."""
    for ref, run_dir in pending.items():
      if self._acted == 1:
        try:
          run_process.request_stop(run_dir, 'stopped by a signal to the sweep', early=False)
        except OSError:  # a run not launched yet, its directory not made: the cancel is enough.
          pass
      ray.cancel(ref, force=self._acted > 1)

  def run(self, launches: Sequence[Tuple[int, List[str], str]]) -> Iterator[Tuple[int, dict]]:
    """Yields (index, status) as each launch (index, args, run_dir) ends; a task
    cancelled before it started yields nothing."""
    if not launches:
      return
    self.start()
    workdir = os.path.dirname(os.path.dirname(launches[0][2]))
    train = _train.options(**task_options(self.resources, self.max_retries))
    pending, run_dirs = {}, {}
    for index, args, run_dir in launches:
      ref = train.remote(args, run_dir, workdir)
      pending[ref], run_dirs[ref] = index, run_dir
    while pending:
      if self._acted < self.signals:
        self._acted = self.signals
        self._cancel({ref: run_dirs[ref] for ref in pending})
      ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.2)
      for ref in ready:
        index = pending.pop(ref)
        try:
          status = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
          continue
        except ray.exceptions.RayTaskError as e:
          cause = getattr(e, 'cause', None)
          if isinstance(cause, RunKilled):  # retries spent: the last launch's status.
            status = {**cause.status, 'last_line': f'{cause} (after {self.max_retries} '
                                                   f'retries); last line: '
                                                   f'{cause.status.get("last_line")}'}
          else:
            status = {'returncode': None, 'seconds': 0.0, 'signal': None,
                      'last_line': _one_line(e)}
        except ray.exceptions.RayError as e:  # a worker or node lost, retries spent.
          status = {'returncode': None, 'seconds': 0.0, 'signal': None, 'last_line': _one_line(e)}
        yield index, status

  def close(self):
    if ray.is_initialized():
      ray.shutdown()
