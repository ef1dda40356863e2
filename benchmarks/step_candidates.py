"""Candidate speed-ups of the train step, measured against the current step in one run.

Each candidate is the project's own `train_step` (train.make_steps) on one
fixed synthetic batch of a train_throughput.py workload, changed in one way:

- `jit`: the step as `--mode=train` places it on one device (parallel.create:
  plain `jit`, whatever config.parallelism says): the baseline every ratio is
  taken against;
- `pmap`: the same step under `jax.pmap` over the one device
  (parallel.PmapStrategy, what one device ran before plain jit replaced it);
- `fused_qkv`: the model with one fused Q/K/V projection per self-attention
  (a [d, 3, h, k] DenseGeneral; cross-attention fuses K and V), by swapping in
  a subclass of layers.MultiHeadAttention in this process only (the model
  code is not changed), placed as `jit`;
- `concat_qkv`: the model's own query/key/value parameters, their kernels
  concatenated at run time into one matmul (no parameter renamed);
- `heads_major`: fused Q/K/V projected straight into the [b, h, l, k] layout
  the attention matmuls read, attention (forward and hand-written backward as
  layers.attention's) in that layout, and the output projection from it, so no
  [b, l, h, k] <-> [b, h, l, k] transposes are left around the score matmuls;
- `philox_dropout`: the dropout masks from XLA's Philox generator instead of
  ThreeFry (layers.Dropout swapped in-process);
- `xla:<name>`: the `jit` step compiled with XLA:CPU options (XLA_OPTIONS
  below, passed per compilation as `compiler_options`, so the variants share
  one process and run interleaved).

Contenders alternate round by round (rotating who goes first), as in
train_throughput.py; the median round counts. Also prints how far each
candidate's loss after the timed steps is from the baseline's (numerics: 0.0
means the same program result).

  python benchmarks/step_candidates.py                               # nanogpt_cpu, every candidate
  python benchmarks/step_candidates.py --workloads=gpt_6x384 --candidates=jit,pmap,fused_qkv
"""

import math
import os

# pylint: disable=g-import-not-at-top,wrong-import-position
import statistics
import sys

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common
from benchmarks import peak as peak_lib
from benchmarks import train_throughput as tt  # its flags: --workloads, --rounds, ...
from transformer_jax import config as config_lib
from transformer_jax import parallel
from transformer_jax import train as train_lib
from transformer_jax.models import accounting
from transformer_jax.models import layers
from transformer_jax.models import transformer

# XLA:CPU options of the installed jaxlib worth a look (names from its DebugOptions).
XLA_OPTIONS = {
    'no_ynn_dot': {'xla_cpu_experimental_ynn_fusion_type': ''},  # Eigen dots, not YNNPACK's.
    'ynn_dot_eltwise': {'xla_cpu_experimental_ynn_fusion_type':
                        'LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE'},
    'xnn_dot': {'xla_cpu_experimental_ynn_fusion_type': '',
                'xla_cpu_experimental_xnn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'},
    'onednn_dot': {'xla_cpu_experimental_ynn_fusion_type': '',
                   'xla_cpu_experimental_onednn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'},
    'xnn_graph': {'xla_cpu_experimental_xnn_graph_fusion_mode': 'XNN_GRAPH_FUSION_MODE_GREEDY'},
    'concurrency_scheduler': {'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED'},
    'vector_512': {'xla_cpu_prefer_vector_width': 512},
    'one_thread': {'xla_cpu_multi_thread_eigen': False},
}

flags.DEFINE_list('candidates', ['jit', 'pmap', 'fused_qkv', 'concat_qkv', 'heads_major',
                                 'philox_dropout'] + [f'xla:{k}' for k in XLA_OPTIONS],
                  'Contenders; the first is the baseline.')
flags.FLAGS.set_default('workloads', ['nanogpt_cpu'])
flags.FLAGS.set_default('output', 'benchmarks/results/step_candidates.json')
FLAGS = flags.FLAGS


