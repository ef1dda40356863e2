"""The training loop's overhead: the real loop against the bare step, in one run.

Sets up a real run of an experiment config (`trainer.setup`, as
`--mode=train` does: the datasets and their reader threads, the strategy, the
state) in a temporary workdir, with evaluation and periodic checkpoints moved
out of the way (`eval_every` and `checkpoint_every` past the end, one eval
batch), then alternates, round after round (rotating who goes first):

- loop: `trainer._loop` for `--steps_per_round` more steps: the data pipeline,
  metrics kept on device and fetched at log records, the records written to
  stdout, TensorBoard and metrics.jsonl. Its tokens/s is the one the loop
  itself writes to metrics.jsonl (the number a researcher reads; it leaves out
  each call's first step, the end-of-call eval batch and checkpoint, as it
  leaves out compilation, evaluation and saving in a real run);
- bare: the same config's `train_step`, placed by the same strategy
  (as benchmarks/train_throughput.py's `Ours`), on one fixed batch drawn from
  the pipeline, `--steps_per_round` steps
  timed end to end.

The median round counts; loop / bare is the loop's share of the bare step's
speed (the issue asks for at least 95% at the default experiment's shape).

  python benchmarks/train_loop.py                          # the default experiment
  python benchmarks/train_loop.py --rounds=3 --steps_per_round=100
  python benchmarks/train_loop.py --config.data.num_threads=0
"""

import os

# pylint: disable=g-import-not-at-top,wrong-import-position
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common
from transformer_jax import configs
from transformer_jax import parallel
from transformer_jax import train as train_lib
from transformer_jax import trainer
from transformer_jax.models import accounting

config_flags.DEFINE_config_file('config', configs.config_file('shakespeare_char'),
                                'Experiment config (the default experiment unless given).')
flags.DEFINE_integer('rounds', 5, 'Interleaved rounds; the median counts.', lower_bound=1)
flags.DEFINE_integer('steps_per_round', 200, 'Steps of the loop and of the bare step per round '
                     '(a multiple of config.log_every keeps the records whole).', lower_bound=1)
flags.DEFINE_integer('warmup', 5, 'Untimed bare steps after compiling.', lower_bound=0)
flags.DEFINE_bool('quiet', True, "Hide the loop's own progress lines.")
flags.DEFINE_string('output', 'benchmarks/results/train_loop.json', 'JSON results file.')
common.check_output()
FLAGS = flags.FLAGS


def loop_config(config):
  """`config` with evaluation and periodic checkpoints moved out of the timed steps."""
  c = config.copy_and_resolve_references()
  far = 10**9
  c.update(eval_every=far, checkpoint_every=far, eval_steps=1, num_samples=0)
  return c


def records(workdir: str, after: int) -> list:
  """The train records of metrics.jsonl past step `after`."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if r['split'] == 'train' and r['step'] > after]


def loop_round(run, steps: int, tokens_per_step: int) -> dict:
  """Runs the loop `steps` further; its own tokens/s over them (from metrics.jsonl)."""
  start_step = run.step
  run.config.total_steps = start_step + steps
  out = io.StringIO()
  begin = time.perf_counter()
  with contextlib.redirect_stdout(out) if FLAGS.quiet else contextlib.nullcontext():
    trainer._loop(run)  # pylint: disable=protected-access
  wall = time.perf_counter() - begin
  tokens = seconds = waited = 0.0
  previous = start_step + 1  # the loop leaves each call's first step out of its clock.
  for r in records(run.workdir, start_step):
    interval_tokens = (r['step'] - previous) * tokens_per_step
    interval_seconds = interval_tokens / r['tokens_per_sec']
    tokens, seconds = tokens + interval_tokens, seconds + interval_seconds
    waited += r['data_wait_fraction'] * interval_seconds
    previous = r['step']
  return {'tokens_per_sec': tokens / seconds, 'data_wait_fraction': waited / seconds,
          'call_seconds': wall}


class Bare:
  """The config's train_step placed by its strategy, on one fixed host batch,
  with its own state: benchmarks/train_throughput.py's `Ours`."""

  def __init__(self, config, batch):
    self.strategy = parallel.create(config, *train_lib.make_steps(config))
    self.state, self.rng = train_lib.create_state(config, trainer.build_model(config.model),
                                                  self.strategy)
    self.batch, self.metrics = batch, None

  def step(self):
    self.state, self.metrics = self.strategy.train_step(
        self.state, self.strategy.put_batch(self.batch), self.rng)

  def sync(self):
    jax.block_until_ready((self.state, self.metrics))


