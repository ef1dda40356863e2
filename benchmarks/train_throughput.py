"""Training throughput and MFU, ours against a PyTorch peer, in one run.

For each workload this builds

- ours: the project's own `train_step` (train.make_steps) placed by the
  project's strategy (parallel.create, as `--mode=train` does), on a fixed
  synthetic batch;
- the PyTorch peers, built from PyTorch's own modules: the minimal GPT
  (`gpt_model`: fused QKV, `F.scaled_dot_product_attention`, pre-LN, GELU,
  learned positions, tied head, AdamW) for the decoder-only LM; and for the
  decoder-only LM `nn.TransformerEncoder` (post-LN layers as the paper's) with a causal mask,
  an `nn.Embedding` scaled by sqrt(d_model), the sinusoidal table and the tied
  LM head; for seq2seq `nn.Transformer` with one shared embedding tied to the
  output; Adam with the same betas and eps; eager, and `torch.compile`d where
  that works;

and times them interleaved: each round runs `--steps_per_round` steps of every
contender in turn (rotating who goes first), so noise from other work on a
shared machine hits all of them alike, and reports the median step time over
rounds. MFU divides the model FLOPs (models/accounting.flops_per_token, the same
accounting the training loop prints) by the roof measured by peak.py at the
start of the run.

  python benchmarks/train_throughput.py                                 # CPU workloads
  python benchmarks/train_throughput.py --workloads=nanogpt_cpu --rounds=5
  python benchmarks/train_throughput.py --workloads=gpt2_small --attention_impl=cudnn  # GPU

On an NVIDIA GPU the models compute in bfloat16 (float32 parameters) and the
minimal-GPT and nn.Transformer* peers run there too (bfloat16 autocast, TF32,
fused AdamW), as a GPU researcher would run them.

Prints one markdown row per workload and writes them all to --output (JSON).
"""

import os

# PyTorch's OpenMP workers spin while idle; on a shared machine that starves
# them (2.8 s instead of 0.15 s per nanoGPT step, measured), so the peer runs
# with passive waiting unless the caller set a policy.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

# pylint: disable=g-import-not-at-top,wrong-import-position
import math
import statistics
import sys
import time

from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common
from benchmarks import peak as peak_lib
from transformer_jax import config as config_lib
from transformer_jax import parallel
from transformer_jax import train as train_lib
from transformer_jax.models import accounting
from transformer_jax.models import layers
from transformer_jax.models.transformer import build_model

WORKLOADS = ('nanogpt_cpu', 'gpt_6x384', 'gpt2_small', 'seq2seq_base')  # workload_config's.
common.define_choice_list('workloads', ['nanogpt_cpu', 'gpt_6x384', 'seq2seq_base'], WORKLOADS,
                          'Workloads to run.')
flags.DEFINE_integer('batch_size', 0, 'Override every workload\'s batch size (0 = its own).',
                     lower_bound=0)
flags.DEFINE_string('dtype', '', "Model compute dtype; '' = float32 on CPU, bfloat16 on GPU.")
flags.DEFINE_string('attention_impl', '', "'' = the config's default (xla); cudnn = flash "
                    'attention on an NVIDIA GPU.')
flags.DEFINE_string('parallelism', '', "'' = the config's default strategy; pmap | mesh.")
flags.DEFINE_integer('rounds', 7, 'Interleaved timing rounds; the median counts.',
                     lower_bound=1)
flags.DEFINE_integer('steps_per_round', 0, 'Steps of each contender per round (0 = about 2 s).',
                     lower_bound=0)
flags.DEFINE_integer('warmup', 2, 'Untimed steps of each contender after compiling.',
                     lower_bound=0)
PEERS = {  # name: (config, batch, device) -> contender.
    'eager': lambda config, batch, device: TorchPeer(config, batch, False, device),
    'compile': lambda config, batch, device: TorchPeer(config, batch, True, device),
    'gpt_eager': lambda config, batch, device: GPTPeer(config, batch, False, device),
    'gpt_compile': lambda config, batch, device: GPTPeer(config, batch, True, device)}
