"""The machine's measured matmul roof, the denominator of every MFU we report.

A large square matmul, jitted, timed best of N: float32 on CPU, bfloat16 on
GPU. The same matmul through PyTorch (MKL / oneDNN on CPU, cuBLAS on an NVIDIA
GPU) is timed too and the roof is the larger of the two, so MFU is never
flattered by a slow baseline.

  python benchmarks/peak.py                    # CPU: f32, n = 2048
  python benchmarks/peak.py --size=8192        # GPU: bf16 (the default dtype there)
"""

import os
import sys
import time
from typing import Optional

from absl import flags
import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common
from transformer_jax import metrics

FLAGS = flags.FLAGS


def _best_seconds(fn, repeats: int) -> float:
  fn()  # compile / warm up
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def torch_matmul_flops(size: int, repeats: int, dtype: str = 'float32',
                       device: str = 'cpu') -> Optional[float]:
  """FLOP/s of the best torch.matmul of two [size, size] `dtype` matrices on
  `device` ('cpu' or 'cuda'); None without torch (or without CUDA for 'cuda')."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  if device == 'cuda' and not torch.cuda.is_available():
    return None
  a = torch.randn(size, size, device=device).to(getattr(torch, dtype))
  b = torch.randn(size, size, device=device).to(getattr(torch, dtype))
  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)

  def matmul():
    torch.matmul(a, b)
    sync()

  with torch.no_grad():
    seconds = _best_seconds(matmul, repeats)
  return 2.0 * size**3 / seconds


def measure(size: int = 0, dtype: str = '', repeats: int = 10) -> dict:
  """{'roof_flops': FLOP/s, ...}: the measured peak of this machine's first device."""
  platform = jax.devices()[0].platform
  dtype = dtype or ('float32' if platform == 'cpu' else 'bfloat16')
  size = size or (2048 if platform == 'cpu' else 8192)
  result = {'platform': platform, 'device_kind': jax.devices()[0].device_kind, 'dtype': dtype,
            'size': size, 'jax_flops': metrics.measured_matmul_flops(size, dtype, repeats)}
  torch_device = {'cpu': 'cpu', 'gpu': 'cuda'}.get(platform)
  result['torch_flops'] = torch_device and torch_matmul_flops(size, repeats, dtype, torch_device)
  result['roof_flops'] = max(result['jax_flops'], result['torch_flops'] or 0.0)
  return result


def main(argv):
  del argv
  result = measure(FLAGS.size, FLAGS.dtype, FLAGS.repeats)
  line = (f"{result['platform']} ({result['device_kind']}) {result['dtype']} matmul "
          f"{result['size']}^3: JAX {result['jax_flops'] / 1e9:.1f} GFLOP/s")
  if result.get('torch_flops'):
    line += f", PyTorch {result['torch_flops'] / 1e9:.1f} GFLOP/s"
  print(line + f"; roof {result['roof_flops'] / 1e9:.1f} GFLOP/s")
  if FLAGS.output:
    common.write_json(result, FLAGS.output)


if __name__ == '__main__':
  # Defined here, not on import, so train_throughput.py can import measure().
  flags.DEFINE_integer('size', 0, 'Matrix side; 0 = 2048 on CPU, 8192 on GPU.', lower_bound=0)
  flags.DEFINE_integer('repeats', 10, 'Timed matmuls; the best one counts.', lower_bound=1)
  # float64 is left out: JAX computes it in float32 unless jax_enable_x64 is set.
  flags.DEFINE_enum('dtype', '', ['', 'float32', 'bfloat16', 'float16'],
                    "'' = float32 on CPU, bfloat16 on GPU.")
  flags.DEFINE_string('output', '', 'Optional JSON file for the result.')
  common.check_output()
  common.run(main)
