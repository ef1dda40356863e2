"""Throughput of the input pipeline alone, against what a train step consumes.

Builds the datasets of an experiment config, draws batches from the train
iterator as fast as possible (nothing else running) and prints examples/s and
tokens/s. Then times a plain jitted Adam step of the same model on one fixed
batch, so the ratio says how much headroom the pipeline has; the issue asks
for at least 10x.

  python benchmarks/input_pipeline.py                      # the default experiment
  python benchmarks/input_pipeline.py --config=transformer_jax/configs/shakespeare_char.py \
      --config.data.packing=True --batches=500 --step_batches=0
"""

import os
import sys
import time

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common
from transformer_jax import configs
from transformer_jax.data import datasets
from transformer_jax.models import transformer

config_flags.DEFINE_config_file('config', configs.config_file('shakespeare_char'),
                                'Experiment config.')
flags.DEFINE_integer('batches', 2000, 'Train batches drawn from the pipeline.', lower_bound=1)
flags.DEFINE_integer('step_batches', 50, 'Train steps timed (0 = skip the step).', lower_bound=0)
flags.DEFINE_string('workdir', None, 'Where a SentencePiece model is cached.')
FLAGS = flags.FLAGS


def count_examples(batch) -> int:
  """Examples in a batch: rows, or packed segments when rows are packed."""
  segments = batch.get('segment_ids', batch.get('inputs_segment_ids'))
  return len(batch['inputs']) if segments is None else int(segments.max(1).sum())


def time_pipeline(train, batches: int):
  """(seconds, examples, real tokens, a batch) for `batches` batches after a
  warm-up one."""
  first = next(train)
  examples = tokens = 0
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(train)
    examples += count_examples(batch)
    tokens += int(np.count_nonzero(batch['inputs']))
  return time.perf_counter() - start, examples, tokens, first


def time_train_step(config, batch, steps: int) -> float:
  """Seconds per jitted forward+backward+Adam step on `batch` (no data loading)."""
  model = transformer.build_model(config.model)
  variant = config.model.variant
  model_args = lambda b: ((b['inputs'], b['targets']) if variant == 'seq2seq'
                          else (b['inputs'],))
  extra = lambda b: {k: v for k, v in b.items()
                     if k not in ('inputs', 'targets', 'weights')}
  params = model.init(jax.random.PRNGKey(0), *model_args(batch), **extra(batch))
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, b, rng):
    def loss_fn(p):
      logits = model.apply(p, *model_args(b), **extra(b), deterministic=False,
                           rngs={'dropout': rng})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, b['targets'])
      return (loss * b['weights']).sum() / b['weights'].sum()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  batch = jax.tree_util.tree_map(jnp.asarray, batch)
  rng = jax.random.PRNGKey(1)
  params, opt_state = step(params, opt_state, batch, rng)  # compile.
  jax.block_until_ready(params)
  start = time.perf_counter()
  for _ in range(steps):
    params, opt_state = step(params, opt_state, batch, rng)
  jax.block_until_ready(params)
  return (time.perf_counter() - start) / steps


def main(argv):
  del argv
  config = FLAGS.config
  start = time.perf_counter()
  data = datasets.create_datasets(config, FLAGS.workdir)
  setup = time.perf_counter() - start
  seconds, examples, tokens, batch = time_pipeline(data.train, FLAGS.batches)
  shape = 'x'.join(str(d) for d in batch['inputs'].shape)
  print(f'dataset {config.data.name} task {config.data.task} tokenizer {data.tokenizer.name} '
        f'batch {shape} packing {config.data.packing}; setup {setup:.2f} s')
  print(f'pipeline: {FLAGS.batches / seconds:,.0f} batches/s, {examples / seconds:,.0f} '
        f'examples/s, {tokens / seconds:,.0f} tokens/s ({FLAGS.batches} batches, '
        f'{jax.device_count()} {jax.devices()[0].platform} device(s), '
        f'{config.data.num_threads} reader threads)')
  if FLAGS.step_batches:
    per_step = time_train_step(config, batch, FLAGS.step_batches)
    consumed = count_examples(batch) / per_step
    print(f'train step: {per_step * 1e3:.1f} ms/step, consumes {consumed:,.0f} examples/s; '
          f'pipeline headroom {examples / seconds / consumed:,.0f}x')


if __name__ == '__main__':
  common.run(main)
