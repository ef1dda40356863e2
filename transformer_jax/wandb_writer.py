"""Weights & Biases logging of a training run (config.wandb; the `wandb` extra).

run_log.MetricWriter hands every record to `WandbWriter` as well, once
config.wandb.enabled: scalars as `<split>/<name>` against the run's `step`
(optimizer updates done), text samples as tables, the resolved config as the
W&B run's config. The W&B run is named after the workdir; its id is kept in
<workdir>/wandb/run_id, so a resumed run continues the same W&B run, and its
files (offline runs too: `wandb sync <workdir>/wandb/offline-run-*`) lie in
<workdir>/wandb/. A sweep's runs (<sweep workdir>/runs/<name>) share the
sweep's name as their W&B group unless config.wandb.group names one.

Records are logged against a `step` metric rather than W&B's own step, which
must only grow: a resumed run trains again the steps past its checkpoint, and
those records reach W&B too (metrics.jsonl keeps each step once: run_log.py).
"""

import json
import os
from typing import Optional

import wandb

RUNS_DIRECTORY = 'runs'  # sweep.py's layout: <sweep workdir>/runs/<run name>.


def group(workdir: str, configured: str) -> Optional[str]:
  """The W&B group of the run in `workdir`: config.wandb.group, else the sweep's
  name for a sweep's run, else none."""
  if configured:
    return configured
  parent = os.path.dirname(os.path.abspath(workdir))
  if os.path.basename(parent) == RUNS_DIRECTORY:
    return os.path.basename(os.path.dirname(parent))
  return None


class WandbWriter:
  """One W&B run per workdir, continued on resume (process 0 only)."""

  def __init__(self, workdir: str, config):
    w = config.wandb
    directory = os.path.join(workdir, 'wandb')
    os.makedirs(directory, exist_ok=True)
    id_path = os.path.join(directory, 'run_id')
    run_id = None
    if os.path.exists(id_path):
      with open(id_path) as f:
        run_id = f.read().strip() or None
    self._run = wandb.init(
        project=w.project, entity=w.entity or None, group=group(workdir, w.group),
        name=os.path.basename(os.path.abspath(workdir)), id=run_id, resume='allow',
        dir=workdir, mode=w.mode or None, config=json.loads(config.to_json_best_effort()))
    if run_id is None:
      with open(id_path, 'w') as f:
        f.write(self._run.id + '\n')
    self._run.define_metric('step')
    self._run.define_metric('*', step_metric='step')

  def write(self, step: int, split: str, values: dict):
    self._run.log({'step': int(step), **{f'{split}/{k}': float(v) for k, v in values.items()}})

  def write_texts(self, step: int, tag: str, texts: list):
    self._run.log({'step': int(step),
                   tag: wandb.Table(columns=[tag], data=[[text] for text in texts])})

  def close(self):
    self._run.finish()
