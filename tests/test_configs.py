"""Every experiment config, and its quick variant, loads and validates; the
quick variants are small enough for a CPU."""

import glob
import inspect
import os
import runpy

import pytest

from transformer_jax import config as config_lib
from transformer_jax.models import accounting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, 'experiments', 'configs', '*.py')))


def test_the_paper_and_task_configs_are_all_here():
  names = {os.path.basename(p) for p in CONFIGS}
  assert {'shakespeare_char.py', 'shakespeare_mlm.py', 'shakespeare_genre.py', 'cmudict_g2p.py',
          'wmt14_ende_base.py', 'wmt14_ende_big.py', 'lm1b.py'} <= names


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_config_and_quick_variant_validate(path):
  module = runpy.run_path(path)
  assert 'python -m transformer_jax.main' in module['__doc__'], 'the docstring gives the command'
  full = module['get_config']()
  config_lib.validate(full)
  assert 'arg' in inspect.signature(module['get_config']).parameters, 'a quick variant'
  quick = module['get_config']('quick')
  config_lib.validate(quick)
  assert ':quick' in module['__doc__']
  assert accounting.count_params(quick.model) < 2_000_000
  assert quick.total_steps <= 500
  with pytest.raises(ValueError, match='Unknown config argument'):
    module['get_config']('no_such_variant')


def test_big_is_the_base_model_scaled_up():
  base = runpy.run_path(os.path.join(REPO, 'experiments', 'configs', 'wmt14_ende_base.py'))
  big = runpy.run_path(os.path.join(REPO, 'experiments', 'configs', 'wmt14_ende_big.py'))
  b, g = base['get_config'](), big['get_config']()
  assert (g.model.d_model, g.model.num_heads, g.model.dropout_rate) == (1024, 16, 0.3)
  assert g.data.to_dict() == b.data.to_dict()
  assert abs(accounting.count_params(g.model) / 1e6 - 213) / 213 < 0.07  # Table 3: 213M.
