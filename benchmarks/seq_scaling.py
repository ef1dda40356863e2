"""Training step time, memory and decoding time of each attention kind as the sequence grows.

For each kind in `--attention` (full, local, linear; `config.model.attention`)
and each length in `--lengths` (ascending) this builds the project's own
`train_step` (train.make_steps) for the default experiment's run config at
the shape the flags name, jits it for one device and compiles it once, on a
synthetic batch of that length, and reports the median step time over
`--steps` timed steps, tokens/s, MFU against the roof measured by peak.py at
the start of the run, and memory. The batch is fixed at `--batch_size` rows,
so tokens per step grow with the length: full attention's O(L^2) share shows
in the FLOPs per token, local and linear attention stay O(L).

Memory, two measures: the compiled step's own bytes (XLA's memory analysis:
arguments + outputs + temporaries, less what is donated; known before the step
runs, exact per length) and the high-water mark since the process started (the
device's `peak_bytes_in_use` on GPU, the process's max RSS on CPU). A kind stops
growing at the first length whose compiled step needs more than
`--memory_limit_gb`, or whose step took more than `--time_limit` seconds
(rows 'over memory' / 'over time'), or that ran out of memory ('OOM').

Then cached greedy decoding (`decode.sample`, batch 1, a 1-token prompt) of
each length in `--decode_lengths`: milliseconds per generated token, timed
after a compiling call. Full attention's cache is as long as the output, so a
token costs O(length); local's ring cache holds the window and linear's state
is a fixed size, so theirs stay flat. Last, for each kind, the log-log slope of
step time, step memory and decoding time per token against the length (least
squares over the lengths >= `--slope_from`), and the first length at which
each kind beats full attention in time and in memory.

  python benchmarks/seq_scaling.py                                  # CPU: 256..16384, batch 1
  python benchmarks/seq_scaling.py --attention=full --lengths=64,128,256,512,1024 \
      --batch_size=12 --decode_lengths=                             # the full kind alone
  python benchmarks/seq_scaling.py --workload=gpt2_small --attention_impl=cudnn \
      --attention=full --remat=dots                                 # GPU

Model-shape flags (--workload, --num_layers, --num_heads, --d_model, --vocab_size,
--max_len) are decode_speed.py's. Prints markdown tables and writes the rows
to --output (JSON).
"""

import math
import os
import resource
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common
from benchmarks import decode_speed
from benchmarks import peak as peak_lib
from transformer_jax import config as config_lib
from transformer_jax import decode
from transformer_jax import train as train_lib
from transformer_jax.models import accounting
from transformer_jax.models.transformer import build_model

decode_speed.define_model_flags()
common.define_int_list('lengths', [], 'Sequence lengths, ascending ([] = 256..16384 on CPU, '
                       '512..32768 on an accelerator).', min_length=0)
common.define_choice_list('attention', list(config_lib.ATTENTIONS), config_lib.ATTENTIONS,
                          'config.model.attention kinds.')
flags.DEFINE_integer('attention_window', 128, 'config.model.attention_window (local).',
                     lower_bound=1)
flags.DEFINE_integer('num_random_features', 128, 'config.model.num_random_features (linear).',
                     lower_bound=1)
flags.DEFINE_integer('num_kv_heads', 0, 'config.model.num_kv_heads (0 = num_heads).',
                     lower_bound=0)
common.define_int_list('decode_lengths', ['256', '1024', '4096', '16384'],
                       'Generated lengths for the decoding rows ([] = none).', min_length=0)
flags.DEFINE_integer('batch_size', 1, 'Rows per step at every length.', lower_bound=1)
flags.DEFINE_integer('tokens_per_batch', 0, 'If set, rows = tokens_per_batch / length instead.',
                     lower_bound=0)
flags.DEFINE_enum('remat', 'none', config_lib.REMATS, 'config.model.remat.')
flags.DEFINE_string('dtype', '', "config.model.dtype; '' = float32 on CPU, bfloat16 elsewhere.")
flags.DEFINE_enum('attention_impl', 'xla', config_lib.ATTENTION_IMPLS,
                  'config.model.attention_impl.')
flags.DEFINE_integer('steps', 3, 'Timed steps per length; the median counts.', lower_bound=1)
flags.DEFINE_float('memory_limit_gb', 8.0, 'A kind stops before a step whose compiled bytes '
                   'exceed this.')
flags.DEFINE_float('time_limit', 30.0, 'A kind stops after a length whose step took longer.')
flags.DEFINE_integer('slope_from', 2048, 'The slopes fit the lengths from this one on.')
flags.DEFINE_integer('warmup', 1, 'Untimed steps per length after the compiling one.',
                     lower_bound=0)
flags.DEFINE_integer('peak_size', 0, 'Matrix side for the roof (0 = peak.py default).',
                     lower_bound=0)
flags.DEFINE_string('output', 'benchmarks/results/seq_scaling.json', 'JSON results file.')
common.require_above_zero('memory_limit_gb', 'time_limit')
common.check_output()
FLAGS = flags.FLAGS