common.define_choice_list('peers', ['gpt_eager', 'gpt_compile', 'eager', 'compile'], PEERS,
                          'PyTorch peers: gpt_eager, gpt_compile (the minimal GPT, decoders '
                          'only), eager, compile (nn.TransformerEncoder / nn.Transformer); '
                          'none: --peers=.', allow_empty=True)
flags.DEFINE_integer('torch_threads', 0, 'torch.set_num_threads (0 = the faster of 1 and all '
                     'cores, probed per workload).', lower_bound=0)
flags.DEFINE_integer('peak_size', 0, 'Matrix side for the roof (0 = peak.py default).',
                     lower_bound=0)
flags.DEFINE_string('profile_dir', '', 'If set, a jax.profiler trace of 3 of our steps per '
                    'workload after the timing (TensorBoard\'s Profile tab reads it).')
flags.DEFINE_string('output', 'benchmarks/results/train_throughput.json', 'JSON results file.')
common.check_output()
FLAGS = flags.FLAGS


# ----------------------------------------------------------------------------
# Workloads: a run config each, from the project's base config.


def _lm(layers, heads, d_model, seq_len, batch, vocab, dropout):
  c = config_lib.base_config()
  c.model.update(variant='decoder', num_layers=layers, num_heads=heads, d_model=d_model,
                 vocab_size=vocab, dropout_rate=dropout, max_len=seq_len)
  c.optimizer.label_smoothing = 0.0
  c.update(seq_len=seq_len, batch_size=batch, warmup_steps=100)
  return c


def _seq2seq(seq_len, batch):
  c = config_lib.base_config()  # the paper's base model: 6+6 layers, 512 wide, 8 heads.
  c.update(seq_len=seq_len, batch_size=batch)
  return c


def workload_config(name: str, on_cpu: bool):
  """The run config of a named workload (batch sizes shrink on CPU; the README says so)."""
  if name == 'nanogpt_cpu':  # nanoGPT's shakespeare_char CPU recipe.
    return _lm(4, 4, 128, 64, 12, 65, 0.0)
  if name == 'gpt_6x384':  # nanoGPT's shakespeare_char GPU recipe (batch 64 there).
    return _lm(6, 6, 384, 256, 12 if on_cpu else 64, 65, 0.2)
  if name == 'gpt2_small':  # GPT-2 small: 12 layers, 768 wide, context 1024.
    return _lm(12, 12, 768, 1024, 2 if on_cpu else 16, 50304, 0.0)
  if name == 'seq2seq_base':  # a short synthetic batch: 32 source and 32 target tokens.
    return _seq2seq(32, 8 if on_cpu else 128)
  raise ValueError(f'unknown workload {name!r}; use {", ".join(WORKLOADS)}.')


def synthetic_batch(config, seed: int = 0) -> dict:
  """A batch of the training contract (no padding: every token is real)."""
  rng = np.random.default_rng(seed)
  shape = (config.batch_size, config.seq_len)
  tokens = lambda: rng.integers(1, config.model.vocab_size, shape, dtype=np.int32)
  batch = {'inputs': tokens(), 'targets': tokens(), 'weights': np.ones(shape, np.float32)}
  if config.model.variant == 'decoder':
    batch['targets'] = np.roll(batch['inputs'], -1, axis=1)
  return batch


# ----------------------------------------------------------------------------
# Contenders: each a `step()` that runs one training step on the fixed batch,
# and a `sync()` that waits for the work it dispatched.


class Ours:
  """The project's train_step, placed by the project's parallel strategy."""

  def __init__(self, config, batch):
    self.name = 'ours'
    strategy = parallel.create(config, *train_lib.make_steps(config))
    self.state, self.rng = train_lib.create_state(config, build_model(config.model), strategy)
    self.strategy, self.batch = strategy, batch
    self.metrics = None

  def step(self):
    self.state, self.metrics = self.strategy.train_step(self.state,
                                                        self.strategy.put_batch(self.batch),
                                                        self.rng)

  def sync(self):
    jax.block_until_ready((self.state, self.metrics))

  def loss(self) -> float:
    m = self.strategy.fetch(self.metrics)
    return float(m['nll'] / m['weight'])