class FusedQKVAttention(layers.MultiHeadAttention):
  """layers.MultiHeadAttention with one [d, 3, h, k] projection for self-attention
  (Q, K, V from one matmul) and one [d, 2, h, k] for K and V of cross-attention.
  Training only (no cache, no sown weights)."""

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, mask=None, *, segment_ids=None, positions_q=None,
               positions_kv=None, deterministic: bool = True, decode: bool = False):
    del segment_ids  # full attention only: the mask carries the segments.
    cfg = self.cfg
    dtype = layers.compute_dtype(cfg)
    head_dim = cfg.d_model // cfg.num_heads
    dense = lambda n, name: nn.DenseGeneral(features=(n, cfg.num_heads, head_dim),
                                            use_bias=cfg.use_bias, dtype=dtype, name=name)
    if inputs_kv is inputs_q:
      qkv = dense(3, 'qkv')(inputs_q)  # [b, l, 3, h, k]
      query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    else:
      query = dense(1, 'query')(inputs_q)[:, :, 0]
      kv = dense(2, 'kv')(inputs_kv)
      key, value = kv[:, :, 0], kv[:, :, 1]
    if cfg.position == 'rotary' and positions_kv is not None:
      query = layers.apply_rotary(query, positions_q)
      key = layers.apply_rotary(key, positions_kv)
    out = layers.attention(query, key, value, mask)
    return nn.DenseGeneral(features=cfg.d_model, axis=(-2, -1), use_bias=cfg.use_bias,
                           dtype=dtype, name='out')(out)


class ConcatQKVAttention(layers.MultiHeadAttention):
  """layers.MultiHeadAttention keeping its query/key/value parameters, their
  kernels concatenated into one [d, 3h, k] matmul at run time (cross-attention:
  key and value). Training only."""

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, mask=None, *, segment_ids=None, positions_q=None,
               positions_kv=None, deterministic: bool = True, decode: bool = False):
    del segment_ids
    cfg = self.cfg
    dtype = layers.compute_dtype(cfg)
    h, k = cfg.num_heads, cfg.d_model // cfg.num_heads
    init = nn.initializers.lecun_normal()
    def weights(name):
      kernel = self.param(name + '_kernel', lambda r, s: init(r, (s[0], s[1] * s[2])).reshape(s),
                          (cfg.d_model, h, k))
      bias = self.param(name + '_bias', nn.initializers.zeros, (h, k)) if cfg.use_bias else None
      return kernel, bias
    def project(names, x):
      ws = [weights(n) for n in names]
      kernel = jnp.concatenate([w for w, _ in ws], axis=1).astype(dtype)
      y = jnp.einsum('bld,dhk->blhk', x.astype(dtype), kernel)
      if cfg.use_bias:
        y = y + jnp.concatenate([b for _, b in ws], axis=0).astype(dtype)
      return jnp.split(y, len(names), axis=2)
    if inputs_kv is inputs_q:
      query, key, value = project(('query', 'key', 'value'), inputs_q)
    else:
      query, = project(('query',), inputs_q)
      key, value = project(('key', 'value'), inputs_kv)
    if cfg.position == 'rotary' and positions_kv is not None:
      query = layers.apply_rotary(query, positions_q)
      key = layers.apply_rotary(key, positions_kv)
    out = layers.attention(query, key, value, mask)
    return nn.DenseGeneral(features=cfg.d_model, axis=(-2, -1), use_bias=cfg.use_bias,
                           dtype=dtype, name='out')(out)


@jax.custom_vjp
def _attention_hm(query, key, value, mask):
  """layers.attention on heads-major [b, h, l, k] query/key/value."""
  return _attention_hm_fwd(query, key, value, mask)[0]


def _attention_hm_fwd(query, key, value, mask):
  scale = jnp.asarray(1.0 / math.sqrt(query.shape[-1]), query.dtype)
  logits = jnp.einsum('bhlk,bhsk->bhls', query * scale, key)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.asarray(layers.NEG_INF, logits.dtype))
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(query.dtype)
  out = jnp.einsum('bhls,bhsk->bhlk', weights, value)
  return out, (query, key, value, mask, weights, out)


