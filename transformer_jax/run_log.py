"""Where a run's records go, and what a run writes about itself.

Every metric record goes to three places at once (four with Weights & Biases):
  stdout                  one progress line per record;
  <workdir>/tensorboard/  TensorBoard event files, scalar tags `<split>/<name>`;
  <workdir>/metrics.jsonl one JSON object per line, e.g.
      {"step": 100, "split": "train", "loss": 2.31, "tokens_per_sec": 41000.0, ...}
      {"step": 500, "split": "eval", "loss": 1.98, "accuracy": 0.41, "perplexity": 7.2, ...}
  W&B                     where config.wandb.enabled (wandb_writer.py), as `<split>/<name>`.
`step` counts optimizer updates done; what the numbers mean: metrics.py.

A training run's writer also records what TensorBoard needs to compare runs:
its config fields as HParams (`hparams`: the HParams dashboard lists the fields
that differ between the runs of a sweep first, with the last value of every
scalar, such as the final eval metrics, beside them), the resolved config as
text (tag `config`, at each start) and its text samples (`write_texts`, e.g.
tag `samples`: decoder samples after training).

A resumed run continues its records: `cut_back` first drops every record past
the checkpoint it resumed from (steps that are trained again, and a line torn
by a crash mid-write), so each step appears once in metrics.jsonl, and the
TensorBoard writer marks the restart so TensorBoard drops the old events past
it. Readers name the file and line of a record that does not parse.

Records never vanish: metrics.jsonl and the event files are written through
`RecordFile`, which checks before each write (and at close) that its path
still names the file it holds open; a file deleted or moved away during the
run is written again at its path with every record it held (a file found in
its place is moved aside, not written over), in one line. A write that fails
(a full disk, a read-only directory) raises `WriteFailed`: one line naming the
path, the cause and the fix, on which the run stops (main.py).

A run also writes <workdir>/config.json (the resolved config) and
<workdir>/environment.json, the provenance of every start of the run (package
versions, git commit, devices, command, the step it started at and the config
fields changed since the previous start), so any run can be reproduced.
"""

import errno
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from typing import Optional

import jax

from transformer_jax import config as config_lib

# The tags of an eval record that say how it measured (evaluation.eval_measure): evals
# that differ in any of them are never one series (sweep.summarise).
MEASURE_KEYS = ('eval_split', 'eval_steps', 'eval_stride', 'eval_overrides', 'weights')

PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain', 'ml-collections',
            'numpy', 'tensorflow-datasets', 'sentencepiece')


def _git_commit() -> dict:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True,
                            text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=root,
                           capture_output=True, text=True, timeout=10, check=True).stdout
    return {'git_commit': commit, 'git_dirty': bool(dirty.strip())}
  except (OSError, subprocess.SubprocessError):
    return {'git_commit': None, 'git_dirty': None}


def provenance() -> dict:
  """Package versions, git commit, devices and command line of this process."""
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  return {'python': sys.version.split()[0], 'packages': versions, **_git_commit(),
          'devices': [str(d) for d in jax.devices()], 'device_kind': jax.devices()[0].device_kind,
          'process_count': jax.process_count(), 'argv': sys.argv,
          'time': time.strftime('%Y-%m-%dT%H:%M:%S%z')}


class RecordError(ValueError):
  """A record file that does not parse; the message names the file and line."""


class WriteFailed(OSError):
  """A file of the run could not be written (a full disk, a read-only or
  vanished directory); the message is one line naming the path, the cause and
  the fix. An OSError (errno, strerror and filename set), so what catches a
  failed write still does."""

  def __init__(self, message: str, number: Optional[int], cause: str, path: str):
    super().__init__(number, cause, path)
    self.message = message

  def __str__(self):
    return self.message


# What to do about a failed write, by its errno.
_FIXES = {errno.ENOSPC: 'free space on its disk', errno.EDQUOT: 'free space within your quota',
          errno.EROFS: 'make it writable', errno.EACCES: 'make it writable',
          errno.EPERM: 'make it writable'}


# Errors only a write raises: an OSError of these is a failed write wherever it
# comes from (main.py turns one that no writer here caught into its one line).
WRITE_ONLY_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def _errno(error: BaseException) -> Optional[int]:
  """The OS error number of `error`: an OSError's, or the one its message names
  (TensorStore, Orbax's array writer: os_error_code='28'; Rust's: os error 28)."""
  if isinstance(error, OSError) and error.errno:
    return error.errno
  found = re.search(r"os[ _]error(?:_code=')?\s*(\d+)", str(error))
  return int(found.group(1)) if found else None