def torch_model(cfg, seq_len: int):
  """The PyTorch peer of `cfg` from torch.nn modules: logits = model(inputs[, targets])."""
  import torch
  from torch import nn

  d, ff = cfg.d_model, config_lib.ModelConfig.of(cfg).d_ff
  layer_args = dict(d_model=d, nhead=cfg.num_heads, dim_feedforward=ff, dropout=cfg.dropout_rate,
                    activation='relu', layer_norm_eps=cfg.layer_norm_epsilon, batch_first=True,
                    norm_first=cfg.norm == 'pre')

  class Embed(nn.Module):

    def __init__(self):
      super().__init__()
      self.embedding = nn.Embedding(cfg.vocab_size, d)
      nn.init.normal_(self.embedding.weight, std=d**-0.5)
      self.register_buffer('table', torch.from_numpy(layers.sinusoidal_table(seq_len, d)))  # values do not change speed.
      self.dropout = nn.Dropout(cfg.dropout_rate)

    def forward(self, ids):
      return self.dropout(self.embedding(ids) * math.sqrt(d) + self.table[:ids.shape[1]])

  class LM(nn.Module):

    def __init__(self):
      super().__init__()
      self.embed = Embed()
      self.decoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer_args),
                                           cfg.num_layers, enable_nested_tensor=False)
      self.register_buffer('mask', nn.Transformer.generate_square_subsequent_mask(seq_len))

    def forward(self, inputs):
      x = self.decoder(self.embed(inputs), mask=self.mask, is_causal=True)
      return x @ self.embed.embedding.weight.T

  class Seq2Seq(nn.Module):

    def __init__(self):
      super().__init__()
      self.embed = Embed()
      self.transformer = nn.Transformer(num_encoder_layers=cfg.num_layers,
                                        num_decoder_layers=cfg.num_layers, **layer_args)
      self.register_buffer('mask', nn.Transformer.generate_square_subsequent_mask(seq_len))

    def forward(self, inputs, targets):
      decoder_inputs = torch.nn.functional.pad(targets, (1, 0))[:, :-1]
      x = self.transformer(self.embed(inputs), self.embed(decoder_inputs), tgt_mask=self.mask,
                           tgt_is_causal=True)
      return x @ self.embed.embedding.weight.T

  return Seq2Seq() if cfg.variant == 'seq2seq' else LM()


class _TorchContender:
  """What the PyTorch peers share: the device ('cpu', or 'cuda' when JAX runs on
  an NVIDIA GPU), the batch as int64 tensors there, the compute dtype (float32,
  or bfloat16 autocast over float32 parameters, as config.model.dtype does for
  ours), the thread count on CPU, and the synchronisation before a clock read."""

  def __init__(self, config, batch, device: str):
    import torch
    torch.manual_seed(config.seed)
    self.device = device
    self.inputs = torch.from_numpy(batch['inputs']).long().to(device)
    self.targets = torch.from_numpy(batch['targets']).long().to(device)
    self.autocast_dtype = (None if config.model.dtype == 'float32'
                           else getattr(torch, config.model.dtype))
    if device == 'cuda':  # float32 matmuls on tensor cores (TF32), as ours get by default.
      torch.backends.cuda.matmul.allow_tf32 = True
      torch.backends.cudnn.allow_tf32 = True
    self.last = None
    self.threads = None  # set by run_workload on CPU: torch.set_num_threads for this peer.

  def _context(self):
    import contextlib
    import torch
    if self.threads and torch.get_num_threads() != self.threads:
      torch.set_num_threads(self.threads)
    if self.autocast_dtype is None:
      return contextlib.nullcontext()
    return torch.autocast(device_type=self.device, dtype=self.autocast_dtype)

  def sync(self):
    import torch
    if self.device == 'cuda':
      torch.cuda.synchronize()  # CPU torch is synchronous.

  def loss(self) -> float:
    return float(self.last.detach())


