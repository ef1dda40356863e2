"""Records and checkpoints never vanish, and a failed write stops the run in one line.

Every failure to write (a read-only or full disk, for checkpoints, records or
an export) or to reach another process ends the run within seconds: one line
naming the path or process and the fix, a non-zero exit, nothing lost beyond
the last checkpoint. A record file deleted or replaced during the run is
written again with every record it held. Read-only directories and full disks
are real: a bind mount or a small tmpfs in a private mount namespace (unshare).
"""

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from conftest import REPOSITORY, TINY, load_config, override, override_flags
from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import run_log
from transformer_jax import trainer

HANG_GUARD = 300  # seconds; each command here takes seconds.


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  """6 steps with checkpoints at 3 and 6."""
  workdir = str(tmp_path_factory.mktemp('finished'))
  trainer.train(override(load_config(), TINY), workdir)
  return workdir


def _copy(workdir, tmp_path) -> str:
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)
  return copy


def _main(workdir, *args, prefix=(), **values) -> list:
  return [*prefix, sys.executable, '-m', 'transformer_jax.main', f'--workdir={workdir}',
          *override_flags({**TINY, **values}), *args]


def _run(command) -> subprocess.CompletedProcess:
  return subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True,
                        timeout=HANG_GUARD)


def _in_namespace(script: str) -> list:
  """A command prefix that runs `script` (sh; the command is "$0" "$@") as root
  of a private mount namespace, where it may mount (skips where it cannot)."""
  probe = subprocess.run(['unshare', '-rm', 'sh', '-c', 'mount -t tmpfs -o size=4k tmpfs /tmp'],
                         capture_output=True)
  if probe.returncode != 0:
    pytest.skip('cannot mount in a private namespace here (no user namespaces)')
  return ['unshare', '-rm', 'sh', '-c', script]


def _one_line(done, returncode=2) -> str:
  assert done.returncode == returncode, done.stdout[-2000:] + done.stderr[-3000:]
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1, done.stderr[-3000:]
  return lines[0]


def _steps(workdir, split='train') -> list:
  return [r['step'] for r in run_log.read_jsonl(workdir, split)]


# ---------------------------------------------------------------------------
# A failed write: one line, a non-zero exit, no hang, nothing lost.


def test_a_failed_write_stops_the_run_in_one_line_checkpoints_read_only_at_resume(
    finished_run, tmp_path):
  """Was: an OSError traceback at the first save, then a hang (Orbax's threads
  waited for the step directory) while metrics.jsonl ran past the checkpoint."""
  workdir = _copy(finished_run, tmp_path)
  records = run_log.read_jsonl(workdir)
  checkpoints = f'{workdir}/checkpoints'
  read_only = f'mount --bind -o ro "{checkpoints}" "{checkpoints}" && exec "$0" "$@"'
  done = _run(_main(workdir, prefix=_in_namespace(read_only), total_steps=9))
  assert _one_line(done) == (f'Could not write {workdir}/checkpoints (Read-only file system); '
                             'make it writable.')
  assert run_log.read_jsonl(workdir) == records  # refused before a step was trained.


def test_a_failed_write_stops_the_run_in_one_line_checkpoints_on_a_full_disk(
    finished_run, tmp_path):
  """Was: a thousand lines of Orbax tracebacks. The disk holds the first
  checkpoint and not the second; the run stops at its next save, and the same
  command (here on a disk with room) resumes from the first."""
  size = sum(os.path.getsize(os.path.join(root, name)) for root, _, names in
             os.walk(os.path.join(finished_run, 'checkpoints', '3')) for name in names)
  disk, after = tmp_path / 'disk', tmp_path / 'after'
  disk.mkdir()
  workdir = str(disk / 'run')
  full = (f'mount -t tmpfs -o size={int(1.5 * size) + 65536} tmpfs "{disk}" && "$0" "$@"; '
          f'status=$?; cp -a "{workdir}" "{after}"; exit $status')
  values = dict(total_steps=12, checkpoint_every=3, keep_checkpoints=10)
  done = _run(_main(workdir, prefix=_in_namespace(full), **values))
  line = _one_line(done)
  assert re.fullmatch(  # the checkpoint, or a record written while it failed.
      f'Could not write {workdir}/\\S+ \\(No space left on device\\); free space on its disk. '
      f'Stopped at step \\d+: the same command resumes from step 3, the last checkpoint in '
      f'{workdir}/checkpoints.', line), line
  assert 'Traceback' not in done.stdout

  with checkpoint_lib.Checkpointer(str(after), override(load_config(), TINY),
                                   writable=False) as saved:
    assert saved.all_steps() == [3]
    assert saved.restore_params()[0] == 3  # intact.
  resumed = _run(_main(str(after), **values))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resuming at step 3 of 12' in resumed.stdout
  assert _steps(str(after)) == list(range(1, 13))  # each step once, none lost.