def write_failed(path: str, error: BaseException, other: str = '') -> WriteFailed:
  """The one-line WriteFailed for `error` raised writing `path`: the cause (the
  OS's words for its errno, else the error's first line) and the fix (or giving
  `other`, e.g. '--output', instead)."""
  number = _errno(error)
  if number is not None:
    cause = os.strerror(number)
  else:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = f'{type(error).__name__}: {lines[0][:200]}' if lines else type(error).__name__
  fix = _FIXES.get(number, 'check that it can be written') + (f' or give another {other}'
                                                             if other else '')
  return WriteFailed(f'Could not write {path} ({cause}); {fix}.', number, cause, path)


def check_writable(directory: str):
  """Makes `directory` if it is missing and writes (then removes) a file there,
  so a run learns at its start, not at its first save, that it cannot write.

  Raises:
    WriteFailed: it cannot (the OS's cause in `strerror`).
  """
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory):
      pass
  except OSError as e:
    raise write_failed(directory, e) from None


def write_atomically(path: str, text: str):
  """Replaces `path` with `text` in one rename, so a crash leaves the old or the new.

  Raises:
    WriteFailed: `path` cannot be written (nothing is left behind).
  """
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    with open(tmp, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    try:
      os.remove(tmp)
    except OSError:
      pass
    raise write_failed(path, e) from None


class RecordFile:
  """An append-only file of a run's records (metrics.jsonl, an event file) that
  does not vanish while the run writes it.

  Before each write and at close, the path must still name the open file: one
  deleted or moved away is written again at the path with every record it
  held (read back through the open descriptor), and a file found in its place
  is first moved aside to `<path>.found-<time>`; each in one line. A write
  that fails raises WriteFailed.
  """

  def __init__(self, path: str, exclusive: bool = False):
    """Opens `path` for appending (`exclusive`: a new file, an error if it exists)."""
    self.path = path
    try:
      self._file = open(path, 'x+b' if exclusive else 'a+b')
    except OSError as e:
      raise write_failed(path, e) from None

  def _identity(self, stat) -> tuple:
    return stat.st_dev, stat.st_ino

  def _keep(self):
    """Makes `path` name the open file again, if it does not."""
    try:
      if self._identity(os.stat(self.path)) == self._identity(os.fstat(self._file.fileno())):
        return
      aside = f'{self.path}.found-{time.strftime("%Y%m%d-%H%M%S")}'
    except FileNotFoundError:
      aside = None
    size = os.fstat(self._file.fileno()).st_size
    try:
      if aside:
        os.replace(self.path, aside)
      os.makedirs(os.path.dirname(self.path) or '.', exist_ok=True)
      with open(self.path, 'xb') as f:
        f.write(os.pread(self._file.fileno(), size, 0))
        f.flush()
      self._file.close()
      self._file = open(self.path, 'a+b')
    except OSError as e:
      raise write_failed(self.path, e) from None
    print(f'{self.path} ' + (f'was replaced during the run; moved the new file to {aside} and '
                             if aside else 'was deleted during the run; ')
          + f'wrote the run\'s {size} bytes of records there again.', flush=True)

  def write(self, data: bytes):
    self._keep()
    try:
      self._file.write(data)
      self._file.flush()
    except OSError as e:
      raise write_failed(self.path, e) from None

  def close(self):
    try:
      self._keep()
    finally:
      try:
        self._file.close()
      except OSError:
        pass  # a failed flush of data already reported by write().


def write_run_info(workdir: str, config, step: int = 0):
  """<workdir>/config.json (the config of this start) and a start record, with
  the config fields changed since the previous start, appended to
  <workdir>/environment.json {"starts": [...]} (main process only)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  config_path = os.path.join(workdir, 'config.json')
  current = json.loads(config.to_json_best_effort(sort_keys=True))
  start = {'step': int(step), **provenance()}
  if os.path.exists(config_path):
    with open(config_path) as f:
      before, now = config_lib.flatten(json.load(f)), config_lib.flatten(current)
    start['config_changes'] = {k: [before.get(k), now.get(k)] for k in sorted(set(before) | set(now))
                               if before.get(k) != now.get(k)}
  env_path = os.path.join(workdir, 'environment.json')
  starts = []
  if os.path.exists(env_path):
    with open(env_path) as f:
      try:
        previous = json.load(f)
      except ValueError as e:
        raise RecordError(f'{env_path} is not JSON ({e}); repair or move it away.') from None
    starts = previous['starts'] if 'starts' in previous else [previous]
  write_atomically(env_path, json.dumps({'starts': starts + [start]}, indent=2) + '\n')
  write_atomically(config_path, json.dumps(current, indent=2, sort_keys=True) + '\n')


_WRITERS = itertools.count()


class TensorBoardWriter:
  """Scalar, HParams and text summaries as a TensorBoard event file (TFRecord of
  Event protos), written with tensorboard's own record writer and summary
  protos, so TensorFlow is never imported."""

  def __init__(self, logdir: str, resume_step: int = 0):
    """A new event file; `resume_step` > 0 starts it with a restart marker
    (SessionLog START at resume_step + 1), on which TensorBoard drops the events
    of earlier files from that step on, as it does for TensorFlow's restarts."""
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.summary.writer import record_writer  # pylint: disable=g-import-not-at-top
    os.makedirs(logdir, exist_ok=True)
    now = time.time()
    # TensorFlow's naming, with a count: two writers of one process in one second
    # (train, then eval) must not share a file.
    name = (f'events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.'
            f'{next(_WRITERS):04d}')
    self._file = RecordFile(os.path.join(logdir, name), exclusive=True)
    self._writer = record_writer.RecordWriter(self._file)
    self._write(event_pb2.Event(wall_time=now, file_version='brain.Event:2'))
    if resume_step:
      self._write(event_pb2.Event(wall_time=now, step=resume_step + 1,
                                  session_log=event_pb2.SessionLog(
                                      status=event_pb2.SessionLog.START)))

  def _write(self, event):
    self._writer.write(event.SerializeToString())  # one RecordFile.write per event.

  def _summary(self, step: int, summary):
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
    self._write(event_pb2.Event(step=step, wall_time=time.time(), summary=summary))

  def write(self, step: int, split: str, values: dict):
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    self._summary(step, summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=f'{split}/{k}', simple_value=float(v))
        for k, v in values.items()]))

  def write_hparams(self, step: int, values: dict):
    """The run's HParams ({name: bool, number or string}): the hparams plugin's
    session start record, which makes this directory a row of the HParams
    dashboard, with its scalars' last values as the metrics."""
    from tensorboard.plugins.hparams import summary_v2  # pylint: disable=g-import-not-at-top
    self._summary(step, summary_v2.hparams_pb(values))

  def write_texts(self, step: int, tag: str, texts: list):
    """Texts under one tag, shown by the text plugin as a one-column table,
    each text verbatim (a Markdown code block keeps its lines and spaces)."""
    from tensorboard.plugins.text import summary_v2  # pylint: disable=g-import-not-at-top
    blocks = ['\n'.join('    ' + line for line in text.split('\n')) for text in texts]
    self._summary(step, summary_v2.text_pb(tag, blocks))

  def close(self):
    self._file.close()