class TorchPeer(_TorchContender):
  """The PyTorch peer's training step: forward, cross-entropy, backward, Adam."""

  def __init__(self, config, batch, compiled: bool, device: str = 'cpu'):
    import torch
    super().__init__(config, batch, device)
    self.name = 'torch_compile' if compiled else 'torch_eager'
    cfg, o = config.model, config.optimizer
    self.model = torch_model(cfg, config.seq_len).to(device).train()
    self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4, betas=(o.b1, o.b2),
                                      eps=o.eps)
    self.seq2seq = cfg.variant == 'seq2seq'
    smoothing = o.label_smoothing

    def loss_fn(model, inputs, targets):
      logits = model(inputs, targets) if self.seq2seq else model(inputs)
      return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                               targets.reshape(-1), label_smoothing=smoothing)

    self.loss_fn = torch.compile(loss_fn) if compiled else loss_fn

  def step(self):
    self.optimizer.zero_grad(set_to_none=True)
    with self._context():
      loss = self.loss_fn(self.model, self.inputs, self.targets)
    loss.backward()
    self.optimizer.step()
    self.last = loss


def gpt_model(cfg, seq_len: int):
  """The minimal-GPT peer of a decoder `cfg`, written from torch.nn modules and
  functions: learned positions, pre-LN blocks with one fused QKV `nn.Linear`,
  `F.scaled_dot_product_attention(is_causal=True)`, a GELU MLP, a final
  LayerNorm and the output projection tied to the token embedding. Its matmuls
  are those of `cfg` (same widths, depth and vocabulary), so it costs the same
  FLOPs per token in models/accounting.py's count.  logits = model(inputs)."""
  import torch
  from torch import nn
  from torch.nn import functional as F

  d, heads, p = cfg.d_model, cfg.num_heads, cfg.dropout_rate
  ff = config_lib.ModelConfig.of(cfg).d_ff
  bias = cfg.use_bias

  class Block(nn.Module):

    def __init__(self):
      super().__init__()
      self.norm1 = nn.LayerNorm(d, bias=bias)
      self.qkv = nn.Linear(d, 3 * d, bias=bias)
      self.out = nn.Linear(d, d, bias=bias)
      self.norm2 = nn.LayerNorm(d, bias=bias)
      self.up = nn.Linear(d, ff, bias=bias)
      self.down = nn.Linear(ff, d, bias=bias)
      self.dropout = nn.Dropout(p)

    def forward(self, x):
      b, l, _ = x.shape
      q, k, v = self.qkv(self.norm1(x)).split(d, dim=2)
      q, k, v = (t.view(b, l, heads, d // heads).transpose(1, 2) for t in (q, k, v))
      y = F.scaled_dot_product_attention(q, k, v, dropout_p=p if self.training else 0.0,
                                         is_causal=True)
      x = x + self.dropout(self.out(y.transpose(1, 2).reshape(b, l, d)))
      return x + self.dropout(self.down(F.gelu(self.up(self.norm2(x)))))

  class GPT(nn.Module):

    def __init__(self):
      super().__init__()
      self.tokens = nn.Embedding(cfg.vocab_size, d)
      self.positions = nn.Embedding(seq_len, d)
      self.dropout = nn.Dropout(p)
      self.blocks = nn.ModuleList(Block() for _ in range(cfg.num_layers))
      self.norm = nn.LayerNorm(d, bias=bias)
      for name, param in self.named_parameters():
        if param.dim() >= 2:
          std = 0.02 / math.sqrt(2 * cfg.num_layers) if name.endswith(('out.weight',
                                                                       'down.weight')) else 0.02
          nn.init.normal_(param, std=std)
        elif name.endswith('bias'):
          nn.init.zeros_(param)

    def forward(self, inputs):
      positions = torch.arange(inputs.shape[1], device=inputs.device)
      x = self.dropout(self.tokens(inputs) + self.positions(positions))
      for block in self.blocks:
        x = block(x)
      return F.linear(self.norm(x), self.tokens.weight)  # tied output projection.

  return GPT()


class GPTPeer(_TorchContender):
  """The minimal-GPT peer's training step: forward, cross-entropy, backward,
  AdamW (weight decay on matrices only; the fused CUDA kernel on a GPU),
  gradients set to None between steps."""

  def __init__(self, config, batch, compiled: bool, device: str = 'cpu'):
    import torch
    super().__init__(config, batch, device)
    self.name = 'gpt_compile' if compiled else 'gpt_eager'
    o = config.optimizer
    self.model = gpt_model(config.model, config.seq_len).to(device).train()
    matrices = [p for p in self.model.parameters() if p.dim() >= 2]
    others = [p for p in self.model.parameters() if p.dim() < 2]
    self.optimizer = torch.optim.AdamW([{'params': matrices, 'weight_decay': 0.1},
                                        {'params': others, 'weight_decay': 0.0}],
                                       lr=1e-3, betas=(o.b1, o.b2), eps=o.eps,
                                       fused=device == 'cuda')
    self.forward = torch.compile(self.model) if compiled else self.model

  def step(self):
    from torch.nn import functional as F
    with self._context():
      logits = self.forward(self.inputs)
      loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), self.targets.view(-1))
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    self.last = loss