def bare_round(ours, steps: int, tokens_per_step: int) -> float:
  start = time.perf_counter()
  for _ in range(steps):
    ours.step()
  ours.sync()
  return steps * tokens_per_step / (time.perf_counter() - start)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax's INFO lines at every save.
  config = loop_config(FLAGS.config)
  tokens_per_step = config.batch_size * config.seq_len
  with tempfile.TemporaryDirectory() as workdir:
    run = trainer.setup(config, workdir)
    with run:
      batch = {k: v.copy() for k, v in next(run.datasets.train).items()}
      ours = Bare(run.config, batch)
      ours.step()  # compiles
      for _ in range(FLAGS.warmup):
        ours.step()
      ours.sync()
      loop_round(run, 2, tokens_per_step)  # compiles the loop's step, eval step and saving.
      loops, bares = [], []
      for r in range(FLAGS.rounds):
        order = ('loop', 'bare') if r % 2 == 0 else ('bare', 'loop')
        for who in order:
          if who == 'loop':
            loops.append(loop_round(run, FLAGS.steps_per_round, tokens_per_step))
          else:
            bares.append(bare_round(ours, FLAGS.steps_per_round, tokens_per_step))
        ratio = loops[-1]['tokens_per_sec'] / bares[-1]
        print(f"round {r}: loop {loops[-1]['tokens_per_sec']:,.0f} tok/s (data wait "
              f"{100 * loops[-1]['data_wait_fraction']:.1f}%), bare {bares[-1]:,.0f} tok/s, "
              f'{ratio:.3f}', flush=True)
  ratios = [l['tokens_per_sec'] / b for l, b in zip(loops, bares)]
  loop_tps = statistics.median(l['tokens_per_sec'] for l in loops)
  bare_tps = statistics.median(bares)
  flops = accounting.flops_per_token(config.model, config.seq_len)
  m = config.model
  row = {'shape': f'{m.num_layers} x {m.num_heads} x {m.d_model}', 'seq_len': config.seq_len,
         'batch_size': config.batch_size, 'parallelism': config.parallelism,
         'data_threads': config.data.num_threads, 'steps_per_round': FLAGS.steps_per_round,
         'loop_tokens_per_sec': loop_tps, 'bare_tokens_per_sec': bare_tps,
         'ratio_median': statistics.median(ratios), 'ratios': ratios, 'loops': loops,
         'bares': bares, 'flops_per_token': flops}
  result = {**common.environment(), 'rows': [row]}
  common.print_environment(result)
  print(HEADER)
  print(markdown_row(row))
  if FLAGS.output:
    common.write_json(result, FLAGS.output)


HEADER = ('| shape | batch x ctx | data threads | loop tok/s (metrics.jsonl) | bare step tok/s | '
          'loop / bare (median of rounds) | rounds\' ratios |\n|---|---|---|---|---|---|---|')


def markdown_row(row: dict) -> str:
  ratios = ', '.join(f'{r:.3f}' for r in row['ratios'])
  return (f"| {row['shape']} | {row['batch_size']}x{row['seq_len']} | {row['data_threads']} | "
          f"{row['loop_tokens_per_sec']:,.0f} | {row['bare_tokens_per_sec']:,.0f} | "
          f"**{row['ratio_median']:.3f}** | {ratios} |")


if __name__ == '__main__':
  common.run(main)