def _format(name: str, value) -> str:
  if name == 'tokens_per_sec':
    return f'{value / 1e3:.1f}k tok/s'
  if name in ('data_wait_fraction', 'mfu', 'accuracy'):
    return f'{name.replace("_fraction", "")} {100 * value:.1f}%'
  if name in ('learning_rate', 'grad_norm'):
    return f'{name.replace("learning_rate", "lr")} {value:.2e}'
  return f'{name} {value:.4f}'


def hparams(config) -> dict:
  """Every field of `config` as an HParam, by its dotted name ({'model.num_heads':
  8, ...}); a value that is not a bool, number or string (an unset field) as JSON
  text."""
  fields = config_lib.flatten(json.loads(config.to_json_best_effort(sort_keys=True)))
  return {name: value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
          for name, value in fields.items()}


class MetricWriter:
  """Writes each record to stdout, TensorBoard, metrics.jsonl and, where
  config.wandb.enabled, W&B (process 0 only)."""

  def __init__(self, workdir: str, total_steps: int, resume_step: int = 0, echo: bool = True,
               config=None):
    """`echo=False` leaves out the stdout line. `config` (a training run's, at
    each start) goes to TensorBoard as HParams and as text, and to W&B, which
    it switches on (config.wandb)."""
    self.total_steps = total_steps
    self.echo = echo
    self.enabled = jax.process_index() == 0
    self._wandb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = RecordFile(os.path.join(workdir, 'metrics.jsonl'))
      self._tensorboard = TensorBoardWriter(os.path.join(workdir, 'tensorboard'), resume_step)
      if config is not None:
        self._tensorboard.write_hparams(resume_step, hparams(config))
        self._tensorboard.write_texts(resume_step, 'config', [
            config.to_json_best_effort(indent=2, sort_keys=True)])
        if config.wandb.enabled:
          from transformer_jax import wandb_writer  # pylint: disable=g-import-not-at-top
          self._wandb = wandb_writer.WandbWriter(workdir, config)
    self._start = time.time()

  def write(self, step: int, split: str, values: dict, tags: Optional[dict] = None):
    """`values` are numbers (also sent to TensorBoard); `tags` say how they were
    measured (evaluation.eval_measure's MEASURE_KEYS, --mode=eval's decoding
    method), in the record and the printed line only."""
    values = {k: v for k, v in values.items() if v is not None}
    tags = tags or {}
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split, **tags,
              **{k: float(v) for k, v in values.items()}}
    self._jsonl.write((json.dumps(record) + '\n').encode())
    self._tensorboard.write(step, split, values)
    if self._wandb:
      self._wandb.write(step, split, values)
    if not self.echo:
      return
    line = self._line(step, split, values)
    print(line + ''.join(f' | {k} {v}' for k, v in tags.items()), flush=True)

  def _line(self, step: int, split: str, values: dict) -> str:
    width = 20
    done = int(width * step / max(self.total_steps, 1))
    bar = '#' * done + '.' * (width - done)
    shown = ' | '.join(_format(k, v) for k, v in values.items()
                       if k not in ('perplexity',) or split == 'eval')
    elapsed = time.time() - self._start
    return f'[{bar}] {split:5s} step {step:>6d}/{self.total_steps} | {shown} | {elapsed:.0f}s'

  def write_texts(self, step: int, tag: str, texts: list):
    """Texts of one kind (e.g. tag 'samples') to TensorBoard and W&B; not to
    metrics.jsonl, whose records are numbers, nor to stdout."""
    if not self.enabled:
      return
    self._tensorboard.write_texts(step, tag, texts)
    if self._wandb:
      self._wandb.write_texts(step, tag, texts)

  def close(self):
    if self.enabled:
      try:
        self._jsonl.close()
        self._tensorboard.close()
      finally:
        if self._wandb:
          self._wandb.close()