CPU_LENGTHS = (256, 512, 1024, 2048, 4096, 8192, 16384)
ACCELERATOR_LENGTHS = (512, 1024, 2048, 4096, 8192, 16384, 32768)


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


def compiled_bytes(compiled) -> int:
  """Bytes the compiled step holds at once: arguments + outputs + temporaries - donated."""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def run_length(base, length: int, roof: float) -> dict:
  """One row: the step at `length`; or why it did not run ('over memory', 'OOM')."""
  config = base.copy_and_resolve_references()
  config.seq_len = length
  config.batch_size = max(1, FLAGS.tokens_per_batch // length) if FLAGS.tokens_per_batch else (
      FLAGS.batch_size)
  config_lib.validate(config)
  row = {'attention': config.model.attention, 'length': length,
         'batch_size': config.batch_size, 'oom': False, 'stopped': ''}
  model = build_model(config.model)
  try:
    state, rng = train_lib.create_state(config, model)
    inputs = np.random.default_rng(0).integers(1, config.model.vocab_size,
                                               (config.batch_size, length), dtype=np.int32)
    batch = {'inputs': inputs, 'targets': np.roll(inputs, -1, axis=1),
             'weights': np.ones(inputs.shape, np.float32)}
    step = jax.jit(train_lib.make_steps(config)[0], donate_argnums=0)
    start = time.perf_counter()
    compiled = step.lower(state, batch, rng).compile()
    row['compile_seconds'] = time.perf_counter() - start
    row['step_bytes'] = compiled_bytes(compiled)
    if row['step_bytes'] > FLAGS.memory_limit_gb * 2**30:
      return {**row, 'stopped': 'over memory'}
    seconds = []
    for i in range(FLAGS.warmup + FLAGS.steps):
      start = time.perf_counter()
      state, metrics = compiled(state, batch, rng)
      jax.block_until_ready((state, metrics))
      if i >= FLAGS.warmup:
        seconds.append(time.perf_counter() - start)
  except (jax.errors.JaxRuntimeError, MemoryError) as e:
    if not is_oom(e):
      raise
    return {**row, 'oom': True, 'stopped': 'OOM', 'error': str(e).splitlines()[0]}
  tokens = config.batch_size * length
  flops = accounting.flops_per_token(config.model, length)
  median = statistics.median(seconds)
  memory, memory_kind = peak_memory()
  return {**row, 'step_seconds': median, 'steps': seconds, 'tokens_per_sec': tokens / median,
          'flops_per_token': flops, 'mfu': flops * tokens / median / (roof * jax.device_count()),
          'peak_memory_bytes': memory, 'peak_memory_kind': memory_kind,
          'stopped': 'over time' if median > FLAGS.time_limit else ''}


def decode_row(base, length: int) -> dict:
  """Milliseconds per token of cached greedy decoding of `length` tokens, batch 1."""
  config = base.copy_and_resolve_references()
  model = build_model(config.model)
  prompt = jnp.ones((1, 1), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), prompt)['params']
  run = lambda: jax.block_until_ready(decode.sample(model, params, prompt, length))
  start = time.perf_counter()
  run()  # compiles, then decodes.
  first = time.perf_counter() - start
  start = time.perf_counter()
  run()
  seconds = time.perf_counter() - start
  return {'attention': config.model.attention, 'length': length, 'seconds': seconds,
          'first_call_seconds': first, 'ms_per_token': 1e3 * seconds / (length - 1)}


def slope(rows, key: str, x_key: str = 'length') -> float:
  """Least-squares slope of log(key) against log(length) over lengths >= --slope_from."""
  points = [(math.log(r[x_key]), math.log(r[key])) for r in rows
            if r.get(key) and r[x_key] >= FLAGS.slope_from]
  if len(points) < 2:
    return float('nan')
  mx = sum(x for x, _ in points) / len(points)
  my = sum(y for _, y in points) / len(points)
  return (sum((x - mx) * (y - my) for x, y in points) /
          sum((x - mx)**2 for x, _ in points))


def crossover(rows, full_rows, key: str):
  """First length where this kind's `key` is below full attention's, or where full stopped."""
  if not full_rows:
    return 'n/a (full not run)'
  full = {r['length']: r for r in full_rows}
  for r in rows:
    other = full.get(r['length'])
    if other is None or other['stopped'] in ('over memory', 'OOM'):
      return f"<= {r['length']} (full stopped)" if r.get(key) else '-'
    if r.get(key) and other.get(key) and r[key] < other[key]:
      return str(r['length'])
  return 'not reached'


HEADER = ('| attention | length | batch | step ms | tokens/s | MFU | step memory (GiB) | '
          'peak memory (GiB) |\n|---|---|---|---|---|---|---|---|')
DECODE_HEADER = '| attention | generated tokens | ms / token |\n|---|---|---|'
SLOPE_HEADER = ('| attention | slope: step time | slope: step memory | slope: decode ms/token | '
                'faster than full from | smaller than full from |\n|---|---|---|---|---|---|')


