"""config.compilation_cache_dir: JAX's persistent compilation cache from the CLI.

A second start loads the programs the first one compiled, and changes no
result; a directory that cannot be written leaves the cache off in one line.
"""

import json
import os
import subprocess
import sys

from conftest import REPOSITORY, TINY, override_flags


def _run(workdir, cache_dir: str) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}  # conftest's.
  return subprocess.run(
      [sys.executable, '-m', 'transformer_jax.main', f'--workdir={workdir}',
       *override_flags(TINY), f'--config.compilation_cache_dir={cache_dir}'],
      cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=600)


def _train_records(workdir) -> list:
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    records = [json.loads(line) for line in f]
  return [{k: r[k] for k in ('step', 'loss', 'grad_norm')} for r in records
          if r.get('split') == 'train']


def test_a_second_start_reads_the_cache_and_trains_bitwise_the_same(tmp_path):
  cache = tmp_path / 'cache'
  first = _run(tmp_path / 'a', str(cache))
  assert first.returncode == 0, first.stderr[-2000:]
  entries = set(os.listdir(cache))
  assert entries, 'the first start wrote no compiled program'
  second = _run(tmp_path / 'b', str(cache))
  assert second.returncode == 0, second.stderr[-2000:]
  assert _train_records(tmp_path / 'b') == _train_records(tmp_path / 'a')
  assert len(_train_records(tmp_path / 'a')) == TINY['total_steps']
  assert set(os.listdir(cache)) == entries, 'the second start compiled programs again'


def test_a_cache_directory_that_cannot_be_written_is_one_line_and_the_run_goes_on(tmp_path):
  blocked = tmp_path / 'file'
  blocked.write_text('not a directory')
  done = _run(tmp_path / 'run', str(blocked / 'cache'))
  assert done.returncode == 0, done.stderr[-2000:]
  lines = [line for line in done.stderr.splitlines() if 'ompilation cache' in line]
  assert lines == [f'Compilation cache off: cannot write {blocked / "cache"} (Not a directory); '
                   "set --config.compilation_cache_dir to a writable directory, or to '' for "
                   'off.'], done.stderr[-2000:]
  assert len(_train_records(tmp_path / 'run')) == TINY['total_steps']
