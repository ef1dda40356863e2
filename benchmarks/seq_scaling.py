"""Training step time of the decoder-only LM as the sequence grows.

For each length in `--lengths` (ascending) this builds the project's own
`train_step` (train.make_steps) placed by the project's strategy
(parallel.create), as `--mode=train` does and as train_throughput.py's 'ours'
does, for the default experiment's run config at the shape the flags name, on
a synthetic batch of that length, and reports the median step time
over `--steps` timed steps, tokens/s, MFU against the roof measured by peak.py
at the start of the run, and peak memory. The batch is fixed at `--batch_size`
rows, so tokens per step grow with the length and the attention's O(L^2)
share shows in the FLOPs per token; `--tokens_per_batch` fixes the tokens
instead (batch = tokens / length).

Peak memory is a high-water mark since the process started: on GPU the
device's `peak_bytes_in_use`, on CPU the process's max RSS (parameters, XLA's
buffers and Python alike). Lengths run in increasing order, so each row's mark
is that length's peak unless a shorter one needed more. A RESOURCE_EXHAUSTED /
out-of-memory error ends the run with an 'OOM at length L' row.

  python benchmarks/seq_scaling.py                              # CPU: lengths 64..1024, batch 12
  python benchmarks/seq_scaling.py --tokens_per_batch=8192 --remat=full
  python benchmarks/seq_scaling.py --workload=gpt2_small --batch_size=8 \
      --attention_impl=cudnn --remat=dots                       # GPU: lengths 128..4096, bf16

Model-shape flags (--workload, --num_layers, --num_heads, --d_model, --vocab_size,
--max_len) are decode_speed.py's. Prints a markdown table and writes the rows
to --output (JSON).
"""

import os
import resource
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common
from benchmarks import decode_speed
from benchmarks import peak as peak_lib
from transformer_jax import config as config_lib
from transformer_jax import parallel
from transformer_jax import train as train_lib
from transformer_jax.models import accounting
from transformer_jax.models.transformer import build_model

decode_speed.define_model_flags()
flags.DEFINE_list('lengths', [], 'Sequence lengths, ascending ([] = 64..1024 on CPU, '
                  '128..4096 on an accelerator).')
flags.DEFINE_integer('batch_size', 12, 'Rows per step at every length (the nanoGPT CPU recipe).')
flags.DEFINE_integer('tokens_per_batch', 0, 'If set, rows = tokens_per_batch / length instead.')
flags.DEFINE_enum('remat', 'none', config_lib.REMATS, 'config.model.remat.')
flags.DEFINE_string('dtype', '', "config.model.dtype; '' = float32 on CPU, bfloat16 elsewhere.")
flags.DEFINE_enum('attention_impl', 'xla', config_lib.ATTENTION_IMPLS,
                  'config.model.attention_impl.')
flags.DEFINE_integer('steps', 5, 'Timed steps per length; the median counts.')
flags.DEFINE_integer('warmup', 1, 'Untimed steps per length after the compiling one.')
flags.DEFINE_integer('peak_size', 0, 'Matrix side for the roof (0 = peak.py default).')
flags.DEFINE_string('output', 'benchmarks/results/seq_scaling.json', 'JSON results file.')
FLAGS = flags.FLAGS

CPU_LENGTHS = (64, 128, 256, 512, 1024)
ACCELERATOR_LENGTHS = (128, 256, 512, 1024, 2048, 4096)


def peak_memory() -> tuple[int, str]:
  """(bytes, what they measure): the device's high-water mark, else the process's."""
  stats = jax.devices()[0].memory_stats()
  if stats and 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'], 'device peak_bytes_in_use'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'process max RSS'


def is_oom(error: Exception) -> bool:
  text = str(error)
  return isinstance(error, MemoryError) or 'RESOURCE_EXHAUSTED' in text or (
      'out of memory' in text.lower())


def step_seconds(config) -> list:
  """Seconds of each timed train step on a fixed synthetic batch of `config`'s shape."""
  strategy = parallel.create(config, *train_lib.make_steps(config))
  model = build_model(config.model)
  tx = train_lib.create_optimizer(config, train_lib.learning_rate_schedule(config))
  init_rng, rng = jax.random.split(jax.random.PRNGKey(config.seed))
  state = strategy.init_state(train_lib.init_fn(config, model, tx), init_rng)
  inputs = np.random.default_rng(0).integers(1, config.model.vocab_size,
                                             (config.batch_size, config.seq_len), dtype=np.int32)
  batch = strategy.put_batch({'inputs': inputs, 'targets': np.roll(inputs, -1, axis=1),
                              'weights': np.ones(inputs.shape, np.float32)})
  seconds = []
  for step in range(1 + FLAGS.warmup + FLAGS.steps):  # the first compiles.
    start = time.perf_counter()
    state, metrics = strategy.train_step(state, batch, rng)
    jax.block_until_ready((state, metrics))
    if step > FLAGS.warmup:
      seconds.append(time.perf_counter() - start)
  return seconds


