"""Training speed through the two CLIs: ours against nanoGPT's own `train.py`.

Each contender runs as a researcher runs it, a fresh process per run: nanoGPT's
`train.py` (its README's CPU command: float32 eager PyTorch, `--compile=False`,
a line every iteration, one eval batch at iter 0 only) and
`python -m transformer_jax.main --config=shakespeare_char:nanogpt` (nanoGPT's recipe,
the same shape and batch, a train record every `--log_every` steps, one eval
batch at the end). Tokens/s in steady state, from each one's own log:

- nanoGPT: batch * ctx / (its printed `time X ms`), the median over iterations
  after the first `--skip_iters` (iter 0 holds its eval and PyTorch's warm-up);
- ours: the `tokens_per_sec` of each train record in metrics.jsonl (the first
  step, which compiles, is never timed), the median over records after the first.

Rounds are interleaved (A B, B A, A B, ...; with a third contender A B C, B C A,
C A B) so load from other work hits all alike; reported: the median over rounds of each run's median, the range of
those, and the ratio of medians. The load average is recorded before each run.

  python benchmarks/cli_vs_nanogpt.py --nanogpt_dir=/tmp/nanogpt   # about 5 minutes on 2 cores
  python benchmarks/cli_vs_nanogpt.py --cpu_devices=2   # and ours over 2 CPU devices
  # One NVIDIA GPU, both in bfloat16, nanoGPT compiled:
  python benchmarks/cli_vs_nanogpt.py --device=cuda --shapes=gpt2_small_gpu --steps=30 --log_every=10

On a GPU (`--device=cuda`) each CLI runs as a GPU user runs it (cli_runs.GPU_FLAGS):
nanoGPT's `train.py` with `--compile=True --dtype=bfloat16`, ours in bfloat16 with
cuDNN's flash attention; MFU divides models/accounting.py's FLOPs per token (the same
count for both) by `--roof_tflops` (benchmarks/peak.py's measured bf16 matmul rate).

nanoGPT's files and data: see benchmarks/cli_runs.py.
"""

import os

# PyTorch's OpenMP workers spin while idle; on a shared machine that starves them
# (train_throughput.py measured 2.8 s instead of 0.15 s a step), so both children
# wait passively unless the caller set a policy.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

# pylint: disable=g-import-not-at-top,wrong-import-position
import dataclasses
import shutil
import statistics
import sys
import tempfile

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import cli_runs
from benchmarks import common
from transformer_jax.models import accounting

flags.DEFINE_string('nanogpt_dir', '/tmp/nanogpt', "nanoGPT's train.py, model.py, "
                    'configurator.py, config/ and data/shakespeare_char/ (cli_runs.py).')
common.define_choice_list('shapes', ['4x4x128', '6x6x384'], cli_runs.SHAPES, 'Shapes.')
flags.DEFINE_integer('rounds', 3, 'Interleaved rounds (one run of each contender per round).',
                     lower_bound=1)
common.define_int_list('steps', ['60', '12'], 'Steps (iterations) per run, one per shape.')
common.define_int_list('log_every', ['10', '3'], 'Our train-record interval, one per shape.')
flags.DEFINE_integer('skip_iters', 5, "nanoGPT's first iterations left untimed.", lower_bound=0)
flags.DEFINE_enum('device', 'cpu', ['cpu', 'cuda'], 'Where both CLIs train.')
flags.DEFINE_float('roof_tflops', 0.0, 'Measured matmul roof (peak.py) for the MFU column; '
                   '0 = no MFU.', lower_bound=0.0)
flags.DEFINE_integer('cpu_devices', 0, 'With N > 1, a third contender: ours with '
                     'JAX_NUM_CPU_DEVICES=N, data-parallel (pmap) over N devices of this CPU; '
                     'N must divide each shape\'s batch (12 for the CPU shapes). 0 = none.',
                     lower_bound=0)
flags.DEFINE_string('output', 'benchmarks/results/cli_vs_nanogpt.json', 'JSON results.')
common.check_output()
FLAGS = flags.FLAGS


def _ours(shape, steps, log_every, cpu_devices: int = 0) -> dict:
  workdir = tempfile.mkdtemp(prefix='ours_')
  try:
    load = cli_runs.load()
    extra = cli_runs.GPU_FLAGS['ours'] if FLAGS.device == 'cuda' else ()
    env = {'JAX_NUM_CPU_DEVICES': str(cpu_devices)} if cpu_devices else None
    result = cli_runs.run(cli_runs.ours_command(shape, workdir, steps, log_every, extra),
                          cwd=cli_runs.REPO, env=env)
    rates = cli_runs.ours_tokens_per_sec(workdir)[1:]
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  if not rates:  # main checked that the flags leave one: the run itself fell short.
    raise RuntimeError(f'Ours wrote no timed train record; its output ended:\n{result.tail()}')
  return {'tokens_per_sec': statistics.median(rates), 'records': rates, 'load': load,
          'wall_s': result.seconds}


def _nanogpt(shape, steps) -> dict:
  work = cli_runs.nanogpt_workspace(FLAGS.nanogpt_dir, shape)
  try:
    load = cli_runs.load()
    extra = cli_runs.GPU_FLAGS['nanogpt'] if FLAGS.device == 'cuda' else ()
    result = cli_runs.run(cli_runs.nanogpt_command(shape, steps, extra), cwd=work)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  ms = cli_runs.nanogpt_iter_ms(result)[FLAGS.skip_iters:]
  if not ms:  # main checked that the flags leave one: the run itself fell short.
    raise RuntimeError(f'nanoGPT printed no timed iteration; its output ended:\n{result.tail()}')
  return {'tokens_per_sec': shape.tokens_per_step / (statistics.median(ms) / 1000),
          'iter_ms': ms, 'load': load, 'wall_s': result.seconds}


