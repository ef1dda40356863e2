"""Runs of the two training CLIs, ours and nanoGPT's `train.py`, as child processes.

What cli_vs_nanogpt.py, startup.py and memory.py share: the shapes, the two
command lines for one shape, and a child run that records when each output line
arrived, its exit status and its peak resident memory (ru_maxrss from wait4).

nanoGPT's files are not part of this repository. Get them with

  git clone https://github.com/karpathy/nanoGPT && git -C nanoGPT checkout 3adf61e
  PYTHONPATH=$PWD python experiments/results/shakespeare_char_nanogpt/prepare_nanogpt_data.py \\
      nanoGPT/data/shakespeare_char

and pass `--nanogpt_dir=nanoGPT` (the directory holding train.py, model.py,
configurator.py, config/ and data/shakespeare_char/). Each nanoGPT run works in a
scratch directory of links to those files, so nothing is written into nanoGPT's.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Shape:
  """A decoder-only GPT shape and its batch; vocab 0 = the character vocabulary
  (nanoGPT's meta.pkl, 84; ours 96)."""
  layers: int
  heads: int
  d_model: int
  ctx: int
  batch: int
  vocab: int = 0

  @property
  def tokens_per_step(self) -> int:
    return self.ctx * self.batch


SHAPES = {
    '4x4x128': Shape(4, 4, 128, 64, 12),  # the default experiment, nanoGPT's CPU recipe.
    '6x6x384': Shape(6, 6, 384, 256, 12),  # nanoGPT's Shakespeare-char model, batch 12.
    'gpt2_small': Shape(12, 12, 768, 1024, 1, 50257),
    # GPT-2 small at a GPU's batch, both at nanoGPT's padded vocabulary (50304 rows).
    'gpt2_small_gpu': Shape(12, 12, 768, 1024, 16, 50304),
}

# What each CLI adds on an NVIDIA GPU, as a GPU user runs it: bfloat16 compute over
# float32 parameters; nanoGPT compiles its model (torch.compile) and we run cuDNN's
# flash attention.
GPU_FLAGS = {
    'ours': ('--config.model.dtype=bfloat16', '--config.model.attention_impl=cudnn'),
    'nanogpt': ('--device=cuda', '--compile=True', '--dtype=bfloat16'),
}


def ours_command(shape: Shape, workdir: str, steps: int, log_every: int,
                 extra: Tuple[str, ...] = ()) -> List[str]:
  """`python -m transformer_jax.main` on nanoGPT's recipe (`shakespeare_char:nanogpt`)
  at `shape`, no dropout, one eval batch at the end, no samples."""
  args = [sys.executable, '-m', 'transformer_jax.main', '--config=shakespeare_char:nanogpt',
          f'--workdir={workdir}', f'--config.model.num_layers={shape.layers}',
          f'--config.model.num_heads={shape.heads}', f'--config.model.d_model={shape.d_model}',
          f'--config.model.max_len={shape.ctx}', f'--config.seq_len={shape.ctx}',
          f'--config.batch_size={shape.batch}', f'--config.total_steps={steps}',
          f'--config.log_every={log_every}', f'--config.eval_every={steps}',
          '--config.eval_steps=1', f'--config.checkpoint_every={steps}',
          '--config.num_samples=0', '--config.model.dropout_rate=0.0']
  if shape.vocab:
    args.append(f'--config.model.vocab_size={shape.vocab}')
  return args + list(extra)


def run_config(shape: Shape, remat: str = 'none'):
  """The run config ours_command trains at `shape` (nanoGPT's recipe, no dropout)."""
  from transformer_jax.configs import shakespeare_char  # pylint: disable=g-import-not-at-top
  config = shakespeare_char.get_config('nanogpt')
  config.model.update(num_layers=shape.layers, num_heads=shape.heads, d_model=shape.d_model,
                      max_len=shape.ctx, dropout_rate=0.0, remat=remat)
  if shape.vocab:
    config.model.vocab_size = shape.vocab
  config.update(seq_len=shape.ctx, batch_size=shape.batch)
  return config


def nanogpt_command(shape: Shape, iters: int, extra: Tuple[str, ...] = ()) -> List[str]:
  """nanoGPT's README CPU command over config/train_shakespeare_char.py at `shape`:
  float32 eager PyTorch, an eval of one batch at iter 0 only, a line every iter;
  `extra` flags come last and win (GPU_FLAGS['nanogpt'] on a GPU).
  `iters` + 1 iterations run (nanoGPT stops after iter `max_iters`)."""
  return [sys.executable, 'train.py', 'config/train_shakespeare_char.py', '--device=cpu',
          '--compile=False', '--eval_iters=1', f'--eval_interval={iters + 1000}',
          '--log_interval=1', f'--block_size={shape.ctx}', f'--batch_size={shape.batch}',
          f'--n_layer={shape.layers}', f'--n_head={shape.heads}', f'--n_embd={shape.d_model}',
          f'--max_iters={iters}', f'--lr_decay_iters={iters}', '--dropout=0.0',
          '--always_save_checkpoint=False', '--out_dir=out', *extra]


def check_nanogpt_dir(nanogpt_dir: str):
  """Exits with one line unless `nanogpt_dir` holds what nanogpt_workspace links (scripts
  call it first, so a wrong path costs no run of ours)."""
  nanogpt_dir = os.path.abspath(nanogpt_dir)
  missing = [p for p in ('train.py', 'model.py', 'configurator.py',
                         'config/train_shakespeare_char.py', 'data/shakespeare_char/train.bin',
                         'data/shakespeare_char/val.bin', 'data/shakespeare_char/meta.pkl')
             if not os.path.exists(os.path.join(nanogpt_dir, p))]
  if missing:
    sys.exit(f'--nanogpt_dir={nanogpt_dir} lacks {", ".join(missing)}; see the docstring of '
             'benchmarks/cli_runs.py for how to get nanoGPT and prepare its data.')


def nanogpt_workspace(nanogpt_dir: str, shape: Shape) -> str:
  """A scratch directory of links to nanoGPT's files. For a shape with its own vocabulary
  the data directory leaves out meta.pkl, so nanoGPT's GPT gets its default 50304 rows
  (GPT-2's 50257 padded up, as nanoGPT does)."""
  check_nanogpt_dir(nanogpt_dir)
  nanogpt_dir = os.path.abspath(nanogpt_dir)
  work = tempfile.mkdtemp(prefix='nanogpt_')
  for name in ('train.py', 'model.py', 'configurator.py', 'config'):
    os.symlink(os.path.join(nanogpt_dir, name), os.path.join(work, name))
  data = os.path.join(work, 'data', 'shakespeare_char')
  os.makedirs(data)
  for name in ('train.bin', 'val.bin') + (() if shape.vocab else ('meta.pkl',)):
    os.symlink(os.path.join(nanogpt_dir, 'data', 'shakespeare_char', name),
               os.path.join(data, name))
  return work


@dataclasses.dataclass
class Run:
  """A finished (or stopped) child: its output lines with their arrival time in
  seconds after launch, exit status, wall seconds and peak RSS in MiB."""
  lines: List[Tuple[float, str]]
  returncode: int
  seconds: float
  max_rss_mib: float

  def first(self, pattern: str) -> Optional[float]:
    """Seconds after launch at which a line matching `pattern` arrived."""
    return next((t for t, line in self.lines if re.search(pattern, line)), None)

  def tail(self, n: int = 15) -> str:
    return '\n'.join(line for _, line in self.lines[-n:])


def run(command: List[str], cwd: str, stop_at: Optional[str] = None,
        env: Optional[dict] = None) -> Run:
  """Runs `command`, timestamping each line of its merged output; with `stop_at`, kills
  it at the first line matching that pattern. Raises RuntimeError on a failure."""
  env = dict(os.environ, PYTHONUNBUFFERED='1', **(env or {}))
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  start = time.perf_counter()
  proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1)
  lines, stopped = [], False
  for line in proc.stdout:
    lines.append((time.perf_counter() - start, line.rstrip('\n')))
    if stop_at and re.search(stop_at, line):
      proc.kill()
      stopped = True
      break
  proc.stdout.close()
  _, status, usage = os.wait4(proc.pid, 0)
  seconds = time.perf_counter() - start
  proc.returncode = os.waitstatus_to_exitcode(status)
  result = Run(lines, proc.returncode, seconds, usage.ru_maxrss / 1024)
  if proc.returncode != 0 and not stopped:
    raise RuntimeError(f'{" ".join(command)} failed ({proc.returncode}):\n{result.tail()}')
  return result


def nanogpt_iter_ms(result: Run) -> List[float]:
  """nanoGPT's per-iteration times, `iter N: loss L, time X ms`, in order from iter 0."""
  return [float(m.group(1)) for _, line in result.lines
          for m in [re.search(r'^iter \d+: .*time ([\d.]+)ms', line)] if m]


def ours_tokens_per_sec(workdir: str) -> List[float]:
  """tokens_per_sec of each train record in the workdir's metrics.jsonl, in order."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return [r['tokens_per_sec'] for r in records if r['split'] == 'train']


def load() -> str:
  """The 1, 5 and 15 minute load averages, as `uptime` prints them."""
  with open('/proc/loadavg') as f:
    return ' '.join(f.read().split()[:3])
