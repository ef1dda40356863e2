"""Where a run's records go, and what a run writes about itself.

Every metric record goes to three places at once:
  stdout                  one progress line per record;
  <workdir>/tensorboard/  TensorBoard event files, tags `<split>/<name>`;
  <workdir>/metrics.jsonl one JSON object per line, e.g.
      {"step": 100, "split": "train", "loss": 2.31, "tokens_per_sec": 41000.0, ...}
      {"step": 500, "split": "eval", "loss": 1.98, "accuracy": 0.41, "perplexity": 7.2, ...}
`step` counts optimizer updates done; what the numbers mean: metrics.py.

A run also writes <workdir>/config.json (the resolved config) and
<workdir>/environment.json (its provenance: package versions, git commit,
devices, command), so any run can be reproduced.
"""

import json
import os
import socket
import subprocess
import sys
import time
from importlib import metadata
from typing import Optional

import jax

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


def write_run_info(workdir: str, config):
  """<workdir>/config.json and <workdir>/environment.json (main process only)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  with open(os.path.join(workdir, 'environment.json'), 'w') as f:
    json.dump(provenance(), f, indent=2)
    f.write('\n')


class TensorBoardWriter:
  """Scalar summaries as a TensorBoard event file (TFRecord of Event protos),
  written with tensorboard's own record writer so TensorFlow is never imported."""

  def __init__(self, logdir: str):
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.summary.writer import record_writer  # pylint: disable=g-import-not-at-top
    os.makedirs(logdir, exist_ok=True)
    now = time.time()
    name = f'events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}'
    self._file = open(os.path.join(logdir, name), 'wb')
    self._writer = record_writer.RecordWriter(self._file)
    self._write(event_pb2.Event(wall_time=now, file_version='brain.Event:2'))

  def _write(self, event):
    self._writer.write(event.SerializeToString())
    self._file.flush()

  def write(self, step: int, split: str, values: dict):
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=f'{split}/{k}', simple_value=float(v))
        for k, v in values.items()])
    self._write(event_pb2.Event(step=step, wall_time=time.time(), summary=summary))

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


class MetricWriter:
  """Writes each record to stdout, TensorBoard and metrics.jsonl (process 0 only)."""

  def __init__(self, workdir: str, total_steps: int):
    self.total_steps = total_steps
    self.enabled = jax.process_index() == 0
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
      self._tensorboard = TensorBoardWriter(os.path.join(workdir, 'tensorboard'))
    self._start = time.time()

  def write(self, step: int, split: str, values: dict, tags: Optional[dict] = None):
    """`values` are numbers (also sent to TensorBoard); `tags` are strings that say
    how they were measured (e.g. the eval split and decoding method of --mode=eval)."""
    values = {k: v for k, v in values.items() if v is not None}
    tags = tags or {}
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split, **tags,
              **{k: float(v) for k, v in values.items()}}
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    self._tensorboard.write(step, split, values)
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

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tensorboard.close()


def read_jsonl(workdir: str, split: Optional[str] = None) -> list:
  """The records of <workdir>/metrics.jsonl, optionally of one split."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if split is None or r['split'] == split]
