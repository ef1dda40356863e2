"""Host memory reuse for XLA:CPU training steps.

XLA:CPU allocates each step's temporaries as one block (1.36 GB for the
6x6x384 LM at batch 12, context 256). glibc's malloc serves a block that large
with a fresh `mmap` and returns it with `munmap` on free, so every step
page-faults its whole working set in again: 332,000 minor faults and 1.2 s of
kernel time per 5 s step, measured on the 2-core benchmark machine
(benchmarks/README.md). PyTorch does not pay this, its tensors being small
enough for malloc's heap.

`keep_freed_memory()` makes malloc keep what it frees for the next step: one
arena (so XLA's worker threads allocate from the main heap, which can grow to
any size, instead of per-thread arenas that must `mmap` large blocks), no
`mmap`, and no trimming. The step then reuses the same pages: zero faults in
steady state. The price is that the process keeps its peak heap until exit,
which a training process does anyway.
"""

import ctypes
import platform

# mallopt(3) parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def keep_freed_memory() -> bool:
  """Tunes glibc malloc as described above; returns whether it applied.

  Call it before JAX creates its CPU client (before the first computation or
  `jax.devices()`): threads started earlier keep the arenas they already have.
  Does nothing (returns False) off Linux/glibc.
  """
  if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
    return False
  try:
    mallopt = ctypes.CDLL('libc.so.6').mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  # -1 reads as SIZE_MAX inside glibc: never mmap, never trim.
  settings = ((M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, -1), (M_TRIM_THRESHOLD, -1))
  return all(mallopt(param, value) == 1 for param, value in settings)