def test_a_failed_write_stops_the_run_in_one_line_a_full_disk_at_the_start(tmp_path):
  """One page of disk: the run's first files (lock, vocabulary) do not fit (was: a traceback)."""
  workdir = str(tmp_path / 'run')
  full = f'mount -t tmpfs -o size=4k tmpfs "{tmp_path}" && exec "$0" "$@"'
  line = _one_line(_run(_main(workdir, prefix=_in_namespace(full))))
  assert re.fullmatch(f'Could not write {workdir}\\S* \\(No space left on device\\); free space '
                      'on its disk.', line), line


def test_a_failed_write_stops_the_run_in_one_line_export_to_a_read_only_directory(tmp_path):
  """Was: a 22-line `OSError: [Errno 30]` traceback."""
  workdir = str(tmp_path / 'gpt')
  trainer.train(override(load_config('shakespeare_char:nanogpt'),
                         {**TINY, 'model.use_bias': True, 'model.norm_bias': True, 'total_steps': 1,
                          'checkpoint_every': 1, 'warmup_steps': 1}), workdir)
  target = tmp_path / 'read_only'
  target.mkdir()
  read_only = f'mount --bind -o ro "{target}" "{target}" && exec "$0" "$@"'
  done = _run(_in_namespace(read_only) + [sys.executable, '-m', 'transformer_jax.main',
                                          f'--workdir={workdir}', '--mode=export',
                                          f'--output={target}/export'])
  assert _one_line(done) == (f'Could not write {target}/export (Read-only file system); make it '
                             'writable or give another --output.')


def test_a_failed_write_stops_the_run_in_one_line_a_record_on_a_full_disk():
  """A record that cannot be written (here /dev/full, always out of space) is one line."""
  if not (os.path.exists('/dev/full') and stat.S_ISCHR(os.stat('/dev/full').st_mode)):
    pytest.skip('no /dev/full device here')
  records = run_log.RecordFile('/dev/full')
  with pytest.raises(run_log.WriteFailed) as error:
    records.write(b'{"step": 1}\n')
  assert str(error.value) == ('Could not write /dev/full (No space left on device); free space '
                              'on its disk.')


def test_a_tfds_config_without_tensorflow_stops_in_one_line_naming_the_install(tmp_path):
  """Was: a 22-line ImportError traceback."""
  workdir = str(tmp_path / 'run')
  done = _run([sys.executable, '-c',
               'import runpy, sys; sys.modules["tensorflow"] = None; '  # as if not installed.
               f'sys.argv = ["main", "--config=lm1b", "--workdir={workdir}"]; '
               'runpy.run_module("transformer_jax.main", run_name="__main__")'])
  assert _one_line(done) == ("TFDS datasets need tensorflow; install them with pip install "
                             "'transformer_jax[tfds]' (Colab has them already).")
  assert not os.path.exists(workdir)


# ---------------------------------------------------------------------------
# Records never vanish.


