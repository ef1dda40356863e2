"""A finished run, read only: its parameters, model, tokenizer and step.

`open_run(config, workdir)` is what --mode=eval, --mode=decode and
--mode=export work on. It reads the weights of one checkpoint (the one
config.restore_checkpoint names: latest, best or a step), or the mean of the
last N (average:N), and nothing else of training: no optimiser state, no train
step, no data, no lock on the workdir. The weights are the parameters, or with
config.restore_params=ema their exponential moving average (config.ema_decay,
train.ema_params); `FinishedRun.weights` says which, for the eval record.
So a run can be read while another process trains in it, from a read-only
workdir, and after its training files are moved away: the tokenizer is the
vocabulary the run saved (<workdir>/tokenizer/), not one rebuilt from the data.

The config it is read with must match the checkpoint's in the fields that say
what the parameters are (config.MODEL_FIELDS); the others may differ, as they
only choose what is measured and how (an eval on other held-out data: then the
eval record names them, `overrides`).
"""

import dataclasses
import os
from typing import Any, Iterable, Optional

import jax
import numpy as np
import optax

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import config as config_lib
from transformer_jax import train as train_lib
from transformer_jax.data import datasets as datasets_lib
from transformer_jax.data import tokenizers as tok_lib
from transformer_jax.models.transformer import build_model


@dataclasses.dataclass(frozen=True)
class FinishedRun:
  """One checkpoint of a run, read back."""
  config: Any  # the config it was read with (export: the run's own).
  workdir: str
  step: int  # optimizer updates the parameters had when saved (averaged: the newest's).
  params: Any  # nested dict of arrays (the weights `weights` names).
  # '' (the parameters of checkpoint `step`), or what else `params` are: 'ema',
  # 'average:3 (steps 4, 5, 6)', 'ema average:3 (steps 4, 5, 6)'.
  weights: str
  model: Any  # flax.linen.Module of config.model.
  tokenizer: Optional[tok_lib.Tokenizer]  # the run's own; None for images.
  saved_config: dict  # the config the checkpoint was written with (JSON values).

  def overrides(self) -> dict:
    """{dotted field: value} of the fields `config` differs in from the
    checkpoint's that a resume would refuse (the model's never differ here):
    how an eval of this run measured differently from the run's own evals."""
    current = checkpoint_lib.config_json(self.config)
    return {name: new for name, _, new in
            checkpoint_lib.config_differences(self.saved_config, current)}


def open_run(config, workdir: str, which=None, *, own_config: bool = False) -> FinishedRun:
  """The parameters, model, tokenizer and step of a checkpoint of `workdir`.

  `which` is 'latest' (the newest checkpoint that restores intact: damaged
  newer ones are skipped with one line each, never moved), 'best', a step or
  'average:N' (the mean of the last N checkpoints' weights, as Vaswani et al.
  2017, section 6.1, average the last 5 or 20); None: config.restore_checkpoint.
  The weights are config.restore_params': the parameters or their EMA. With
  `own_config` the run is read with the config it saved with the checkpoint
  (what export does, so that no --config is needed; `config` then only says
  which checkpoint and weights), and the tokenizer is its saved one, if any.

  Raises:
    ConfigError: `config` differs from the checkpoint's in a model field;
      restore_params=ema for a run without an EMA; average:N where fewer than N
      checkpoints are kept.
    FileNotFoundError: no checkpoint in `workdir` (or none at that step).
    NoIntactCheckpoint: no checkpoint (or not that step, or not one of those
      averaged) restores.
    DataError: the saved vocabulary is not of config.data.tokenizer's kind.
  """
  config_lib.validate(config)
  which = config.restore_checkpoint if which is None else which
  part = config.restore_params
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise FileNotFoundError(f'{workdir} holds no checkpoint; train first (--mode=train).')
  with checkpoint_lib.Checkpointer(workdir, config, writable=False) as checkpoints:
    if checkpoints.latest_step() is None:
      raise FileNotFoundError(f'{workdir} holds no checkpoint; train first (--mode=train).')
    saved = checkpoints.saved_config() or {}
    if own_config:
      config = config_lib.from_saved(saved) if saved else config
    else:
      checkpoints.check_compatible()
    decay = config_lib.from_saved(saved).ema_decay if saved else 0.0
    if part == 'ema' and not decay:
      raise config_lib.ConfigError(
          f'config.restore_params=ema, but {workdir} was trained without an EMA of its '
          'parameters (config.ema_decay=0); read its parameters (restore_params=params), or '
          'train a run with --config.ema_decay (e.g. 0.999).')

    def read(step):  # the weights of one checkpoint, as numpy arrays when they are the EMA.
      found, raw = checkpoints.restore_params(step, part)
      return found, (train_lib.ema_params(optax.EmaState(**raw), decay) if part == 'ema'
                     else raw)

    count = config_lib.averaged_checkpoints(which)
    if count:
      steps = checkpoints.last_steps(count)
      step, params = steps[-1], _mean(read(s)[1] for s in steps)
      weights = f'average:{count} (steps {", ".join(map(str, steps))})'
    else:
      step, params = read(None if which == 'latest' else checkpoints.select(which))
      weights = ''
  if part == 'ema':
    weights = f'ema {weights}'.strip()
  tokenizer = _saved_tokenizer(workdir) if own_config else _tokenizer(config, workdir)
  return FinishedRun(config=config, workdir=workdir, step=step, params=params, weights=weights,
                     model=build_model(config.model), tokenizer=tokenizer, saved_config=saved)


def _mean(trees: Iterable):
  """The elementwise mean of parameter trees of one structure, read one at a time
  (one tree and the sum in memory), summed in float64 and cast back to each
  array's dtype (numpy arrays)."""
  total, count, dtypes = None, 0, None
  for tree in trees:
    wide = jax.tree.map(lambda x: np.asarray(x, np.float64), tree)
    total = wide if total is None else jax.tree.map(np.add, total, wide)
    dtypes, count = jax.tree.map(lambda x: x.dtype, tree), count + 1
  return jax.tree.map(lambda t, dtype: (t / count).astype(dtype), total, dtypes)


def _saved_tokenizer(workdir: str) -> Optional[tok_lib.Tokenizer]:
  directory = os.path.join(workdir, tok_lib.RUN_DIRECTORY)
  return tok_lib.load(directory) if tok_lib.is_saved(directory) else None


def _tokenizer(config, workdir: str) -> Optional[tok_lib.Tokenizer]:
  """The run's tokenizer for config's recipe, checked against the model: its
  saved vocabulary, or, for a run that has none saved (its tokenizer directory
  removed), the one its training data builds, as a resume would build it."""
  recipe = datasets_lib.recipe_for(config)(config)
  if not recipe.tokenizes:
    return None
  tokenizer = tok_lib.saved_run_tokenizer(workdir, recipe.tokenizer_name)
  if tokenizer is None:
    tokenizer = recipe.new_tokenizer(None)
  datasets_lib.check_vocab(config, tokenizer)
  return tokenizer
