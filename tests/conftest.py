"""Shared fixtures: the default experiment's config and a tiny version of it."""

import os
import sys
import tempfile

import pytest

from transformer_jax import configs

# XLA on CPU compiles a step in seconds to tens of seconds on 2 cores; tests (and
# the subprocesses they start) compile the same small programs again and again,
# so they share JAX's persistent compilation cache (keyed by program and flags).
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'transformer_jax_test_jax_cache'))
if 'jax' in sys.modules:
  sys.modules['jax'].config.update('jax_compilation_cache_dir',
                                   os.environ['JAX_COMPILATION_CACHE_DIR'])

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A model small enough that a step takes milliseconds, on the real Shakespeare
# pipeline; dropout on so that resuming must also restore the dropout key.
TINY = {'model.num_layers': 1, 'model.d_model': 32, 'model.num_heads': 2,
        'model.dropout_rate': 0.1, 'seq_len': 32, 'batch_size': 4, 'total_steps': 6,
        'warmup_steps': 4, 'log_every': 1, 'eval_every': 1000, 'eval_steps': 2,
        'checkpoint_every': 3, 'num_samples': 0}


def load_config(spec: str = 'shakespeare_char'):
  return configs.load(spec)


def override(config, values: dict):
  """Sets dotted fields, e.g. {'model.num_layers': 1}."""
  config = config.copy_and_resolve_references()
  for name, value in values.items():
    *path, field = name.split('.')
    node = config
    for part in path:
      node = node[part]
    node[field] = value
  return config


def override_flags(values: dict) -> list:
  """The same overrides as command-line flags."""
  return [f'--config.{name}={value}' for name, value in values.items()]


@pytest.fixture
def char_config():
  return load_config()


@pytest.fixture
def tiny_config():
  return lambda **values: override(
      load_config(), {**TINY, **{k.replace('__', '.'): v for k, v in values.items()}})
