"""Generation speed at GPT-2 small: ours (`decode.sample`) against transformers' `generate()`.

One set of random weights in GPT-2's layout (pre-LN, learned positions, biases,
tanh GELU, tied embeddings; 12 layers, 12 heads, d_model 768, vocab 50257) runs
on both sides: ours in JAX, and the same tensors exported by hf.export and loaded
by `transformers.GPT2LMHeadModel` (PyTorch, float32, eager, its KV cache), on the
same CPU. Each side generates `--new_tokens` tokens after a `--prompt_len`-token
random prompt, greedy and sampled (temperature `--temperature`, no top-k), at
each of `--batch_sizes`; no EOS stops a row (both always produce every token).
Timed after an untimed first call (ours compiles there), median of `--repeats`.
Greedy outputs are compared token by token, as a check that both run the same model.

  python benchmarks/decode_vs_hf.py                       # about 3 minutes on 2 cores
  python benchmarks/decode_vs_hf.py --batch_sizes=1 --new_tokens=64
"""

import os

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')  # see cli_vs_nanogpt.py.

# pylint: disable=g-import-not-at-top,wrong-import-position
import statistics
import sys
import tempfile
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common
from transformer_jax import decode
from transformer_jax import hf
from transformer_jax.configs import shakespeare_char
from transformer_jax.models.transformer import build_model

common.define_int_list('batch_sizes', ['1', '32'], 'Batch sizes.')
flags.DEFINE_integer('prompt_len', 8, 'Prompt tokens per row.', lower_bound=1)
flags.DEFINE_integer('new_tokens', 32, 'Tokens generated per row.', lower_bound=1)
flags.DEFINE_float('temperature', 0.8, 'Sampling temperature (the sampled rows).')
common.require_above_zero('temperature')
flags.DEFINE_integer('repeats', 3, 'Timed calls after the first; the median counts.',
                     lower_bound=1)
flags.DEFINE_string('output', 'benchmarks/results/decode_vs_hf.json', 'JSON results.')
common.check_output()
FLAGS = flags.FLAGS


def gpt2_small_config(length: int):
  """config.model of GPT-2 small's layout with `length` positions."""
  config = shakespeare_char.get_config('nanogpt').model
  config.update(num_layers=12, num_heads=12, d_model=768, vocab_size=50257, max_len=length,
                use_bias=True, norm_bias=True, activation='gelu_tanh')  # GPT-2 has every bias.
  return config


def _median_seconds(fn):
  """(median seconds of --repeats calls after an untimed one, the first call's output)."""
  out = fn()
  seconds = []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    fn()
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds), out


def main(argv):
  del argv
  common.require('torch', 'transformers')
  import torch
  import transformers
  env = common.environment(with_torch=True)
  env['versions']['transformers'] = transformers.__version__
  common.print_environment(env)
  length = FLAGS.prompt_len + FLAGS.new_tokens
  cfg = gpt2_small_config(length)
  model = build_model(cfg)
  params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 8), jnp.int32))['params']
  with tempfile.TemporaryDirectory() as directory:
    hf.export(cfg, params, directory)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
  theirs.generation_config.pad_token_id = 0
  rows = []
  print('| batch | mode | ours tok/s | transformers tok/s | ours / transformers |')
  print('|---|---|---|---|---|')
  for batch in map(int, FLAGS.batch_sizes):
    prompts = np.random.default_rng(batch).integers(3, cfg.vocab_size,
                                                    (batch, FLAGS.prompt_len), dtype=np.int32)
    tokens = {}
    for mode, temperature in (('greedy', 0.0), ('sampled', FLAGS.temperature)):
      ours_s, tokens[mode, 'ours'] = _median_seconds(lambda t=temperature: np.asarray(
          decode.sample(model, params, prompts, length, temperature=t,
                        rng=jax.random.key(1))))
      sampling = dict(do_sample=True, temperature=temperature, top_k=0) if temperature else dict(
          do_sample=False)

      def generate(sampling=sampling):
        with torch.no_grad():
          return theirs.generate(torch.from_numpy(prompts.astype(np.int64)),
                                 attention_mask=torch.ones(prompts.shape, dtype=torch.long),
                                 max_new_tokens=FLAGS.new_tokens,
                                 min_new_tokens=FLAGS.new_tokens, **sampling).numpy()

      theirs_s, tokens[mode, 'theirs'] = _median_seconds(generate)
      generated = batch * FLAGS.new_tokens
      row = {'batch': batch, 'mode': mode, 'ours_tokens_per_sec': generated / ours_s,
             'transformers_tokens_per_sec': generated / theirs_s}
      row['ratio'] = row['ours_tokens_per_sec'] / row['transformers_tokens_per_sec']
      if mode == 'greedy':
        same = tokens[mode, 'ours'][:, FLAGS.prompt_len:] == tokens[mode, 'theirs'][
            :, FLAGS.prompt_len:]
        row['greedy_tokens_equal'] = float(same.mean())
      rows.append(row)
      print(f"| {batch} | {mode} | {row['ours_tokens_per_sec']:,.1f} | "
            f"{row['transformers_tokens_per_sec']:,.1f} | {row['ratio']:.2f} |"
            + (f" greedy tokens equal: {row['greedy_tokens_equal']:.0%}" if mode == 'greedy'
               else ''), flush=True)
  common.write_json({'environment': env, 'prompt_len': FLAGS.prompt_len,
                     'new_tokens': FLAGS.new_tokens, 'rows': rows}, FLAGS.output)


if __name__ == '__main__':
  common.run(main)
