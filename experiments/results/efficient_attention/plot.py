"""Table and plots of the efficient_attention sweep from its results.csv.

  python experiments/results/efficient_attention/plot.py [results.csv] [out_dir]

Writes summary.md (one row per setting and context: final eval loss, train
tokens/s and run seconds, mean +/- std over seeds) and loss_and_time.png.
"""

import csv
import math
import os
import sys

from matplotlib.figure import Figure

HERE = os.path.dirname(os.path.abspath(__file__))


def setting(row) -> str:
  kind = row['model.attention']
  if kind == 'local':
    return f"local w={row['model.attention_window']}"
  if kind == 'linear':
    return f"linear m={row['model.num_random_features']}"
  kv = row['model.num_kv_heads']
  return 'full (4 kv heads)' if kv == '4' else f'full, {kv} kv head' + ('s' if kv != '1' else '')


ORDER = ['full (4 kv heads)', 'full, 2 kv heads', 'full, 1 kv head', 'local w=32', 'local w=128',
         'linear m=32', 'linear m=128']


def mean_std(values):
  mean = sum(values) / len(values)
  return mean, math.sqrt(sum((v - mean)**2 for v in values) / max(len(values) - 1, 1))


def main(path=os.path.join(HERE, 'results.csv'), out=HERE):
  with open(path) as f:
    rows = [r for r in csv.DictReader(f) if r['status'] == 'ok']
  contexts = sorted({int(r['seq_len']) for r in rows})
  stats = {}
  for r in rows:
    stats.setdefault((setting(r), int(r['seq_len'])), []).append(r)
  lines = ['| setting | context | params | FLOPs/token | eval loss | train tokens/s | run seconds '
           '| seeds |', '|---|---|---|---|---|---|---|---|']
  for n in contexts:
    for name in ORDER:
      runs = stats.get((name, n), [])
      if not runs:
        continue
      loss = mean_std([float(r['eval_loss']) for r in runs])
      speed = mean_std([float(r['train_tokens_per_sec']) for r in runs])
      seconds = mean_std([float(r['seconds']) for r in runs])
      lines.append(f"| {name} | {n} | {int(runs[0]['params']):,} | "
                   f"{float(runs[0]['flops_per_token']):.3g} | {loss[0]:.4f} ± {loss[1]:.4f} | "
                   f"{speed[0]:,.0f} ± {speed[1]:,.0f} | {seconds[0]:.0f} ± {seconds[1]:.0f} | "
                   f"{len(runs)} |")
  with open(os.path.join(out, 'summary.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))

  fig = Figure(figsize=(11, 4.2))
  axes = fig.subplots(1, 2)
  width = 0.8 / len(contexts)
  for i, n in enumerate(contexts):
    names = [s for s in ORDER if (s, n) in stats]
    xs = [ORDER.index(s) + (i - (len(contexts) - 1) / 2) * width for s in names]
    for ax, key in zip(axes, ('eval_loss', 'train_tokens_per_sec')):
      values = [mean_std([float(r[key]) for r in stats[s, n]]) for s in names]
      ax.bar(xs, [v[0] for v in values], width, yerr=[v[1] for v in values], capsize=3,
             label=f'context {n}')
  for ax, label in zip(axes, ('final eval loss (mean ± std, 2 seeds)', 'train tokens/s')):
    ax.set_xticks(range(len(ORDER)))
    ax.set_xticklabels(ORDER, rotation=30, ha='right', fontsize=8)
    ax.set_ylabel(label)
    ax.grid(alpha=0.3, axis='y')
    ax.legend(fontsize=8)
  losses = [float(r['eval_loss']) for r in rows]
  axes[0].set_ylim(min(losses) - 0.05, max(losses) + 0.03)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'loss_and_time.png'), dpi=120)


if __name__ == '__main__':
  main(*sys.argv[1:])