def _parse(path: str) -> tuple:
  """(records, torn): the records of a metrics.jsonl, and whether its last line
  is torn (cut off without its newline by a crash, or still being written).

  Raises:
    RecordError: a complete line that is not a JSON record (names file and line).
  """
  with open(path, encoding='utf-8', errors='replace') as f:
    lines = f.read().split('\n')
  # After the last newline: '' normally, else a line without its newline.
  complete, last = lines[:-1], lines[-1]
  records = []
  for number, line in enumerate(complete, start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      if not isinstance(record, dict) or 'step' not in record:
        raise ValueError('not a record with a step')
    except ValueError as e:
      raise RecordError(f'{path} line {number} is not a JSON record ({e}): {line[:80]!r}; '
                        'repair or delete that line.') from None
    records.append(record)
  return records, bool(last.strip())


def read_jsonl(workdir: str, split: Optional[str] = None) -> list:
  """The records of <workdir>/metrics.jsonl, optionally of one split; a torn
  last line (a write cut off) is left out.

  Raises:
    FileNotFoundError: no metrics.jsonl; RecordError: a line that does not parse.
  """
  records, _ = _parse(os.path.join(workdir, 'metrics.jsonl'))
  return [r for r in records if split is None or r.get('split') == split]


def cut_back(workdir: str, step: int) -> int:
  """Drops the records of <workdir>/metrics.jsonl past `step` (the checkpoint a
  run resumes from) and a torn last line; returns how many were dropped."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if jax.process_index() != 0 or not os.path.exists(path):
    return 0
  records, torn = _parse(path)
  kept = [r for r in records if r['step'] <= step]
  dropped = len(records) - len(kept) + torn
  if dropped:
    write_atomically(path, ''.join(json.dumps(r) + '\n' for r in kept))
  return dropped
