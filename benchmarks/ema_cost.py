"""What the parameters' EMA (config.ema_decay) costs per train step, measured in one run.

For each workload of train_throughput.py, two contenders: the project's own
`train_step` placed by its strategy (train_throughput.Ours, as `--mode=train`
runs it) without an EMA, and the same with config.ema_decay=0.999 (one more
read and write of a parameter-sized array per step: train.EmaTrainState). They
run interleaved on one fixed synthetic batch (train_throughput.interleaved_seconds:
each round runs both in turn, rotating who goes first). The ratio reported is the
median over rounds of (step time with the EMA / step time without) in that round,
so that load from other work, which drifts between rounds, cancels; the ratio of
the two median step times is kept beside it. The EMA's update alone (jitted, on the
workload's parameters, its buffers donated as in the step) is timed too: what the
ratio should be, 1 + its time over the step's, without the noise of a whole step.

  python benchmarks/ema_cost.py                               # nanogpt_cpu and gpt_6x384
  python benchmarks/ema_cost.py --workloads=nanogpt_cpu --rounds=5

Prints one markdown row per workload and writes them to --output (JSON).
"""

import os

# pylint: disable=g-import-not-at-top,wrong-import-position
import statistics
import sys
import time

from absl import flags
import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common
from benchmarks import train_throughput as tt  # its flags: --workloads, --rounds, ...
from transformer_jax import config as config_lib
from transformer_jax.models import accounting

flags.DEFINE_float('ema_decay', 0.999, 'config.ema_decay of the contender with an EMA.')
flags.register_validator('ema_decay', lambda d: 0 < d < 1, 'must lie strictly between 0 and 1.')
flags.FLAGS.set_default('workloads', ['nanogpt_cpu', 'gpt_6x384'])
flags.FLAGS.set_default('output', 'benchmarks/results/ema_cost.json')
FLAGS = flags.FLAGS


def run_workload(name: str, on_cpu: bool) -> dict:
  config = tt.workload_config(name, on_cpu)
  if FLAGS.batch_size:
    config.batch_size = FLAGS.batch_size
  if FLAGS.dtype:
    config.model.dtype = FLAGS.dtype
  elif not on_cpu:
    config.model.dtype = 'bfloat16'
  if FLAGS.parallelism:
    config.parallelism = FLAGS.parallelism
  with_ema = config.copy_and_resolve_references()
  with_ema.ema_decay = FLAGS.ema_decay
  for c in (config, with_ema):
    config_lib.validate(c)
  batch = tt.synthetic_batch(config)
  contenders = []
  for label, c in (('no_ema', config), ('ema', with_ema)):
    contender = tt.Ours(c, batch)
    contender.name = label
    contender.step()  # compiles.
    contenders.append(contender)
  times = tt.interleaved_seconds(contenders, FLAGS.rounds, FLAGS.steps_per_round, FLAGS.warmup)
  seconds = {c.name: statistics.median(times[c.name]) for c in contenders}
  state = contenders[1].state
  return {'workload': name, 'batch_size': config.batch_size, 'seq_len': config.seq_len,
          'parameters': accounting.count_params(config.model), 'ema_decay': FLAGS.ema_decay,
          'parallelism': config.parallelism, 'dtype': config.model.dtype,
          'step_seconds': seconds, 'rounds': times,
          'ratio_ema_over_no_ema': statistics.median(
              e / n for e, n in zip(times['ema'], times['no_ema'])),
          'ratio_of_medians': seconds['ema'] / seconds['no_ema'],
          'ema_update_seconds': ema_update_seconds(state.ema_tx, state.params, state.ema),
          # EMA on or off, the parameters follow the same updates: the same loss.
          'final_loss': {c.name: c.loss() for c in contenders}}


def ema_update_seconds(ema_tx, params, ema, repeats: int = 50) -> float:
  """Median seconds of the EMA's update alone, jitted with `ema` donated."""
  update = jax.jit(lambda p, e: ema_tx.update(p, e)[1], donate_argnums=(1,))
  ema = jax.block_until_ready(update(params, ema))  # compiles.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    ema = jax.block_until_ready(update(params, ema))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def markdown_row(row: dict) -> str:
  s = row['step_seconds']
  return (f"| {row['workload']} | {row['parameters']:,} | {row['batch_size']}x{row['seq_len']} | "
          f"{1e3 * s['no_ema']:.2f} | {1e3 * s['ema']:.2f} | "
          f"**{row['ratio_ema_over_no_ema']:.3f}x** | {row['ratio_of_medians']:.3f}x | "
          f"{1e3 * row['ema_update_seconds']:.3f} "
          f"({row['ema_update_seconds'] / s['no_ema']:.2%}) |")


HEADER = ('| workload | parameters | batch x ctx | step ms, no EMA | step ms, EMA | '
          'EMA / no EMA (median of rounds) | ratio of medians | EMA update alone, ms '
          '(of the step) |\n|---|---|---|---|---|---|---|---|')


def main(argv):
  del argv
  on_cpu = jax.devices()[0].platform == 'cpu'
  rows = []
  for name in FLAGS.workloads:
    rows.append(run_workload(name, on_cpu))
    print(markdown_row(rows[-1]), flush=True)
  result = {**common.environment(), 'rows': rows}
  common.print_environment(result)
  print(HEADER)
  for row in rows:
    print(markdown_row(row))
  if FLAGS.output:
    common.write_json(result, FLAGS.output)


if __name__ == '__main__':
  common.run(main)
