"""Training memory: peak RSS ours against nanoGPT, the longest GPT-2 small context in
16 GiB, and what rematerialisation (config.model.remat) trades for it.

Three tables:

1. Peak resident memory of a training process per shape: each CLI (cli_runs.py's
   command lines) runs as a child until its third step is done and is killed there;
   its peak is the child's ru_maxrss (wait4). Ours holds XLA's compiler and
   compiled programs too; nanoGPT's, PyTorch's eager allocator.
2. The longest context one GPT-2 small train step (12x12x768, vocab 50257, batch 1,
   float32, our default XLA attention, no remat) fits in `--budget_gib`: the bytes
   of the compiled step (XLA's memory_analysis: arguments + outputs + temporaries -
   donated) at `--fit_lengths` are fit by a + b L + c L^2 (the attention scores are
   L^2), solved for the budget, and the step is compiled at the answer to check it.
   Cross-check against a real process: table 1's GPT-2 small row is a real step at
   ctx 1024, its RSS beside the compiled bytes at 1024.
3. remat none | full | dots at `--remat_shape`: compiled bytes and median step time
   (in this process, after the compiling step).

  python benchmarks/memory.py --nanogpt_dir=/tmp/nanogpt     # about 6 minutes on 2 cores
  python benchmarks/memory.py --parts=context,remat          # without nanoGPT
"""

import os

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')  # see cli_vs_nanogpt.py.

# pylint: disable=g-import-not-at-top,wrong-import-position
import dataclasses
import shutil
import statistics
import sys
import tempfile
import time

from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import cli_runs
from benchmarks import common
from transformer_jax import train as train_lib
from transformer_jax.models.transformer import build_model

FLAGS = flags.FLAGS

MIB = 2**20
GIB = 2**30


def _batch(config) -> dict:
  inputs = np.random.default_rng(0).integers(1, config.model.vocab_size,
                                             (config.batch_size, config.seq_len), dtype=np.int32)
  return {'inputs': inputs, 'targets': np.roll(inputs, -1, axis=1),
          'weights': np.ones(inputs.shape, np.float32)}


def compiled_step(config, state):
  """The train step compiled for `state` (arrays or their shapes), the batch donated as
  the trainer donates it."""
  step = jax.jit(train_lib.make_steps(config)[0], donate_argnums=0)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _batch(config))
  return step, step.lower(state, batch, jax.random.PRNGKey(0)).compile()


def compiled_bytes(compiled) -> int:
  """Bytes the compiled step holds at once: arguments + outputs + temporaries - donated."""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def state_shapes(config):
  """The TrainState's shapes, built abstractly (nothing allocated)."""
  model = build_model(config.model)
  tx = train_lib.create_optimizer(config, train_lib.learning_rate_schedule(config))
  return jax.eval_shape(train_lib.init_fn(config, model, tx), jax.random.PRNGKey(0))


def step_bytes(shape: cli_runs.Shape, remat: str = 'none') -> int:
  config = cli_runs.run_config(shape, remat)
  return compiled_bytes(compiled_step(config, state_shapes(config))[1])


def rss_rows() -> list:
  """Table 1: each CLI's peak RSS to its third step, per shape."""
  rows = []
  for name in FLAGS.rss_shapes:
    shape = cli_runs.SHAPES[name]
    workdir = tempfile.mkdtemp(prefix='ours_')
    work = cli_runs.nanogpt_workspace(FLAGS.nanogpt_dir, shape)
    try:
      load = cli_runs.load()
      ours = cli_runs.run(cli_runs.ours_command(shape, workdir, 10, 1), cwd=cli_runs.REPO,
                          stop_at=r'train step\s+3/')
      theirs = cli_runs.run(cli_runs.nanogpt_command(shape, 10), cwd=work, stop_at=r'^iter 3:')
    finally:
      shutil.rmtree(workdir, ignore_errors=True)
      shutil.rmtree(work, ignore_errors=True)
    rows.append({'shape': name, 'ours_mib': ours.max_rss_mib, 'nanogpt_mib': theirs.max_rss_mib,
                 'load': load})
    print(f'| {shape.layers}x{shape.heads}x{shape.d_model}, ctx {shape.ctx}, batch {shape.batch} '
          f'| {ours.max_rss_mib:,.0f} | {theirs.max_rss_mib:,.0f} | '
          f'{ours.max_rss_mib / theirs.max_rss_mib:.2f} | {load.split()[0]} |', flush=True)
  return rows