def _attention_hm_bwd(residuals, d_out):
  query, key, value, mask, weights, out = residuals
  scale = jnp.asarray(1.0 / math.sqrt(query.shape[-1]), query.dtype)
  d_value = jnp.einsum('bhls,bhlk->bhsk', weights, d_out)
  d_weights = jnp.einsum('bhlk,bhsk->bhls', d_out, value).astype(jnp.float32)
  delta = jnp.einsum('bhlk,bhlk->bhl', d_out.astype(jnp.float32), out.astype(jnp.float32))
  d_logits = weights.astype(jnp.float32) * (d_weights - delta[..., None])
  if mask is not None:
    d_logits = jnp.where(mask, d_logits, 0.0)
  d_logits = d_logits.astype(query.dtype)
  d_query = jnp.einsum('bhls,bhsk->bhlk', d_logits, key) * scale
  d_key = jnp.einsum('bhls,bhlk->bhsk', d_logits, query * scale)
  return d_query, d_key, d_value, None


_attention_hm.defvjp(_attention_hm_fwd, _attention_hm_bwd)


class HeadsMajorAttention(layers.MultiHeadAttention):
  """Fused Q/K/V into [b, h, l, k]; attention and the output projection there.
  Training only, self- and cross-attention."""

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, mask=None, *, segment_ids=None, positions_q=None,
               positions_kv=None, deterministic: bool = True, decode: bool = False):
    del segment_ids  # full attention only: the mask carries the segments.
    cfg = self.cfg
    dtype = layers.compute_dtype(cfg)
    d, h = cfg.d_model, cfg.num_heads
    k = d // h
    init = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2, 3))
    def project(name, n, x):
      w = self.param(name, init, (d, n, h, k), jnp.float32).astype(dtype)
      y = jnp.einsum('bld,dnhk->nbhlk', x.astype(dtype), w)
      if cfg.use_bias:
        y = y + self.param(name + '_bias', nn.initializers.zeros, (n, 1, h, 1, k),
                           jnp.float32).astype(dtype)
      return y
    if inputs_kv is inputs_q:
      query, key, value = project('qkv', 3, inputs_q)
    else:
      query, = project('query', 1, inputs_q)
      key, value = project('kv', 2, inputs_kv)
    out = _attention_hm(query, key, value, mask)
    w = self.param('out', nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2), (h, k, d),
                   jnp.float32).astype(dtype)
    y = jnp.einsum('bhlk,hkd->bld', out, w)
    if cfg.use_bias:
      y = y + self.param('out_bias', nn.initializers.zeros, (d,), jnp.float32).astype(dtype)
    return y


class PhiloxDropout(layers.Dropout):
  """layers.Dropout with XLA's Philox generator in place of ThreeFry."""

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if self.rate == 0.0 or deterministic:
      return x
    seed = jax.random.bits(self.make_rng('dropout'), (4,), jnp.uint32)
    _, bits = jax.lax.rng_bit_generator(seed, x.shape, jnp.uint32,
                                        algorithm=jax.lax.RandomAlgorithm.RNG_PHILOX)
    keep = bits >= jnp.uint32(min(round(self.rate * 2**32), 2**32 - 1))
    return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros_like(x))


# Candidates that swap a module class (in this process only): (module, name, class).
SWAPS = {'fused_qkv': [(transformer, 'MultiHeadAttention', FusedQKVAttention)],
         'concat_qkv': [(transformer, 'MultiHeadAttention', ConcatQKVAttention)],
         'heads_major': [(transformer, 'MultiHeadAttention', HeadsMajorAttention)],
         'philox_dropout': [(transformer, 'Dropout', PhiloxDropout),
                            (layers, 'Dropout', PhiloxDropout)]}


