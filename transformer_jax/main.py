"""Command-line entry point: flags only; the work lives in importable modules.

  python -m transformer_jax.main --config=experiments/configs/wmt14_ende_base.py --mode=describe
  python -m transformer_jax.main --config=... --config.model.num_heads=4 --mode=describe

Modes:
  describe  print the model's shape, parameter count and FLOPs per token as one
            JSON object on the last line of stdout, without training.
"""

import json
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from transformer_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file (get_config()).',
                                          lock_config=True)
_MODE = flags.DEFINE_enum('mode', 'describe', ['describe'], 'What to do.')


def describe(config) -> dict:
  from transformer_jax.models import accounting  # pylint: disable=g-import-not-at-top
  return accounting.describe(config.model, config.seq_len)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  if config is None:
    raise app.UsageError('--config is required, e.g. --config=experiments/configs/wmt14_ende_base.py')
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    sys.exit(f'Config error: {e}')
  if _MODE.value == 'describe':
    print(json.dumps(describe(config)))


if __name__ == '__main__':
  app.run(main)
