"""Parameter trees: flat names, and one tree's arrays merged into another's.

A parameter's name is its path in the nested dict Flax keeps, joined by '/'
('encoder/layer_0/self_attention/query/kernel'). `init_from` (another run's
checkpoint) and `hf` (a Hugging Face checkpoint) both start a model from
arrays named so, through `merge`.
"""

import numpy as np

from transformer_jax import config as config_lib

ConfigError = config_lib.ConfigError


def flatten(tree: dict) -> dict:
  """{'a': {'b': x}} -> {'a/b': x}."""
  return config_lib.flatten(tree, '/')


def unflatten(flat: dict) -> dict:
  """{'a/b': x} -> {'a': {'b': x}}: the inverse of `flatten`."""
  tree = {}
  for name, value in flat.items():
    *path, leaf = name.split('/')
    node = tree
    for part in path:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def names(items: list, limit: int = 6) -> str:
  """The first `limit` items, comma-separated, and how many more."""
  shown = ', '.join(items[:limit])
  return shown + (f' and {len(items) - limit} more' if len(items) > limit else '')


def merge(fresh: dict, loaded: dict, source: str) -> tuple:
  """(params, report): `fresh` (the new model's initial parameters) with every
  array of `loaded` whose name and shape match; both are nested dicts.

  Raises:
    ConfigError: a name matches with another shape, or no name matches at all.
  """
  fresh_flat, loaded_flat = flatten(fresh), flatten(loaded)
  mismatched = [f'{n} (source {tuple(np.shape(loaded_flat[n]))}, model '
                f'{tuple(np.shape(v))})' for n, v in fresh_flat.items()
                if n in loaded_flat and np.shape(loaded_flat[n]) != np.shape(v)]
  if mismatched:
    raise ConfigError(f'config.init_from={source} has parameters of other shapes than this '
                      f'model: {names(mismatched, 4)}; match the model to the source '
                      '(d_model, num_heads, ffn_ratio, vocabulary) or start from scratch.')
  matched = [n for n in fresh_flat if n in loaded_flat]
  if not matched:
    raise ConfigError(f'config.init_from={source}: none of its parameter names is in this model '
                      f'(it has {names(sorted(loaded_flat), 3)}); is it the same model family?')
  new = [n for n in fresh_flat if n not in loaded_flat]
  dropped = sorted(n for n in loaded_flat if n not in fresh_flat)
  merged = {n: np.asarray(loaded_flat[n], dtype=np.asarray(v).dtype) if n in loaded_flat else v
            for n, v in fresh_flat.items()}
  count = sum(int(np.size(loaded_flat[n])) for n in matched)
  report = (f'{len(matched)} arrays loaded ({count:,} parameters); '
            f'new, initialised fresh: {names(new) if new else "none"}; '
            f'dropped: {names(dropped) if dropped else "none"}')
  return unflatten(merged), report