def _start(workdir, **values) -> subprocess.Popen:
  return subprocess.Popen(_main(workdir, **values), cwd=REPOSITORY, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _wait_for_records(process, workdir, count: int):
  """Waits until metrics.jsonl holds `count` lines (a hang guard of HANG_GUARD s)."""
  path, deadline = os.path.join(workdir, 'metrics.jsonl'), time.time() + HANG_GUARD
  while not (os.path.exists(path) and len(open(path).readlines()) >= count):
    assert process.poll() is None and time.time() < deadline, process.communicate()
    time.sleep(0.05)


def _tensorboard_steps(workdir, tag='train/loss') -> list:
  """The steps of `tag` in the event files, read by TensorBoard's own TFRecord reader."""
  from tensorboard.backend.event_processing import (  # pylint: disable=g-import-not-at-top
      event_file_loader)
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  steps = []
  for name in os.listdir(os.path.join(workdir, 'tensorboard')):
    loader = event_file_loader.RawEventFileLoader(os.path.join(workdir, 'tensorboard', name))
    for record in loader.Load():
      event = event_pb2.Event.FromString(record)
      steps += [event.step for value in event.summary.value if value.tag == tag]
  return steps


def test_record_files_deleted_mid_run_are_written_again_with_every_record(tmp_path):
  """Was: the trainer wrote on into the deleted file and exited 0, and every
  later record was in no metrics.jsonl."""
  workdir = str(tmp_path)
  process = _start(workdir, total_steps=100000, checkpoint_every=100000)
  _wait_for_records(process, workdir, 5)
  os.remove(os.path.join(workdir, 'metrics.jsonl'))
  events = os.listdir(os.path.join(workdir, 'tensorboard'))
  os.remove(os.path.join(workdir, 'tensorboard', events[0]))
  _wait_for_records(process, workdir, 10)  # written again, and on.
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate(timeout=HANG_GUARD)
  assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
  assert f'{workdir}/metrics.jsonl was deleted during the run; wrote the run\'s' in out
  saved = int(re.search(r'Saved a checkpoint at step (\d+)', out).group(1))
  assert _steps(workdir) == list(range(1, saved + 1))
  assert os.listdir(os.path.join(workdir, 'tensorboard')) == events
  assert _tensorboard_steps(workdir) == list(range(1, saved + 1))


def test_a_record_file_replaced_mid_run_is_moved_aside_not_written_over(tmp_path, capsys):
  path = str(tmp_path / 'metrics.jsonl')
  records = run_log.RecordFile(path)
  records.write(b'{"step": 1}\n')
  (tmp_path / 'new').write_text('{"step": 7}\n')
  os.replace(tmp_path / 'new', path)
  records.write(b'{"step": 2}\n')
  records.close()
  assert open(path).read() == '{"step": 1}\n{"step": 2}\n'
  aside, = [name for name in os.listdir(tmp_path) if name.startswith('metrics.jsonl.found-')]
  assert open(tmp_path / aside).read() == '{"step": 7}\n'
  assert f'{path} was replaced during the run; moved the new file to {tmp_path / aside}' in \
      capsys.readouterr().out


# ---------------------------------------------------------------------------
# A signal during the final eval; a process of a multi-host run that dies.


def test_sigterm_during_the_final_eval_saves_and_exits_143(tmp_path):
  """Was: "saving a checkpoint after this step", then exit 0, as if not signalled."""
  workdir = str(tmp_path)
  # The whole eval split on a model 8x the tiny one's: seconds, time for the signal to land.
  process = _start(workdir, eval_steps=100000, **{'model.d_model': 64, 'model.num_layers': 2})
  _wait_for_records(process, workdir, TINY['total_steps'])  # the last train record: in the eval.
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate(timeout=HANG_GUARD)
  assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
  assert err == ''
  assert f'Saved a checkpoint at step 6 in {workdir}/checkpoints' in out
  assert _steps(workdir, 'eval') == [6]


def test_a_process_that_dies_ends_the_others_within_seconds_in_one_line(tmp_path):
  """Was: the other process waited JAX's 100 s heartbeat timeout, then JAX
  aborted it with about 100 lines of C++ output."""
  workdir = str(tmp_path)
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  processes = [subprocess.Popen(
      _main(workdir, total_steps=100000, checkpoint_every=100000, batch_size=8,
            parallelism='mesh', **{'distributed.enabled': True,
                                   'distributed.coordinator_address': f'localhost:{port}',
                                   'distributed.num_processes': 2, 'distributed.process_id': i,
                                   'distributed.peer_timeout': 3}),
      cwd=REPOSITORY, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in (0, 1)]
  try:
    _wait_for_records(processes[0], workdir, 3)
    processes[1].kill()
    processes[1].communicate()
    out, err = processes[0].communicate(timeout=HANG_GUARD)
  finally:
    for p in processes:
      p.kill()
  lines = [line for line in err.splitlines() if not line.startswith('[Gloo]')]
  assert processes[0].returncode == 2, err[-3000:]
  assert lines == ['Lost process 1 of 2: no sign of life for 3 s (it died, hangs, or stopped on '
                   'an error of its own: see its output); this process stops too. Fix that, then '
                   'run the same command on every host to resume from the last checkpoint.'], err