def pick_torch_threads(peer, probes: int = 3) -> int:
  """The faster thread count for `peer`, 1 or every core (alternating probes, best step)."""
  import torch
  best = {}
  for _ in range(probes):
    for threads in (os.cpu_count(), 1):
      torch.set_num_threads(threads)
      start = time.perf_counter()
      peer.step()
      best[threads] = min(best.get(threads, float('inf')), time.perf_counter() - start)
  return min(best, key=best.get)


# ----------------------------------------------------------------------------
# Timing.


def interleaved_seconds(contenders, rounds: int, steps_per_round: int, warmup: int) -> dict:
  """{name: [seconds per step, one per round]} with contenders alternating in each round."""
  for c in contenders:
    for _ in range(warmup):
      c.step()
    c.sync()
  if not steps_per_round:  # about 2 s for the slowest contender.
    slowest = 0.0
    for c in contenders:
      start = time.perf_counter()
      c.step()
      c.sync()
      slowest = max(slowest, time.perf_counter() - start)
    steps_per_round = max(1, min(50, int(2.0 / max(slowest, 1e-6))))
  times = {c.name: [] for c in contenders}
  for r in range(rounds):
    order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
    for c in order:
      start = time.perf_counter()
      for _ in range(steps_per_round):
        c.step()
      c.sync()
      times[c.name].append((time.perf_counter() - start) / steps_per_round)
  return times


def torch_device_for(platform: str):
  """Where the PyTorch peers run beside JAX's first device: 'cpu', 'cuda' (an
  NVIDIA GPU that this PyTorch build sees), or None (no peer on this device)."""
  if platform == 'cpu':
    return 'cpu'
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return 'cuda' if platform == 'gpu' and torch.cuda.is_available() else None