def _summary(runs) -> dict:
  rates = [r['tokens_per_sec'] for r in runs]
  return {'median': statistics.median(rates), 'min': min(rates), 'max': max(rates),
          'runs': runs}


def main(argv):
  del argv
  if not len(FLAGS.steps) == len(FLAGS.log_every) == len(FLAGS.shapes):
    sys.exit('--steps and --log_every need one value per --shapes entry.')
  for steps, log_every in zip(FLAGS.steps, FLAGS.log_every):
    if int(steps) < 2 * int(log_every):  # the first record holds the compile: untimed.
      sys.exit(f'--steps={steps} with --log_every={log_every} leaves no timed record of '
               'ours; give at least 2 x --log_every steps.')
    if int(steps) <= FLAGS.skip_iters:
      sys.exit(f'--steps={steps} leaves no nanoGPT iteration after --skip_iters='
               f'{FLAGS.skip_iters}; give more steps or skip fewer.')
  if FLAGS.cpu_devices == 1 or (FLAGS.cpu_devices and FLAGS.device == 'cuda'):
    sys.exit(f'--cpu_devices={FLAGS.cpu_devices}: the third contender splits the CPU into 2 '
             'or more devices, on --device=cpu only; give 0 for none.')
  common.require('torch')  # nanoGPT's.
  if FLAGS.device == 'cuda':
    import torch  # pylint: disable=g-import-not-at-top
    if not torch.cuda.is_available():
      sys.exit('--device=cuda needs an NVIDIA GPU that PyTorch sees, and this machine has '
               'none; leave --device out to compare the CLIs on the CPU.')
  cli_runs.check_nanogpt_dir(FLAGS.nanogpt_dir)
  for name in FLAGS.shapes:
    if FLAGS.cpu_devices > 1 and cli_runs.SHAPES[name].batch % FLAGS.cpu_devices:
      sys.exit(f'--cpu_devices={FLAGS.cpu_devices} does not divide {name}\'s batch of '
               f'{cli_runs.SHAPES[name].batch}; give a divisor of it.')
  devices = f'ours_{FLAGS.cpu_devices}_cpu_devices'
  names = ['ours', 'nanogpt'] + ([devices] if FLAGS.cpu_devices > 1 else [])
  rows = []
  header = ['shape (layers x heads x d_model, ctx, batch)', 'ours tok/s', 'nanoGPT tok/s',
            'ours / nanoGPT']
  if FLAGS.cpu_devices > 1:
    header += [f'ours, {FLAGS.cpu_devices} CPU devices, tok/s', 'it / nanoGPT']
  print('| ' + ' | '.join(header + ['load before (1 min)']) + ' |')
  print('|' + '---|' * (len(header) + 1))
  for name, steps, log_every in zip(FLAGS.shapes, FLAGS.steps, FLAGS.log_every):
    shape, steps, log_every = cli_runs.SHAPES[name], int(steps), int(log_every)
    runs = {who: [] for who in names}
    for i in range(FLAGS.rounds):  # each round in another order: A B C, B C A, C A B, ...
      for who in names[i % len(names):] + names[:i % len(names)]:
        if who == 'nanogpt':
          runs[who].append(_nanogpt(shape, steps))
        else:
          runs[who].append(_ours(shape, steps, log_every,
                                 FLAGS.cpu_devices if who == devices else 0))
        print(f'  {name} round {i + 1} {who}: {runs[who][-1]["tokens_per_sec"]:,.0f} tok/s '
              f'(load {runs[who][-1]["load"]})', flush=True)
    row = {'shape': name, **dataclasses.asdict(shape), 'steps': steps, 'log_every': log_every,
           **{who: _summary(r) for who, r in runs.items()}}
    row['ratio'] = row['ours']['median'] / row['nanogpt']['median']
    if FLAGS.cpu_devices > 1:
      row['cpu_devices'] = FLAGS.cpu_devices
      row['ratio_' + devices] = row[devices]['median'] / row['nanogpt']['median']
    if FLAGS.roof_tflops:
      row['flops_per_token'] = accounting.flops_per_token(cli_runs.run_config(shape).model,
                                                          shape.ctx)
      for who in names:
        row[who]['mfu'] = row['flops_per_token'] * row[who]['median'] / (
            FLAGS.roof_tflops * 1e12)
      print(f"  {name} MFU of {FLAGS.roof_tflops:.3g} TFLOP/s: " +
            ', '.join(f"{who} {row[who]['mfu']:.1%}" for who in names), flush=True)
    rows.append(row)
    rate = lambda who: (f"{row[who]['median']:,.0f} ({row[who]['min']:,.0f}-"
                        f"{row[who]['max']:,.0f})")
    cells = [f'{shape.layers}x{shape.heads}x{shape.d_model}, {shape.ctx}, {shape.batch}',
             rate('ours'), rate('nanogpt'), f"{row['ratio']:.2f}"]
    if FLAGS.cpu_devices > 1:
      cells += [rate(devices), f"{row['ratio_' + devices]:.2f}"]
    loads = sorted(float(r['load'].split()[0]) for who in names for r in runs[who])
    print('| ' + ' | '.join(cells + [f'{loads[0]:.1f}-{loads[-1]:.1f}']) + ' |', flush=True)
  # Only now: JAX in this process would hold GPU memory that the runs need.
  env = common.environment(with_torch=True)
  env['omp_wait_policy'] = os.environ['OMP_WAIT_POLICY']
  common.print_environment(env)
  common.write_json({'environment': env, 'rows': rows}, FLAGS.output)


if __name__ == '__main__':
  common.run(main)
