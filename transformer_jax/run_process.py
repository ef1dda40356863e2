"""One run of a sweep as its own process: launched, logged, and its status stored.

Shared by the sweep's executors (sweep.py runs it locally, sweep_ray.py inside a
Ray task), so both start a run, append to its log.txt and write its
sweep_status.json the same way.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence

from transformer_jax import run_log

STATUS_FILE = 'sweep_status.json'
# A request to stop the run (`request_stop` writes it): the launch passes it on
# to the training process as SIGTERM, on whichever node the run trains.
STOP_FILE = 'stop_request.json'


def _last_line(path: str, start: int) -> str:
  """The last non-empty line written to `path` after byte `start`."""
  with open(path, encoding='utf-8', errors='replace') as f:
    f.seek(start)
    lines = [line.strip() for line in f.read().splitlines() if line.strip()]
  return lines[-1] if lines else '(no output)'


def request_stop(run_dir: str, why: str, early: bool):
  """Asks the launch training in `run_dir` to stop the run (it saves, then
  exits). `early`: a scheduler's decision (search.Stopper), so the run counts as
  finished, `why` its status's `early_stopped`; else a signal to the sweep,
  which the run resumes from on a relaunch."""
  run_log.write_atomically(os.path.join(run_dir, STOP_FILE),
                           json.dumps({'why': why, 'early': early}))


def _stop_request(path: str) -> dict:
  try:
    with open(path) as f:
      request = json.load(f)
  except (OSError, ValueError):
    request = None
  return request if isinstance(request, dict) else {}


def launch(args: Sequence[str], run_dir: str, where: Optional[dict] = None,
           on_start: Optional[Callable[[subprocess.Popen], None]] = None,
           preexec_fn: Optional[Callable[[], None]] = None) -> dict:
  """Trains one run in its own process (this interpreter, `args`); returns its status.

  The run's output is appended to its log.txt under a header naming the launch.
  The status says where it ran (`hostname`, plus `where`), when it started
  (`started`, Unix time), its exit code, wall time (`seconds`) and, when it
  did not exit 0, the last line it wrote. A run that cannot
  even be started (its directory cannot be made, say) gets a status with
  returncode None and the reason as its last line, instead of an exception.
  `on_start` sees the process (the local executor passes it the sweep's
  signals). A KeyboardInterrupt while it trains (the Ray executor cancelling
  the run's task) is passed on as SIGTERM: the run saves, then exits; the
  status then has `signal` set. So is a stop request (`request_stop`) appearing
  in `run_dir`; an early one's reason becomes the status's `early_stopped`. The
  run gets one SIGTERM, whichever comes first.
  """
  cmd = [sys.executable, *args]
  start = time.time()
  status = {'hostname': socket.gethostname(), **(where or {}), 'command': cmd, 'signal': None,
            'started': start}
  log_path = os.path.join(run_dir, 'log.txt')
  stop_path = os.path.join(run_dir, STOP_FILE)
  try:
    os.makedirs(run_dir, exist_ok=True)
    if os.path.exists(stop_path):  # a request to an earlier launch, not to this one.
      os.remove(stop_path)
    with open(log_path, 'a') as log:
      log.write(f'=== launched {time.strftime("%Y-%m-%d %H:%M:%S")} on {status["hostname"]}: '
                f'{" ".join(cmd)}\n')
      log.flush()
      offset = log.tell()
      process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True, preexec_fn=preexec_fn)
  except OSError as e:
    return {**status, 'returncode': None, 'seconds': time.time() - start,
            'last_line': f'could not launch in {run_dir}: {e.strerror or e}'}
  if on_start is not None:
    on_start(process)
  while True:
    try:  # polled, not wait()ed: Ray's cancel raises between bytecodes only.
      while process.poll() is None:
        if status['signal'] is None and os.path.exists(stop_path):
          request = _stop_request(stop_path)
          if request.get('early', True):
            status['early_stopped'] = str(request.get('why', 'stopped early'))
          status['signal'] = signal.SIGTERM
          process.send_signal(signal.SIGTERM)
        time.sleep(0.1)
      break
    except KeyboardInterrupt:
      if status['signal'] is None:
        status['signal'] = signal.SIGTERM
        process.send_signal(signal.SIGTERM)
  status.update(returncode=process.returncode, seconds=time.time() - start)
  if process.returncode != 0:
    status['last_line'] = _last_line(log_path, offset)
  return status


def write_status(run_dir: str, status: dict) -> bool:
  """Stores a launch's status in the run's directory; False when it cannot be
  written (the run could not be launched there: the sweep keeps it in memory)."""
  try:
    run_log.write_atomically(os.path.join(run_dir, STATUS_FILE), json.dumps(status))
    return True
  except OSError:
    return False