def run_length(base, length: int, roof: float) -> dict:
  """One row: the step at `length`, or {'oom': True} when memory runs out."""
  config = base.copy_and_resolve_references()
  config.seq_len = length
  config.batch_size = max(1, FLAGS.tokens_per_batch // length) if FLAGS.tokens_per_batch else (
      FLAGS.batch_size)
  config_lib.validate(config)
  row = {'length': length, 'batch_size': config.batch_size}
  try:
    seconds = step_seconds(config)
  except (jax.errors.JaxRuntimeError, MemoryError) as e:
    if not is_oom(e):
      raise
    return {**row, 'oom': True, 'error': str(e).splitlines()[0]}
  tokens = config.batch_size * length
  flops = accounting.flops_per_token(config.model, length)
  median = statistics.median(seconds)
  memory, memory_kind = peak_memory()
  return {**row, 'oom': False, 'step_seconds': median, 'steps': seconds,
          'tokens_per_sec': tokens / median, 'flops_per_token': flops,
          'mfu': flops * tokens / median / (roof * jax.device_count()),
          'peak_memory_bytes': memory, 'peak_memory_kind': memory_kind}


HEADER = ('| length | batch | step ms | tokens/s | MFU | peak memory (GiB) |\n'
          '|---|---|---|---|---|---|')


def markdown_row(row: dict) -> str:
  if row['oom']:
    return f"| {row['length']} | {row['batch_size']} | OOM at length {row['length']} | | | |"
  return (f"| {row['length']} | {row['batch_size']} | {1e3 * row['step_seconds']:,.1f} | "
          f"{row['tokens_per_sec']:,.0f} | {100 * row['mfu']:.1f}% | "
          f"{row['peak_memory_bytes'] / 2**30:.2f} |")


def main(argv):
  del argv
  on_cpu = jax.default_backend() == 'cpu'
  lengths = [int(n) for n in FLAGS.lengths] or list(CPU_LENGTHS if on_cpu else ACCELERATOR_LENGTHS)
  if lengths != sorted(lengths):
    raise app.UsageError(f'--lengths={",".join(map(str, lengths))} must be ascending (the '
                         'memory high-water mark and the OOM stop rely on it).')
  base = decode_speed.experiment_config(max(lengths))
  base.model.update(remat=FLAGS.remat, attention_impl=FLAGS.attention_impl,
                    dtype=FLAGS.dtype or ('float32' if on_cpu else 'bfloat16'))
  roof = peak_lib.measure(FLAGS.peak_size)
  cfg = base.model
  print(f"{FLAGS.workload}: {cfg.num_layers} layers, {cfg.num_heads} heads, d_model "
        f"{cfg.d_model}, vocab {cfg.vocab_size}, {cfg.dtype}, remat {cfg.remat}, attention "
        f"{cfg.attention_impl}; roof {roof['roof_flops'] / 1e9:.1f} GFLOP/s ({roof['dtype']} "
        f"matmul {roof['size']}^3)", flush=True)
  result = {**common.environment(), 'workload': FLAGS.workload,
            'model': {name: cfg[name] for name in ('num_layers', 'num_heads', 'd_model',
                                                   'vocab_size', 'max_len', 'dropout_rate',
                                                   'dtype', 'remat', 'attention_impl')},
            'parallelism': base.parallelism, 'roof': roof, 'rows': []}
  for length in lengths:
    result['rows'].append(run_length(base, length, roof['roof_flops']))
    print(markdown_row(result['rows'][-1]), flush=True)
    if result['rows'][-1]['oom']:
      break
  common.print_environment(result)
  print(HEADER)
  for row in result['rows']:
    print(markdown_row(row))
  if not result['rows'][0]['oom']:
    print(f"\npeak memory: {result['rows'][0]['peak_memory_kind']}, a high-water mark since the "
          'process started.')
  if FLAGS.output:
    common.write_json(result, FLAGS.output)


if __name__ == '__main__':
  app.run(main)
