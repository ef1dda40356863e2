"""What every benchmark shares: its flags' checks, its start and its result's header.

A flag value that cannot work (a word where a number goes, no rounds, an unknown
shape, an output path that cannot be written, a missing peer package) stops the
script before its first run with one line naming the flag and what it takes:
absl's own validators for the flags, `require` for the peers, `run` for a
config that the flags built and that cannot work.
"""

import datetime
import importlib.util
import json
import os
import platform
import sys
from typing import Callable, Iterable, Sequence

from absl import app
from absl import flags
import jax

from transformer_jax import config as config_lib


def define_int_list(name: str, default: Sequence[str], help_text: str, lower_bound: int = 1,
                    min_length: int = 1, flag_values: flags.FlagValues = flags.FLAGS):
  """A comma-separated list flag of at least `min_length` integers, each >= `lower_bound`
  (its values stay strings, as absl's list flags give them)."""
  flags.DEFINE_list(name, list(default), help_text, flag_values=flag_values)

  def check(values):
    if len(values) < min_length:
      raise flags.ValidationError(f'give at least {min_length} comma-separated integer(s).')
    for value in values:
      try:
        number = int(value)
      except ValueError:
        raise flags.ValidationError(f'{value!r} is not an integer.') from None
      if number < lower_bound:
        raise flags.ValidationError(f'{value} is below {lower_bound}; each value must be at '
                                    f'least {lower_bound}.')
    return True

  flags.register_validator(name, check, flag_values=flag_values)


def define_choice_list(name: str, default: Sequence[str], choices: Iterable[str],
                       help_text: str, allow_empty: bool = False,
                       flag_values: flags.FlagValues = flags.FLAGS):
  """A comma-separated list flag of one or more of `choices` (or none, `allow_empty`)."""
  choices = list(choices)
  flags.DEFINE_list(name, list(default), f'{help_text} From {", ".join(choices)}.',
                    flag_values=flag_values)

  def check(values):
    unknown = [v for v in values if v not in choices]
    if unknown or not (values or allow_empty):
      raise flags.ValidationError(
          f'{"unknown " + ", ".join(map(repr, unknown)) if unknown else "empty"}; '
          f'give one or more of {", ".join(choices)}.')
    return True

  flags.register_validator(name, check, flag_values=flag_values)


def require_above_zero(*names: str, flag_values: flags.FlagValues = flags.FLAGS):
  """Registers a check that each named number flag is above 0."""
  for name in names:
    flags.register_validator(name, lambda value: value > 0, 'must be above 0.',
                             flag_values=flag_values)


def _writable(path: str) -> bool:
  """Whether a file can be written at `path`, its missing folders made (write_json)."""
  if not path:
    return True
  path = os.path.abspath(path)
  if os.path.isdir(path):
    raise flags.ValidationError('is a directory; give a file path.')
  parent = os.path.dirname(path)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise flags.ValidationError(f'{parent} is not a writable directory; give a path where '
                                'the results can be written.')
  return True


def check_output(name: str = 'output', flag_values: flags.FlagValues = flags.FLAGS):
  """Checks the results path flag at start, not after the runs that fill it."""
  flags.register_validator(name, _writable, flag_values=flag_values)


def require(*modules: str):
  """Exits with one line unless each module (a peer: torch, transformers) is installed."""
  missing = [m for m in modules if importlib.util.find_spec(m) is None]
  if missing:
    sys.exit(f'{os.path.basename(sys.argv[0])} needs {" and ".join(missing)} for its peer '
             f'(not a dependency of transformer_jax): pip install {" ".join(missing)}')


def run(main: Callable):
  """app.run(main), where a config that the flags built and that cannot work ends the
  script with its one-line ConfigError instead of a traceback."""

  def checked(argv):
    try:
      return main(argv)
    except config_lib.ConfigError as e:
      sys.exit(f'Config error: {e}')

  app.run(checked)


def machine() -> str:
  """'<cpu model>, <n> cores' or the accelerators' count and name."""
  device = jax.devices()[0]
  if device.platform != 'cpu':
    return f'{jax.device_count()} x {device.device_kind}'
  try:
    with open('/proc/cpuinfo') as f:
      model = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    model = platform.processor()
  return f'{model}, {os.cpu_count()} cores'


def environment(with_torch: bool = False) -> dict:
  """Date, machine, versions (PyTorch's too when it is a peer) and the command."""
  import flax  # pylint: disable=g-import-not-at-top
  versions = {'jax': jax.__version__, 'flax': flax.__version__}
  if with_torch:
    import torch  # pylint: disable=g-import-not-at-top
    versions['torch'] = torch.__version__
  versions['python'] = platform.python_version()
  return {'date': datetime.datetime.now().isoformat(timespec='seconds'), 'machine': machine(),
          'versions': versions, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'command': 'python ' + ' '.join(sys.argv)}


def print_environment(env: dict):
  print(f"\n{env['machine']}; {env['date']}; " +
        ', '.join(f'{k} {v}' for k, v in env['versions'].items()))
  print(f"command: {env['command']}\n")


def write_json(result: dict, path: str):
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w') as f:
    json.dump(result, f, indent=1)
