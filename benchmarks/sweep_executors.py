"""A sweep's wall time with the local executor and with Ray, and Ray's cost per run.

The same 4-point grid (heads x seeds) of a small character LM, trained from
scratch in a fresh workdir per configuration, with:

- local: `--executor=local`, one run after another;
- ray, 1 at once: a local Ray instance of 1 CPU, each run {"CPU": 1};
- ray, 2 at once: a local Ray instance of 2 CPUs, each run {"CPU": 1};
- ray, 2 at once, 1 XLA thread: as above, each run's XLA CPU client held to one
  thread (XLA_FLAGS through Ray's runtime_env), to see whether two runs sharing
  2 cores lose to each other's thread pools.

Launch to first step, per run: from the moment the executor had the run (the
sweep's start after the Ray instance is up, or the end of the previous run when
runs go one at a time) to its first train record in metrics.jsonl (polled every
20 ms); Ray's overhead per run is its mean minus the local executor's, both one
run at a time (runs side by side have no such hand-over). The Ray instance's
start is reported apart. A GPU check (runs of
{"GPU": 1} each seeing one device) needs a GPU machine and is not run here.

  python benchmarks/sweep_executors.py
  python benchmarks/sweep_executors.py --steps=50 --output=/tmp/s.json   # quicker
"""

import os

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import sys
import tempfile
import textwrap
import threading
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common
from transformer_jax import sweep

FLAGS = flags.FLAGS
flags.DEFINE_integer('steps', 300, 'Training steps per run.', lower_bound=1)
flags.DEFINE_string('output', 'benchmarks/results/sweep_executors.json', 'JSON results file.')
common.check_output()

CONFIG = '''
from transformer_jax.configs import shakespeare_char

def get_config():
  c = shakespeare_char.get_config()
  c.model.update(num_layers=2, d_model=64, max_len=64, num_heads=4)
  c.update(seq_len=64, batch_size=8, total_steps={steps}, warmup_steps=10, log_every=1,
           eval_every={steps}, eval_steps=2, checkpoint_every={steps}, num_samples=0)
  return c

def get_sweep(name='grid'):
  return {{'model.num_heads': [2, 4], 'seed': [0, 1]}}
'''
ONE_XLA_THREAD = '--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1'


def _first_steps(runs_dir: str, names, seen: dict, done: threading.Event):
  """Records when each run's metrics.jsonl first holds a record."""
  while not done.is_set():
    for name in names:
      path = os.path.join(runs_dir, name, 'metrics.jsonl')
      if name not in seen and os.path.exists(path) and os.path.getsize(path) > 0:
        seen[name] = time.time()
    time.sleep(0.02)


def measure(label: str, config_path: str, workdir: str, cpus=None, env_vars=None) -> dict:
  """Runs the grid once; returns its wall time, each run's, and (one run at a
  time) each run's launch to first step."""
  executor = sweep.LocalExecutor()
  ray_start = None
  if cpus is not None:
    import ray  # the ray extra.
    from transformer_jax import sweep_ray
    begin = time.time()
    ray.init(num_cpus=cpus, include_dashboard=False,
             runtime_env={'env_vars': env_vars} if env_vars else None)
    ray_start = time.time() - begin
    executor = sweep_ray.RayExecutor(None, {'CPU': 1}, max_retries=0)
  names = [run.name for run in sweep.expand({'model.num_heads': [2, 4], 'seed': [0, 1]})]
  seen, done = {}, threading.Event()
  watcher = threading.Thread(target=_first_steps,
                             args=(os.path.join(workdir, 'runs'), names, seen, done), daemon=True)
  watcher.start()
  begin = time.time()
  rows = sweep.run_sweep(config_path, None, workdir, [], executor=executor)
  wall = time.time() - begin
  done.set()
  watcher.join()
  assert all(r['status'] == 'ok' for r in rows), rows
  statuses = []
  for name in names:
    with open(os.path.join(workdir, 'runs', name, sweep.STATUS_FILE)) as f:
      statuses.append(json.load(f))
  handed = [begin] + [s['started'] + s['seconds'] for s in statuses[:-1]]
  first_step = [seen[n] - h for n, h in zip(names, handed)] if cpus in (None, 1) else None
  return {'executor': label, 'wall_s': wall, 'ray_start_s': ray_start,
          'run_seconds': [s['seconds'] for s in statuses],
          'launch_to_first_step_s': first_step, 'hosts': [s.get('hostname') for s in statuses]}


def main(argv):
  del argv
  env = common.environment()
  common.print_environment(env)
  os.environ.setdefault('RAY_USAGE_STATS_ENABLED', '0')
  os.environ.setdefault('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', '0')  # one node, on 127.0.0.1.
  with tempfile.TemporaryDirectory() as tmp:
    config_path = os.path.join(tmp, 'bench_sweep.py')
    with open(config_path, 'w') as f:
      f.write(textwrap.dedent(CONFIG.format(steps=FLAGS.steps)))
    # Compile once first, so every configuration finds the same cache state.
    sweep.run_sweep(config_path, None, os.path.join(tmp, 'warm'), [])
    results = [
        measure('local', config_path, os.path.join(tmp, 'local')),
        measure('ray, 1 at once', config_path, os.path.join(tmp, 'ray1'), cpus=1),
        measure('ray, 2 at once', config_path, os.path.join(tmp, 'ray2'), cpus=2),
        measure('ray, 2 at once, 1 XLA thread each', config_path, os.path.join(tmp, 'ray2t'),
                cpus=2, env_vars={'XLA_FLAGS': ONE_XLA_THREAD}),
    ]
  local = results[0]
  mean = lambda xs: sum(xs) / len(xs)
  print('| executor | grid wall s | vs local | mean run s | mean launch to first step s | '
        'Ray start s |')
  print('|---|---|---|---|---|---|')
  for r in results:
    start = f"{r['ray_start_s']:.1f}" if r['ray_start_s'] is not None else '-'
    first = r['launch_to_first_step_s']
    print(f"| {r['executor']} | {r['wall_s']:.1f} | {local['wall_s'] / r['wall_s']:.2f}x | "
          f"{mean(r['run_seconds']):.1f} | {f'{mean(first):.2f}' if first else '-'} | {start} |")
  overhead = mean(results[1]['launch_to_first_step_s']) - mean(local['launch_to_first_step_s'])
  print(f'\nRay overhead per run (launch to first step, one run at a time, vs local): '
        f'{overhead:+.2f} s')
  common.write_json({**env, 'grid': '4 runs: model.num_heads in {2, 4} x seed in {0, 1}',
                     'steps': FLAGS.steps, 'rows': results,
                     'ray_overhead_per_run_s': overhead}, FLAGS.output)


if __name__ == '__main__':
  common.run(main)
