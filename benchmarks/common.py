"""What every benchmark result starts with: date, machine, versions, command."""

import datetime
import json
import os
import platform
import sys

import jax


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
