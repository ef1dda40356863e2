"""`config.init_from`: a new run's first parameters from another run (pretrain, then fine-tune).

  --config.init_from=runs/mlm          the best checkpoint of runs/mlm (lowest eval loss),
                                       else its latest
  --config.init_from=runs/mlm:latest   its latest;  runs/mlm:1500  its step 1500
  --config.init_from=hf:PATH           a Hugging Face GPT-2 or BERT directory (hf.py), or a Hub
                                       id read from the Hugging Face cache (hub.py)

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

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import config as config_lib
from transformer_jax import hf
from transformer_jax import hub
from transformer_jax import params as params_lib
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
  """Gives a new run the source run's vocabulary (before its data is built): a run
  directory's tokenizer/, or the one this project's export wrote beside a Hugging
  Face checkpoint (`hf.export`; a checkpoint of others has its own tokenizer files,
  which tokenizer=hf reads in place).

  Raises:
    ConfigError: config.init_from names a Hub id neither cached nor downloadable.
  """
  if not config.init_from:
    return
  if hf.is_hf(config.init_from):
    try:
      source = hub.local_dir(config.init_from[len(config_lib.HF_PREFIX):])
    except ConfigError as e:
      raise ConfigError(f'config.init_from={config.init_from}: {e}') from None
  else:
    source, _ = parse(config.init_from)
  source_dir = os.path.join(source, tokenizers.RUN_DIRECTORY)
  target_dir = os.path.join(workdir, tokenizers.RUN_DIRECTORY)
  if tokenizers.is_saved(source_dir) and not tokenizers.is_saved(target_dir):
    shutil.copytree(source_dir, target_dir, dirs_exist_ok=True)


def load(config, fresh: dict, tokenizer=None) -> tuple:
  """(params, report line) for a run starting with config.init_from set
  (`tokenizer`: the run's, which a Hugging Face checkpoint checks: hf.load).

  Raises:
    FileNotFoundError: the source is not a run directory with checkpoints, or
      lacks the step asked for.
    ConfigError: see `params.merge` (and `hf.load` for hf:PATH).
  """
  if hf.is_hf(config.init_from):
    return hf.load(config, fresh, tokenizer)
  source, which = parse(config.init_from)
  if not os.path.isdir(os.path.join(source, 'checkpoints')):
    raise FileNotFoundError(f'config.init_from={config.init_from}: {source} is not a run '
                            'directory with checkpoints; give the --workdir of a trained run.')
  with checkpoint_lib.Checkpointer(source, config, writable=False) as source_checkpoints:
    step = source_checkpoints.select(which)
    params = source_checkpoints.read_params(step)
  merged, report = params_lib.merge(fresh, params, config.init_from)
  return merged, f'Initialised from {source} step {step}: {report}.'