class Candidate:
  """One train step variant on the fixed batch: step(), sync(), loss()."""

  def __init__(self, name: str, config, batch):
    self.name = name
    config = config.copy_and_resolve_references()
    options = None
    if name.startswith('xla:'):
      options = XLA_OPTIONS[name[4:]]
    elif name not in SWAPS and name not in ('jit', 'pmap'):
      raise app.UsageError(f'--candidates: unknown candidate {name!r}.')
    swaps = SWAPS.get(name, [])
    saved = [getattr(module, attr) for module, attr, _ in swaps]
    for module, attr, cls in swaps:
      setattr(module, attr, cls)
    try:
      if name == 'pmap':
        strategy = parallel.PmapStrategy(*train_lib.make_steps(config))
      else:
        strategy = parallel.create(config, *train_lib.make_steps(config))
      self.state, self.rng = train_lib.create_state(
          config, transformer.build_model(config.model), strategy)
      self.host_batch = batch  # put on the device every step, as the loop does.
      step = strategy.train_step
      if options is not None:
        jitted = strategy._train_step._fn  # pylint: disable=protected-access
        step = jitted.lower(self.state, strategy.put_batch(batch),
                            self.rng).compile(compiler_options=options)
      self._step, self.strategy = step, strategy
      self.step()  # compiles now, under the swapped module.
      self.sync()
    finally:
      for (module, attr, _), old in zip(swaps, saved):
        setattr(module, attr, old)

  def step(self):
    self.state, self.metrics = self._step(self.state, self.strategy.put_batch(self.host_batch),
                                          self.rng)

  def sync(self):
    jax.block_until_ready((self.state, self.metrics))

  def loss(self) -> float:
    m = self.strategy.fetch(self.metrics)
    return float(m['nll'] / m['weight'])


def run_workload(name: str, roof: float, on_cpu: bool) -> dict:
  config = tt.workload_config(name, on_cpu)
  if FLAGS.batch_size:
    config.batch_size = FLAGS.batch_size
  if FLAGS.dtype:
    config.model.dtype = FLAGS.dtype
  config_lib.validate(config)
  batch = tt.synthetic_batch(config)
  contenders = [Candidate(c, config, batch) for c in FLAGS.candidates]
  times = tt.interleaved_seconds(contenders, FLAGS.rounds, FLAGS.steps_per_round, FLAGS.warmup)
  tokens = config.batch_size * config.seq_len
  flops = accounting.flops_per_token(config.model, config.seq_len)
  base = statistics.median(times[contenders[0].name])
  row = {'workload': name, 'batch_size': config.batch_size, 'seq_len': config.seq_len,
         'flops_per_token': flops, 'roof_flops': roof, 'baseline': contenders[0].name,
         'contenders': {}}
  for c in contenders:
    seconds = statistics.median(times[c.name])
    row['contenders'][c.name] = {
        'step_seconds': seconds, 'tokens_per_sec': tokens / seconds,
        'mfu': flops * tokens / seconds / roof, 'speedup': base / seconds,
        'round_speedups': [b / s for b, s in zip(times[contenders[0].name], times[c.name])],
        'rounds': times[c.name], 'final_loss': c.loss()}
  return row


def markdown_rows(row: dict) -> list:
  base_loss = row['contenders'][row['baseline']]['final_loss']
  out = []
  for name, c in row['contenders'].items():
    spread = c['round_speedups']
    out.append(f"| {row['workload']} | {row['batch_size']}x{row['seq_len']} | {name} | "
               f"{1e3 * c['step_seconds']:.1f} | {c['tokens_per_sec']:,.0f} | "
               f"**{c['speedup']:.3f}x** | {min(spread):.3f}-{max(spread):.3f} | "
               f"{100 * c['mfu']:.1f}% | {c['final_loss'] - base_loss:+.2e} |")
  return out


HEADER = ('| workload | batch x ctx | candidate | step ms | tok/s | speedup vs baseline (median) '
          '| per-round speedups | MFU | loss - baseline\'s |\n|---|---|---|---|---|---|---|---|---|')


def main(argv):
  del argv
  on_cpu = jax.devices()[0].platform == 'cpu'
  roof = peak_lib.measure(FLAGS.peak_size)
  print(f"roof: {roof['roof_flops'] / 1e9:.1f} GFLOP/s", flush=True)
  rows = []
  for name in FLAGS.workloads:
    rows.append(run_workload(name, roof['roof_flops'], on_cpu))
    print('\n'.join(markdown_rows(rows[-1])), flush=True)
  result = {**common.environment(), 'roof': roof, 'rows': rows}
  common.print_environment(result)
  print(HEADER)
  for row in rows:
    print('\n'.join(markdown_rows(row)))
  if FLAGS.output:
    common.write_json(result, FLAGS.output)


if __name__ == '__main__':
  common.run(main)
