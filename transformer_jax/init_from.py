"""`config.init_from`: a new run's first parameters from another run (pretrain, then fine-tune).

  --config.init_from=runs/mlm          the best checkpoint of runs/mlm (lowest eval loss),
                                       else its latest
  --config.init_from=runs/mlm:latest   its latest;  runs/mlm:1500  its step 1500
  --config.init_from=hf:PATH           a Hugging Face GPT-2 or BERT directory (hf.py)

Read once, at the run's first start: a run that has a checkpoint of its own
resumes from that. Every parameter of the new model whose name and shape match
one of the source's is copied; the new model's other parameters (a classifier
on an MLM encoder) keep their fresh initialisation and the source's others (the
MLM head) are dropped; the optimizer state and the step start fresh. One line
says what was loaded, what is new and what was dropped. A name that matches
with another shape is refused in one line naming it. The new run takes the
source's vocabulary (its tokenizer/ is copied before the data is built), so a
token id means what it meant when the source was trained.
"""

import os
import shutil
import numpy as np

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import config as config_lib
from transformer_jax.data import tokenizers

ConfigError = config_lib.ConfigError


def parse(spec: str) -> tuple:
  """'runs/mlm[:latest|:best|:STEP]' -> (workdir, 'latest' | 'best' | step)."""
  path, _, which = spec.rpartition(':') if ':' in spec else (spec, '', 'best')
  if which.isdigit():
    return path, int(which)
  if which in ('latest', 'best'):
    return path, which
  return spec, 'best'  # a ':' that is part of the path.


def copy_vocabulary(config, workdir: str):
  """Gives a new run the source run's vocabulary (before its data is built)."""
  if not config.init_from or config.init_from.startswith(config_lib.HF_PREFIX):
    return  # a Hugging Face checkpoint's vocabulary is its tokenizer (tokenizers.HFTokenizer).
  source, _ = parse(config.init_from)
  source_dir = os.path.join(source, tokenizers.RUN_DIRECTORY)
  target_dir = os.path.join(workdir, tokenizers.RUN_DIRECTORY)
  if tokenizers.is_saved(source_dir) and not tokenizers.is_saved(target_dir):
    shutil.copytree(source_dir, target_dir, dirs_exist_ok=True)


def _unflatten(flat: dict) -> dict:
  tree = {}
  for name, value in flat.items():
    *path, leaf = name.split('/')
    node = tree
    for part in path:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def _names(names: list, limit: int = 6) -> str:
  shown = ', '.join(names[:limit])
  return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')


def merge(fresh: dict, loaded: dict, source: str) -> tuple:
  """(params, report): `fresh` (the new model's initial parameters) with every
  array of `loaded` whose name and shape match; both are nested dicts.

  Raises:
    ConfigError: a name matches with another shape, or no name matches at all.
  """
  fresh_flat, loaded_flat = config_lib.flatten(fresh, '/'), config_lib.flatten(loaded, '/')
  mismatched = [f'{n} (source {tuple(np.shape(loaded_flat[n]))}, model '
                f'{tuple(np.shape(v))})' for n, v in fresh_flat.items()
                if n in loaded_flat and np.shape(loaded_flat[n]) != np.shape(v)]
  if mismatched:
    raise ConfigError(f'config.init_from={source} has parameters of other shapes than this '
                      f'model: {_names(mismatched, 4)}; match the model to the source '
                      '(d_model, num_heads, ffn_ratio, vocabulary) or start from scratch.')
  matched = [n for n in fresh_flat if n in loaded_flat]
  if not matched:
    raise ConfigError(f'config.init_from={source}: none of its parameter names is in this model '
                      f'(it has {_names(sorted(loaded_flat), 3)}); is it the same model family?')
  new = [n for n in fresh_flat if n not in loaded_flat]
  dropped = sorted(n for n in loaded_flat if n not in fresh_flat)
  merged = {n: np.asarray(loaded_flat[n], dtype=np.asarray(v).dtype) if n in loaded_flat else v
            for n, v in fresh_flat.items()}
  count = sum(int(np.size(loaded_flat[n])) for n in matched)
  report = (f'{len(matched)} arrays loaded ({count:,} parameters); '
            f'new, initialised fresh: {_names(new) if new else "none"}; '
            f'dropped: {_names(dropped) if dropped else "none"}')
  return _unflatten(merged), report


def load(config, fresh: dict, tokenizer=None) -> tuple:
  """(params, report line) for a run starting with config.init_from set
  (`tokenizer`: the run's, which a Hugging Face checkpoint checks: hf.load).

  Raises:
    FileNotFoundError: the source is not a run directory with checkpoints, or
      lacks the step asked for.
    ConfigError: see `merge` (and `hf.load` for hf:PATH).
  """
  if config.init_from.startswith(config_lib.HF_PREFIX):
    from transformer_jax import hf  # pylint: disable=g-import-not-at-top  # transformers extra.
    return hf.load(config, fresh, tokenizer)
  source, which = parse(config.init_from)
  if not os.path.isdir(os.path.join(source, 'checkpoints')):
    raise FileNotFoundError(f'config.init_from={config.init_from}: {source} is not a run '
                            'directory with checkpoints; give the --workdir of a trained run.')
  with checkpoint_lib.Checkpointer(source, config, writable=False) as source_checkpoints:
    step = source_checkpoints.select(which)
    params = source_checkpoints.read_params(step)
  merged, report = merge(fresh, params, config.init_from)
  return merged, f'Initialised from {source} step {step}: {report}.'