def context_rows() -> dict:
  """Table 2: the longest GPT-2 small context whose compiled step fits the budget."""
  base = cli_runs.SHAPES['gpt2_small']
  lengths = [int(n) for n in FLAGS.fit_lengths]
  measured = {n: step_bytes(dataclasses.replace(base, ctx=n)) for n in lengths}
  for n, b in measured.items():
    print(f'  ctx {n}: compiled step {b / GIB:.2f} GiB', flush=True)
  c, b, a = np.polyfit(lengths, [measured[n] for n in lengths], 2)
  budget = FLAGS.budget_gib * GIB
  root = max(r.real for r in np.roots([c, b, a - budget]) if abs(r.imag) < 1e-9 and r.real > 0)
  longest = int(root) // 256 * 256
  at_longest = step_bytes(dataclasses.replace(base, ctx=longest))
  result = {'measured_bytes': measured, 'fit': [a, b, c], 'budget_bytes': budget,
            'longest_ctx': longest, 'compiled_bytes_at_longest': at_longest}
  print(f'  fit: {a / GIB:.2f} GiB + {b / MIB:.2f} MiB L + {c:.0f} B L^2; {FLAGS.budget_gib:g} '
        f'GiB at L = {root:.0f}; compiled at {longest}: {at_longest / GIB:.2f} GiB', flush=True)
  return result


def remat_rows() -> list:
  """Table 3: compiled bytes and step time per remat mode."""
  shape = cli_runs.SHAPES[FLAGS.remat_shape]
  rows = []
  for remat in ('none', 'full', 'dots'):
    config = cli_runs.run_config(shape, remat)
    state, rng = train_lib.create_state(config, build_model(config.model))
    step, compiled = compiled_step(config, state)
    batch = _batch(config)
    state, _ = step(state, batch, rng)  # the first call: warm-up.
    seconds = []
    for _ in range(FLAGS.remat_steps):
      start = time.perf_counter()
      state, metrics = step(state, batch, rng)
      jax.block_until_ready(metrics)
      seconds.append(time.perf_counter() - start)
    row = {'remat': remat, 'compiled_bytes': compiled_bytes(compiled),
           'step_seconds': statistics.median(seconds), 'seconds': seconds,
           'load': cli_runs.load()}
    rows.append(row)
    print(f"| {remat} | {row['compiled_bytes'] / MIB:,.0f} | {row['step_seconds'] * 1000:,.0f} | "
          f"{shape.tokens_per_step / row['step_seconds']:,.0f} | {row['load'].split()[0]} |",
          flush=True)
  return rows


def main(argv):
  del argv
  if 'rss' in FLAGS.parts:
    common.require('torch')  # nanoGPT's.
    cli_runs.check_nanogpt_dir(FLAGS.nanogpt_dir)
  env = common.environment(with_torch='rss' in FLAGS.parts)
  common.print_environment(env)
  result = {'environment': env}
  if 'rss' in FLAGS.parts:
    print('| shape | ours peak RSS MiB | nanoGPT peak RSS MiB | ours / nanoGPT | load |')
    print('|---|---|---|---|---|')
    result['rss'] = rss_rows()
  if 'context' in FLAGS.parts:
    print(f'\nGPT-2 small, batch 1: the longest context in {FLAGS.budget_gib:g} GiB')
    result['context'] = context_rows()
    if 'rss' in FLAGS.parts and 'gpt2_small' in FLAGS.rss_shapes:
      at_1024 = step_bytes(cli_runs.SHAPES['gpt2_small'])
      rss = next(r['ours_mib'] for r in result['rss'] if r['shape'] == 'gpt2_small')
      result['context']['cross_check_1024'] = {'compiled_bytes': at_1024, 'rss_mib': rss}
      print(f'  cross-check at ctx 1024: compiled step {at_1024 / MIB:,.0f} MiB, the real '
            f'process peak RSS {rss:,.0f} MiB', flush=True)
  if 'remat' in FLAGS.parts:
    shape = cli_runs.SHAPES[FLAGS.remat_shape]
    print(f'\nremat at {shape.layers}x{shape.heads}x{shape.d_model}, ctx {shape.ctx}, batch '
          f'{shape.batch}')
    print('| remat | compiled step MiB | step ms | tok/s | load |')
    print('|---|---|---|---|---|')
    result['remat'] = remat_rows()
  common.write_json(result, FLAGS.output)


if __name__ == '__main__':
  # Defined here, not on import, so gpt2_small.py can import the compiled-step helpers.
  flags.DEFINE_string('nanogpt_dir', '/tmp/nanogpt', "nanoGPT's files (cli_runs.py).")
  common.define_choice_list('parts', ['rss', 'context', 'remat'], ['rss', 'context', 'remat'],
                            'Which tables.')
  common.define_choice_list('rss_shapes', ['4x4x128', '6x6x384', 'gpt2_small'], cli_runs.SHAPES,
                            'Table 1 shapes.')
  flags.DEFINE_float('budget_gib', 16.0, 'Table 2: the memory budget in GiB.')
  common.require_above_zero('budget_gib')
  common.define_int_list('fit_lengths', ['1024', '2048', '4096'],
                         'Table 2: contexts compiled for the fit a + bL + cL^2 (3 or more).',
                         min_length=3)
  flags.DEFINE_enum('remat_shape', '6x6x384', list(cli_runs.SHAPES), 'Table 3: the shape.')
  flags.DEFINE_integer('remat_steps', 3, 'Table 3: timed steps per remat mode.', lower_bound=1)
  flags.DEFINE_string('output', 'benchmarks/results/memory.json', 'JSON results.')
  common.check_output()
  common.run(main)
