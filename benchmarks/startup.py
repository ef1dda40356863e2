"""Time from the command to the first training step: ours against nanoGPT's `train.py`.

What a researcher waits before the first step of a run: interpreter start,
imports, data, model and optimiser set-up, and (ours) XLA's compilation of the
step. Each contender is launched as a fresh process and killed at the line that
says its first step is done:

- ours: `python -m transformer_jax.main --config=shakespeare_char:nanogpt` with a
  train record every step, so the first `train step 1/` line comes right after
  the first step's metrics are on the host;
- nanoGPT: its first `iter 0:` line (printed after `loss.item()`; iter 0 also
  holds its eval of one batch of each split, which our first step does not).

Ours is timed with JAX's persistent compilation cache off
(`--config.compilation_cache_dir=`), then with it on in an empty directory: a
first start, which fills the cache, and a second one that reads it.

  python benchmarks/startup.py --nanogpt_dir=/tmp/nanogpt   # about 4 minutes on 2 cores

Shapes: the default experiment (4x4x128, ctx 64, batch 12) and GPT-2 small
(12x12x768, ctx 1024, vocab 50257, batch 1). nanoGPT's files: cli_runs.py.
"""

import os

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')  # as cli_vs_nanogpt.py; see there.

# pylint: disable=g-import-not-at-top,wrong-import-position
import shutil
import sys
import tempfile

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import cli_runs
from benchmarks import common

flags.DEFINE_string('nanogpt_dir', '/tmp/nanogpt', "nanoGPT's files (cli_runs.py).")
common.define_choice_list('shapes', ['4x4x128', 'gpt2_small'], cli_runs.SHAPES, 'Shapes.')
flags.DEFINE_string('output', 'benchmarks/results/startup.json', 'JSON results.')
common.check_output()
FLAGS = flags.FLAGS

OURS_FIRST_STEP = r'train step\s+1/'
NANOGPT_FIRST_STEP = r'^iter 0:'


def _ours(shape, cache_dir: str = '') -> dict:
  workdir = tempfile.mkdtemp(prefix='ours_')
  extra = (f'--config.compilation_cache_dir={cache_dir}',)  # '' = off.
  try:
    load = cli_runs.load()
    result = cli_runs.run(cli_runs.ours_command(shape, workdir, 10, 1, extra),
                          cwd=cli_runs.REPO, stop_at=OURS_FIRST_STEP)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  return _seconds(result, OURS_FIRST_STEP, load)


def _nanogpt(shape) -> dict:
  work = cli_runs.nanogpt_workspace(FLAGS.nanogpt_dir, shape)
  try:
    load = cli_runs.load()
    result = cli_runs.run(cli_runs.nanogpt_command(shape, 10), cwd=work,
                          stop_at=NANOGPT_FIRST_STEP)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return _seconds(result, NANOGPT_FIRST_STEP, load)


def _seconds(result, pattern: str, load: str) -> dict:
  seconds = result.first(pattern)
  if seconds is None:
    raise RuntimeError(f'No line matched {pattern!r}; the output ended:\n{result.tail()}')
  return {'seconds': seconds, 'load': load}


def main(argv):
  del argv
  common.require('torch')  # nanoGPT's.
  cli_runs.check_nanogpt_dir(FLAGS.nanogpt_dir)
  env = common.environment(with_torch=True)
  common.print_environment(env)
  rows = []
  print('| shape | ours | ours, cache: first start | ours, cache: second start | nanoGPT | '
        'load before (1 min) |')
  print('|---|---|---|---|---|---|')
  for name in FLAGS.shapes:
    shape = cli_runs.SHAPES[name]
    cache = tempfile.mkdtemp(prefix='jax_cache_')
    try:
      row = {'shape': name, 'nanogpt': _nanogpt(shape), 'ours': _ours(shape),
             'ours_cache_first': _ours(shape, cache), 'ours_cache_second': _ours(shape, cache)}
    finally:
      shutil.rmtree(cache, ignore_errors=True)
    rows.append(row)
    keys = ('ours', 'ours_cache_first', 'ours_cache_second', 'nanogpt')
    loads = sorted(float(row[k]['load'].split()[0]) for k in keys)
    print(f'| {shape.layers}x{shape.heads}x{shape.d_model}, ctx {shape.ctx}, batch '
          f'{shape.batch} | ' + ' | '.join(f"{row[k]['seconds']:.1f} s" for k in keys) +
          f' | {loads[0]:.1f}-{loads[-1]:.1f} |', flush=True)
  common.write_json({'environment': env, 'rows': rows}, FLAGS.output)


if __name__ == '__main__':
  common.run(main)
