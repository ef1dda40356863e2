"""One trainer per workdir: an exclusive lock on <workdir>/lock.

Two trainers on one workdir would write every record twice and delete each
other's in-progress checkpoints, so `--mode=train` takes this lock before it
touches the workdir and refuses, in one line naming the holder, when another
process has it. The lock is an advisory `flock` on the file, which the kernel
drops when its process dies however it dies (kill -9 included), so a lock left
behind by a dead process is simply taken over; the file's text (host, pid,
start time) only serves to name the holder. Eval and decode take no lock: they
only read checkpoints, and append one record.
"""

import errno
import fcntl
import json
import os
import socket
import time
from typing import Optional

LOCK_FILE = 'lock'


class WorkdirLocked(RuntimeError):
  """Another live process trains in this workdir; the message names it."""


class WorkdirLock:
  """Context manager holding the workdir's lock (see the module doc).

  Raises:
    WorkdirLocked: another process holds it.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: Optional[int] = None

  def acquire(self):
    os.makedirs(self.workdir, exist_ok=True)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
          raise WorkdirLocked(
              f'{self.workdir} is in use by another training run ({self._holder()}); wait for '
              'it to finish or stop it, or use another --workdir.') from None
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP):  # a filesystem without locks.
          print(f'Warning: {self.workdir} cannot be locked ({e.strerror}); make sure no '
                'other trainer uses it.', flush=True)
          return self
        raise
      # The holder unlinks the file before it unlocks: if the file we locked is
      # no longer the one at the path, lock the new one.
      try:
        same = os.path.samestat(os.fstat(fd), os.stat(self.path))
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({'host': socket.gethostname(), 'pid': os.getpid(),
                             'since': time.strftime('%Y-%m-%dT%H:%M:%S%z')}).encode())
    self._fd = fd
    return self

  def _holder(self) -> str:
    try:
      with open(self.path) as f:
        holder = json.load(f)
      return f"host {holder['host']}, pid {holder['pid']}, since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):
      return f'holder not recorded in {self.path}'

  def release(self):
    if self._fd is None:
      return
    try:
      os.unlink(self.path)
    except FileNotFoundError:
      pass
    os.close(self._fd)  # closing the last descriptor drops the flock.
    self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
    return False
