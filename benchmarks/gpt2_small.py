"""GPT-2 small training speed and MFU: ours against nanoGPT's own model.py.

GPT-2 small (12 layers, 12 heads, d_model 768, ctx 1024, vocab 50257, no biases,
no dropout: nanoGPT's recipe, `shakespeare_char:nanogpt`, at this shape), float32,
one fixed random batch:

- ours: the project's train step (train.make_steps), jitted with the state donated;
- nanoGPT: `GPT(GPTConfig(...))` from nanoGPT's model.py and its own
  `configure_optimizers` (AdamW), one step as its train.py takes it (forward,
  backward, clip at 1.0, step, zero_grad), eager, as its README's CPU command.

The batch is the largest power of two whose compiled step (XLA's memory_analysis,
memory.py) fits `--memory_gib` (unless `--batch` is given); both run it. Rounds
interleave the two (`--steps_per_round` each, alternating who goes first) after
`--warmup` untimed steps; the median step time counts. MFU divides the model FLOPs
(models/accounting.flops_per_token, the same count for both) by the roof measured
by peak.py at the start.

  python benchmarks/gpt2_small.py --nanogpt_dir=/tmp/nanogpt      # about 5 minutes on 2 cores
"""

import os

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')  # see cli_vs_nanogpt.py.

# pylint: disable=g-import-not-at-top,wrong-import-position
import dataclasses
import statistics
import sys
import time

from absl import flags
import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import cli_runs
from benchmarks import common
from benchmarks import memory
from benchmarks import peak as peak_lib
from transformer_jax import train as train_lib
from transformer_jax.models import accounting
from transformer_jax.models.transformer import build_model

flags.DEFINE_string('nanogpt_dir', '/tmp/nanogpt', "The directory holding nanoGPT's model.py.")
flags.DEFINE_integer('batch', 0, 'Batch size; 0 = the largest power of two in --memory_gib.',
                     lower_bound=0)
flags.DEFINE_float('memory_gib', 8.0, 'Memory for the compiled step when --batch=0.')
common.require_above_zero('memory_gib')
flags.DEFINE_integer('max_batch', 64, 'The largest batch tried when --batch=0.', lower_bound=1)
flags.DEFINE_integer('rounds', 2, 'Interleaved rounds.', lower_bound=1)
flags.DEFINE_integer('steps_per_round', 1, 'Steps of each contender per round.', lower_bound=1)
flags.DEFINE_integer('warmup', 1, 'Untimed steps of each after ours compiles.', lower_bound=0)
flags.DEFINE_string('output', 'benchmarks/results/gpt2_small.json', 'JSON results.')
common.check_output()
FLAGS = flags.FLAGS


def largest_batch(shape) -> int:
  batch = 1
  while batch * 2 <= FLAGS.max_batch and memory.step_bytes(
      dataclasses.replace(shape, batch=batch * 2)) <= FLAGS.memory_gib * 2**30:
    batch *= 2
  return batch


class Ours:

  def __init__(self, shape):
    config = cli_runs.run_config(shape)
    self.state, self.rng = train_lib.create_state(config, build_model(config.model))
    self.step_fn, _ = memory.compiled_step(config, self.state)
    self.batch = memory._batch(config)  # pylint: disable=protected-access
    self.metrics = None

  def step(self):
    self.state, self.metrics = self.step_fn(self.state, self.batch, self.rng)
    jax.block_until_ready(self.metrics)


class NanoGPT:

  def __init__(self, shape):
    import torch
    sys.path.insert(0, os.path.abspath(FLAGS.nanogpt_dir))
    from model import GPT, GPTConfig  # nanoGPT's model.py.
    torch.manual_seed(0)
    self.torch = torch
    self.model = GPT(GPTConfig(block_size=shape.ctx, vocab_size=shape.vocab,
                               n_layer=shape.layers, n_head=shape.heads, n_embd=shape.d_model,
                               dropout=0.0, bias=False))
    self.optimizer = self.model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), 'cpu')
    x = torch.randint(0, shape.vocab, (shape.batch, shape.ctx + 1))
    self.x, self.y = x[:, :-1].contiguous(), x[:, 1:].contiguous()

  def step(self):
    _, loss = self.model(self.x, self.y)
    loss.backward()
    self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)


def main(argv):
  del argv
  common.require('torch')  # nanoGPT's.
  cli_runs.check_nanogpt_dir(FLAGS.nanogpt_dir)
  env = common.environment(with_torch=True)
  common.print_environment(env)
  roof = peak_lib.measure()
  print(f"roof {roof['roof_flops'] / 1e9:.1f} GFLOP/s (peak.py)", flush=True)
  shape = cli_runs.SHAPES['gpt2_small']
  shape = dataclasses.replace(shape, batch=FLAGS.batch or largest_batch(shape))
  print(f'batch {shape.batch}', flush=True)
  contenders = {'ours': Ours(shape), 'nanogpt': NanoGPT(shape)}
  for c in contenders.values():
    for _ in range(FLAGS.warmup):
      c.step()
  seconds = {name: [] for name in contenders}
  for i in range(FLAGS.rounds):
    for name in list(contenders)[::1 if i % 2 == 0 else -1]:
      for _ in range(FLAGS.steps_per_round):
        start = time.perf_counter()
        contenders[name].step()
        seconds[name].append(time.perf_counter() - start)
  flops_per_token = accounting.flops_per_token(cli_runs.run_config(shape).model, shape.ctx)
  rows = []
  print('| contender | batch | step s (median, range) | tok/s | MFU | load |')
  print('|---|---|---|---|---|---|')
  for name, s in seconds.items():
    median = statistics.median(s)
    tokens_per_sec = shape.tokens_per_step / median
    row = {'contender': name, 'batch': shape.batch, 'step_seconds': median, 'seconds': s,
           'tokens_per_sec': tokens_per_sec,
           'mfu': flops_per_token * tokens_per_sec / roof['roof_flops'], 'load': cli_runs.load()}
    rows.append(row)
    print(f"| {name} | {shape.batch} | {median:.2f} ({min(s):.2f}-{max(s):.2f}) | "
          f"{tokens_per_sec:,.0f} | {row['mfu']:.1%} | {row['load'].split()[0]} |", flush=True)
  common.write_json({'environment': env, 'roof': roof, 'flops_per_token': flops_per_token,
                     'rows': rows}, FLAGS.output)


if __name__ == '__main__':
  common.run(main)
