"""The experiment configs, one module each, and the loader every entry point uses.

A config module has `get_config(arg='')` returning a ConfigDict, and `ARGS`, a
dict {arg: what it gives} of the variants it accepts after a colon
(`shakespeare_char:quick`); `get_config` checks its arg with `parse_arg`.

A config is named by a spec: a packaged module's name (`shakespeare_char` or
`transformer_jax.configs.shakespeare_char`), any importable module, or the
path of a .py file, each optionally followed by `:arg`:

  config = configs.load('cmudict_g2p:cpu')
  config = configs.load('my_configs/char_small.py')
"""

import importlib
import importlib.util
import inspect
import os
import pkgutil
from typing import Mapping, Tuple

from ml_collections import config_dict

from transformer_jax import config as config_lib

PACKAGE = __name__
NAMES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)))


def parse_arg(arg: str, known: Mapping[str, str]) -> str:
  """The `:arg` of a config: '' or one of `known`; anything else is a ConfigError."""
  if arg and arg not in known:
    choices = ', '.join(repr(k) for k in known)
    raise config_lib.ConfigError(
        f'unknown config argument {arg!r}; use one of {choices} or none.')
  return arg


def split(spec: str) -> Tuple[str, str]:
  """'name_or_path:arg' -> (name_or_path, arg)."""
  source, _, arg = spec.partition(':')
  return source, arg


def _is_path(source: str) -> bool:
  return source.endswith('.py') or os.sep in source or '/' in source


def _load_file(path: str):
  """A user's config file as a module; missing or broken files are ConfigErrors."""
  if not os.path.isfile(path):
    raise config_lib.ConfigError(
        f'config file {path} does not exist; give a .py file or one of {", ".join(NAMES)}.')
  name = '_config_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise config_lib.ConfigError(
        f'config file {path} does not parse: {e.msg} (line {e.lineno}); fix its Python.') from e
  except Exception as e:  # pylint: disable=broad-except
    message = ' '.join(str(e).split())
    raise config_lib.ConfigError(
        f'config file {path} fails to load: {type(e).__name__}: {message}; fix the file.') from e
  return module


def _import(source: str):
  """A packaged config by short name, or any importable module by dotted name."""
  name = source if '.' in source else f'{PACKAGE}.{source}'
  try:
    return importlib.import_module(name)
  except ModuleNotFoundError as e:
    if e.name is None or not name.startswith(e.name):  # the module exists; an import inside failed.
      raise
  raise config_lib.ConfigError(
      f'no config named {source!r}; use one of {", ".join(NAMES)}, a module name or a .py path.')


def load_module(spec: str):
  """The module a spec names (its `:arg`, if any, is not used here)."""
  source, _ = split(spec)
  if not source:
    raise config_lib.ConfigError(f'empty config {spec!r}; use one of {", ".join(NAMES)}.')
  module = _load_file(source) if _is_path(source) else _import(source)
  if not callable(getattr(module, 'get_config', None)):
    raise config_lib.ConfigError(f'config {source} has no get_config(); define one there.')
  return module


def load(spec: str):
  """The ConfigDict a spec names: the module's get_config(arg); a get_config that
  cannot take the arg or returns no ConfigDict is a ConfigError."""
  module = load_module(spec)
  source, arg = split(spec)
  if arg and hasattr(module, 'ARGS'):
    try:
      parse_arg(arg, module.ARGS)
    except config_lib.ConfigError as e:
      raise config_lib.ConfigError(f'{source}: {e}') from None
  if arg:
    try:
      inspect.signature(module.get_config).bind(arg)
    except TypeError:
      raise config_lib.ConfigError(
          f'config {source}: get_config() takes no argument, so :{arg} cannot be passed; drop '
          f':{arg} or define get_config(arg).') from None
  config = module.get_config(arg) if arg else module.get_config()
  if not isinstance(config, config_dict.ConfigDict):
    raise config_lib.ConfigError(
        f'config {source}: get_config() returned a {type(config).__name__}, not a ConfigDict; '
        'return transformer_jax.config.base_config() with your changes.')
  return config


def config_file(spec: str) -> str:
  """The spec as 'file.py[:arg]', the form ml_collections' config flags read."""
  module = load_module(spec)
  _, arg = split(spec)
  return module.__file__ + (f':{arg}' if arg else '')


def name(spec: str) -> str:
  """A config's short name: 'shakespeare_char' for any spec of that config."""
  source, _ = split(spec)
  if _is_path(source):
    return os.path.splitext(os.path.basename(source))[0]
  return source.rsplit('.', 1)[-1]