def run_workload(name: str, roof: float, on_cpu: bool, torch_device) -> dict:
  config = workload_config(name, on_cpu)
  if FLAGS.batch_size:
    config.batch_size = FLAGS.batch_size
  if FLAGS.dtype:
    config.model.dtype = FLAGS.dtype
  elif not on_cpu:
    config.model.dtype = 'bfloat16'
  if FLAGS.attention_impl:
    config.model.attention_impl = FLAGS.attention_impl
  if FLAGS.parallelism:
    config.parallelism = FLAGS.parallelism
  config_lib.validate(config)
  batch = synthetic_batch(config)
  contenders = [Ours(config, batch)]
  torch_threads = {}
  for peer in FLAGS.peers if torch_device else []:
    if peer.startswith('gpt') and config.model.variant != 'decoder':
      continue  # the minimal GPT is a decoder-only LM.
    try:
      contender = PEERS[peer](config, batch, torch_device)
      contender.step()  # compiles (torch.compile) or fails here.
      if torch_device == 'cpu':
        contender.threads = FLAGS.torch_threads or pick_torch_threads(contender)
        torch_threads[contender.name] = contender.threads
      contenders.append(contender)
    except Exception as e:  # pylint: disable=broad-except
      print(f'{name}: torch peer {peer!r} does not run here: {type(e).__name__}: {e}', flush=True)
  contenders[0].step()  # compiles.
  times = interleaved_seconds(contenders, FLAGS.rounds, FLAGS.steps_per_round, FLAGS.warmup)
  if FLAGS.profile_dir:
    with jax.profiler.trace(os.path.join(FLAGS.profile_dir, name)):
      for _ in range(3):
        contenders[0].step()
      contenders[0].sync()
  tokens = config.batch_size * config.seq_len
  flops = accounting.flops_per_token(config.model, config.seq_len)
  row = {'workload': name, 'variant': config.model.variant, 'layers': config.model.num_layers,
         'd_model': config.model.d_model, 'heads': config.model.num_heads,
         'seq_len': config.seq_len, 'batch_size': config.batch_size,
         'vocab_size': config.model.vocab_size, 'dropout': config.model.dropout_rate,
         'dtype': config.model.dtype, 'attention_impl': config.model.attention_impl,
         'parallelism': config.parallelism,
         'torch_threads': torch_threads, 'torch_device': torch_device,
         'flops_per_token': flops, 'roof_flops': roof, 'contenders': {}}
  for c in contenders:
    seconds = statistics.median(times[c.name])
    row['contenders'][c.name] = {
        'step_seconds': seconds, 'tokens_per_sec': tokens / seconds,
        'mfu': flops * tokens / seconds / roof, 'rounds': times[c.name], 'final_loss': c.loss()}
  ours = row['contenders']['ours']['tokens_per_sec']
  for c in contenders[1:]:
    row[f'ratio_vs_{c.name}'] = ours / row['contenders'][c.name]['tokens_per_sec']
  return row


def markdown_row(row: dict) -> str:
  c = row['contenders']
  peer = lambda name, key, fmt: fmt.format(c[name][key]) if name in c else 'n/a'
  ratio = lambda name: f"{row['ratio_vs_' + name]:.2f}x" if 'ratio_vs_' + name in row else 'n/a'
  cells = [row['workload'], f"{row['batch_size']}x{row['seq_len']}",
           f"{c['ours']['tokens_per_sec']:,.0f}"]
  for name in ('gpt_eager', 'gpt_compile', 'torch_eager', 'torch_compile'):
    cells += [peer(name, 'tokens_per_sec', '{:,.0f}'), ratio(name)]
  cells += [f"{100 * c['ours']['mfu']:.1f}%", peer('gpt_eager', 'mfu', '{:.1%}')]
  return '| ' + ' | '.join(cells) + ' |'


HEADER = ('| workload | batch x ctx | ours tok/s | minimal GPT eager tok/s | ratio | '
          'minimal GPT compiled tok/s | ratio | nn.Transformer* eager tok/s | ratio | '
          'nn.Transformer* compiled tok/s | ratio | ours MFU | minimal GPT eager MFU |\n'
          '|---|---|---|---|---|---|---|---|---|---|---|---|---|')


def main(argv):
  del argv
  platform = jax.devices()[0].platform
  on_cpu, torch_device = platform == 'cpu', torch_device_for(platform)
  roof = peak_lib.measure(FLAGS.peak_size)
  print(f"roof: {roof['roof_flops'] / 1e9:.1f} GFLOP/s ({roof['dtype']} matmul "
        f"{roof['size']}^3)", flush=True)
  rows = []
  for name in FLAGS.workloads:
    rows.append(run_workload(name, roof['roof_flops'], on_cpu, torch_device))
    print(markdown_row(rows[-1]), flush=True)
  result = {**common.environment(with_torch=True), 'roof': roof, 'rows': rows}
  common.print_environment(result)
  print(HEADER)
  for row in rows:
    print(markdown_row(row))
  if FLAGS.output:
    common.write_json(result, FLAGS.output)


if __name__ == '__main__':
  common.run(main)