def markdown_row(row: dict) -> str:
  head = f"| {row['attention']} | {row['length']} | {row['batch_size']} |"
  if 'step_seconds' not in row:
    memory = f"{row['step_bytes'] / 2**30:.2f}" if 'step_bytes' in row else ''
    return f"{head} {row['stopped']} at length {row['length']} | | | {memory} | |"
  return (f"{head} {1e3 * row['step_seconds']:,.1f} | {row['tokens_per_sec']:,.0f} | "
          f"{100 * row['mfu']:.1f}% | {row['step_bytes'] / 2**30:.3f} | "
          f"{row['peak_memory_bytes'] / 2**30:.2f} |")


def decode_markdown_row(row: dict) -> str:
  return f"| {row['attention']} | {row['length']} | {row['ms_per_token']:.3f} |"


def summary(result: dict) -> list:
  """Per kind: the slopes, and where it overtakes full attention."""
  rows = []
  full_rows = [r for r in result['rows'] if r['attention'] == 'full']
  for kind in dict.fromkeys(r['attention'] for r in result['rows']):
    mine = [r for r in result['rows'] if r['attention'] == kind]
    decoding = [r for r in result['decode_rows'] if r['attention'] == kind]
    rows.append({'attention': kind, 'step_seconds_slope': slope(mine, 'step_seconds'),
                 'step_bytes_slope': slope(mine, 'step_bytes'),
                 'decode_ms_slope': slope(decoding, 'ms_per_token'),
                 'faster_from': '-' if kind == 'full' else crossover(mine, full_rows,
                                                                     'step_seconds'),
                 'smaller_from': '-' if kind == 'full' else crossover(mine, full_rows,
                                                                      'step_bytes')})
  return rows


def summary_markdown_row(row: dict) -> str:
  return (f"| {row['attention']} | {row['step_seconds_slope']:.2f} | "
          f"{row['step_bytes_slope']:.2f} | {row['decode_ms_slope']:.2f} | "
          f"{row['faster_from']} | {row['smaller_from']} |")


def main(argv):
  del argv
  on_cpu = jax.default_backend() == 'cpu'
  lengths = [int(n) for n in FLAGS.lengths] or list(CPU_LENGTHS if on_cpu else ACCELERATOR_LENGTHS)
  decode_lengths = [int(n) for n in FLAGS.decode_lengths]
  if lengths != sorted(lengths):
    raise app.UsageError(f'--lengths={",".join(map(str, lengths))} must be ascending (the '
                         'memory high-water mark and the stops rely on it).')
  base = decode_speed.experiment_config(max(lengths + decode_lengths))
  base.model.update(remat=FLAGS.remat, attention_impl=FLAGS.attention_impl,
                    dtype=FLAGS.dtype or ('float32' if on_cpu else 'bfloat16'),
                    attention_window=FLAGS.attention_window,
                    num_random_features=FLAGS.num_random_features,
                    num_kv_heads=FLAGS.num_kv_heads or None)
  roof = peak_lib.measure(FLAGS.peak_size)
  cfg = base.model
  print(f"{FLAGS.workload}: {cfg.num_layers} layers, {cfg.num_heads} heads "
        f"({cfg.num_kv_heads or cfg.num_heads} key/value), d_model {cfg.d_model}, vocab "
        f"{cfg.vocab_size}, {cfg.dtype}, remat {cfg.remat}, window {cfg.attention_window}, "
        f"{cfg.num_random_features} random features; roof {roof['roof_flops'] / 1e9:.1f} "
        f"GFLOP/s ({roof['dtype']} matmul {roof['size']}^3)", flush=True)
  result = {**common.environment(), 'workload': FLAGS.workload,
            'model': {name: cfg[name] for name in (
                'num_layers', 'num_heads', 'num_kv_heads', 'd_model', 'vocab_size', 'max_len',
                'dropout_rate', 'dtype', 'remat', 'attention_impl', 'attention_window',
                'num_random_features')},
            'roof': roof, 'rows': [], 'decode_rows': []}
  for kind in FLAGS.attention:
    base.model.attention = kind
    for length in lengths:
      result['rows'].append(run_length(base, length, roof['roof_flops']))
      print(markdown_row(result['rows'][-1]), flush=True)
      if result['rows'][-1]['stopped']:
        break
    for length in decode_lengths:
      result['decode_rows'].append(decode_row(base, length))
      print(decode_markdown_row(result['decode_rows'][-1]), flush=True)
  result['summary'] = summary(result)
  common.print_environment(result)
  print(HEADER)
  for row in result['rows']:
    print(markdown_row(row))
  if result['decode_rows']:
    print('\n' + DECODE_HEADER)
    for row in result['decode_rows']:
      print(decode_markdown_row(row))
  print(f'\nlog-log slopes over lengths >= {FLAGS.slope_from}\n' + SLOPE_HEADER)
  for row in result['summary']:
    print(summary_markdown_row(row))
  ran = [r for r in result['rows'] if 'peak_memory_kind' in r]
  if ran:
    print(f"\nstep memory: XLA's memory analysis of the compiled step; peak memory: "
          f"{ran[0]['peak_memory_kind']}, a high-water mark since the process started.")
  if FLAGS.output:
    common.write_json(result, FLAGS.output)


if __name__ == '__main__':
  common.run(main)
