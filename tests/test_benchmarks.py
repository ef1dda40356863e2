"""Smoke runs of benchmarks/decode_speed.py and benchmarks/seq_scaling.py at tiny
sizes, as a user runs them: the JSON they write, the cached and uncached greedy
tokens agreeing, and the sequence lengths' rows."""

import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPOSITORY

sys.path.insert(0, REPOSITORY)

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import decode_speed
from transformer_jax import config as config_lib
from transformer_jax.models import transformer

TINY_MODEL = ['--num_layers=1', '--d_model=32', '--num_heads=2']


def run_benchmark(script: str, tmp_path, *args) -> dict:
  """Runs benchmarks/<script>.py on the tiny model; returns the JSON it wrote."""
  output = tmp_path / f'{script}.json'
  proc = subprocess.run([sys.executable, os.path.join('benchmarks', f'{script}.py'), *TINY_MODEL,
                         f'--output={output}', *args], cwd=REPOSITORY, capture_output=True,
                        text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(output) as f:
    return json.load(f)


def test_decode_speed(tmp_path):
  result = run_benchmark('decode_speed', tmp_path, '--batch_sizes=2', '--prompt_len=4',
                         '--new_tokens=16', '--repeats=1')
  assert [row['batch_size'] for row in result['rows']] == [2]
  assert result['model']['d_model'] == 32 and result['machine'] and result['command']
  for row in result['rows']:
    cached, uncached = row['cached']['tokens_per_sec'], row['uncached']['tokens_per_sec']
    assert cached > 0 and uncached > 0
    assert row['speedup'] == pytest.approx(cached / uncached)
    assert row['cached_tokens'] == row['uncached_tokens']
    assert len(row['cached_tokens']) == 16
    assert len(set(row['cached_tokens'])) > 1  # not one token echoed: the check means something.
    assert row['differing_rows'] == 0  # float32 on CPU: no near-ties at this size.


def test_check_same_tokens_rejects_a_real_difference():
  """Outputs that part where the model clearly prefers one token are an error;
  within the tolerance they count as a near-tie."""
  m = config_lib.model_config()
  m.update(variant='decoder', num_layers=1, d_model=16, num_heads=2, vocab_size=13, max_len=8,
           share_embeddings=False)
  model = transformer.build_model(m)
  tokens = np.array([[3, 4, 5, 6, 7, 8, 9, 10]])
  params = jax.jit(model.init)(jax.random.key(0), tokens)['params']
  logits = np.array(jax.jit(model.apply)({'params': params}, tokens)[0, 2])  # for token 3.
  logits[0] = np.nan  # pad is never generated.
  likely, unlikely = tokens.copy(), tokens.copy()
  likely[0, 3], unlikely[0, 3] = np.nanargmax(logits), np.nanargmin(logits)
  assert decode_speed.check_same_tokens(model, params, likely, likely.copy(), 1e-3) == 0
  with pytest.raises(RuntimeError, match='not a near-tie'):
    decode_speed.check_same_tokens(model, params, unlikely, likely, 1e-3)
  assert decode_speed.check_same_tokens(model, params, unlikely, likely, 10.0) == 1


def test_seq_scaling(tmp_path):
  result = run_benchmark('seq_scaling', tmp_path, '--lengths=16,32', '--tokens_per_batch=64',
                         '--steps=2', '--warmup=0', '--peak_size=128', '--attention_window=8',
                         '--num_random_features=8', '--decode_lengths=8,16', '--slope_from=8')
  rows = result['rows']
  assert [(row['attention'], row['length']) for row in rows] == [
      (kind, n) for kind in config_lib.ATTENTIONS for n in (16, 32)]
  assert result['roof']['roof_flops'] > 0 and result['model']['max_len'] == 32
  for row in rows:
    assert not row['oom'] and not row['stopped']
    assert row['batch_size'] * row['length'] == 64
    assert len(row['steps']) == 2 and min(row['steps']) > 0
    assert row['tokens_per_sec'] == pytest.approx(64 / row['step_seconds'])
    assert 0 < row['mfu'] < 1
    assert row['peak_memory_bytes'] > 0 and row['step_bytes'] > 0
  assert rows[1]['flops_per_token'] > rows[0]['flops_per_token']  # full attention grows with L.
  assert [(r['attention'], r['length']) for r in result['decode_rows']] == [
      (kind, n) for kind in config_lib.ATTENTIONS for n in (8, 16)]
  assert all(r['ms_per_token'] > 0 for r in result['decode_rows'])
  assert [r['attention'] for r in result['summary']] == list(config_lib.ATTENTIONS)

def _run_script(script: str, tmp_path, *args) -> dict:
  """Runs benchmarks/<script>.py with `args` only; returns the JSON it wrote."""
  output = tmp_path / f'{script}.json'
  proc = subprocess.run([sys.executable, os.path.join('benchmarks', f'{script}.py'),
                         f'--output={output}', *args], cwd=REPOSITORY, capture_output=True,
                        text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(output) as f:
    return json.load(f)


def test_gpt_peer_matches_our_matmuls_and_is_causal():
  """The minimal-GPT peer has the matmul weights models/accounting.py counts
  for the same shape (so the same FLOPs per token), is causal, and trains."""
  torch = pytest.importorskip('torch')
  from benchmarks import train_throughput  # pylint: disable=g-import-not-at-top
  from transformer_jax.models import accounting  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  c.model.update(variant='decoder', num_layers=2, d_model=32, num_heads=4, vocab_size=17,
                 max_len=16, dropout_rate=0.0)
  c.optimizer.label_smoothing = 0.0
  c.update(seq_len=16, batch_size=3)
  model = train_throughput.gpt_model(c.model, 16)
  matrices = sum(p.numel() for n, p in model.named_parameters()
                 if p.dim() == 2 and not n.startswith('positions'))
  assert matrices == sum(accounting._matmul_weights(c.model).values())  # pylint: disable=protected-access
  assert model.tokens.weight is not None and not hasattr(model, 'head')  # tied output.
  ids = torch.randint(1, 17, (1, 16))
  changed = ids.clone()
  changed[0, 10] = (ids[0, 10] % 16) + 1
  with torch.no_grad():
    a, b = model.eval()(ids), model(changed)
  torch.testing.assert_close(a[:, :10], b[:, :10])
  assert not torch.allclose(a[:, 10:], b[:, 10:])
  batch = train_throughput.synthetic_batch(c)
  peer = train_throughput.GPTPeer(c, batch, compiled=False)
  peer.step()
  first = peer.loss()
  for _ in range(20):
    peer.step()
  assert peer.loss() < first


@pytest.mark.parametrize('peer_class', ['GPTPeer', 'TorchPeer'])
def test_a_bfloat16_peer_trains_under_autocast(peer_class):
  """With config.model.dtype=bfloat16 (the GPU default) a peer computes under
  bfloat16 autocast over float32 parameters, as ours does, and still trains; a
  GPU run takes the same code path with device='cuda'."""
  torch = pytest.importorskip('torch')
  from benchmarks import train_throughput  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  c.model.update(variant='decoder', num_layers=1, d_model=32, num_heads=4, vocab_size=17,
                 max_len=16, dropout_rate=0.0, dtype='bfloat16')
  c.optimizer.label_smoothing = 0.0
  c.update(seq_len=16, batch_size=3)
  peer = getattr(train_throughput, peer_class)(c, train_throughput.synthetic_batch(c),
                                                compiled=False, device='cpu')
  assert peer.autocast_dtype == torch.bfloat16
  with peer._context():  # pylint: disable=protected-access
    logits = peer.model(peer.inputs)
  assert logits.dtype == torch.bfloat16
  assert all(p.dtype == torch.float32 for p in peer.model.parameters())
  peer.step()
  first = peer.loss()
  for _ in range(30):
    peer.step()
  assert peer.loss() < first


def test_torch_peers_run_beside_cpu_and_nvidia_devices_only(monkeypatch):
  torch = pytest.importorskip('torch')
  from benchmarks import train_throughput  # pylint: disable=g-import-not-at-top
  assert train_throughput.torch_device_for('cpu') == 'cpu'
  assert train_throughput.torch_device_for('tpu') is None
  for cuda, expected in ((True, 'cuda'), (False, None)):  # a GPU this PyTorch sees, or not.
    monkeypatch.setattr(torch.cuda, 'is_available', lambda cuda=cuda: cuda)
    assert train_throughput.torch_device_for('gpu') == expected


def test_train_throughput_with_the_gpt_peer(tmp_path):
  result = _run_script('train_throughput', tmp_path, '--workloads=nanogpt_cpu', '--batch_size=2',
                       '--peers=gpt_eager', '--rounds=1', '--steps_per_round=1', '--warmup=0',
                       '--peak_size=128', '--torch_threads=1')
  row, = result['rows']
  assert set(row['contenders']) == {'ours', 'gpt_eager'}
  assert row['ratio_vs_gpt_eager'] == pytest.approx(
      row['contenders']['ours']['tokens_per_sec'] / row['contenders']['gpt_eager']['tokens_per_sec'])
  assert row['torch_threads'] == {'gpt_eager': 1}


def test_train_loop(tmp_path):
  """The real loop and the bare step, one round each: both measured, the ratio theirs."""
  tiny = ['--config.model.num_layers=1', '--config.model.d_model=32', '--config.model.num_heads=2',
          '--config.seq_len=32', '--config.batch_size=4', '--config.log_every=4']
  result = _run_script('train_loop', tmp_path, *tiny, '--rounds=2', '--steps_per_round=8',
                       '--warmup=1')
  row, = result['rows']
  assert row['batch_size'] == 4 and row['seq_len'] == 32 and row['steps_per_round'] == 8
  assert len(row['ratios']) == 2 and len(row['loops']) == 2 and len(row['bares']) == 2
  for loop, bare, ratio in zip(row['loops'], row['bares'], row['ratios']):
    assert loop['tokens_per_sec'] > 0 and bare > 0
    assert ratio == pytest.approx(loop['tokens_per_sec'] / bare)
    assert 0 <= loop['data_wait_fraction'] < 1


def test_step_candidates(tmp_path):
  """Every kind of candidate builds and runs; jit and pmap compute the same step."""
  result = _run_script('step_candidates', tmp_path, '--workloads=nanogpt_cpu', '--batch_size=2',
                       '--candidates=jit,pmap,fused_qkv,concat_qkv,xla:no_ynn_dot',
                       '--rounds=1', '--steps_per_round=1', '--warmup=0', '--peak_size=128')
  row, = result['rows']
  c = row['contenders']
  assert list(c) == ['jit', 'pmap', 'fused_qkv', 'concat_qkv', 'xla:no_ynn_dot']
  assert row['baseline'] == 'jit' and c['jit']['speedup'] == 1.0
  assert c['jit']['final_loss'] == c['pmap']['final_loss']
  assert all(v['tokens_per_sec'] > 0 for v in c.values())


# ---------------------------------------------------------------------------
# A flag value that cannot work stops a benchmark before its first run, in one line.


def _benchmark_flags():
  """Flags of each kind the benchmarks define through benchmarks/common.py."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  values = flags.FlagValues()
  common.define_int_list('steps', ['60'], 'Steps.', flag_values=values)
  common.define_choice_list('shapes', ['a'], ['a', 'b'], 'Shapes.', flag_values=values)
  flags.DEFINE_float('temperature', 0.8, 'Temperature.', flag_values=values)
  common.require_above_zero('temperature', flag_values=values)
  flags.DEFINE_string('output', 'results.json', 'Results.', flag_values=values)
  common.check_output(flag_values=values)
  return values


@pytest.mark.parametrize('arg, message', [
    ('--steps=abc', "flag --steps=['abc']: 'abc' is not an integer."),
    ('--steps=12,0', 'flag --steps=[\'12\', \'0\']: 0 is below 1; each value must be at least 1.'),
    ('--steps=', 'flag --steps=[]: give at least 1 comma-separated integer(s).'),
    ('--shapes=a,c', "flag --shapes=['a', 'c']: unknown 'c'; give one or more of a, b."),
    ('--shapes=', 'flag --shapes=[]: empty; give one or more of a, b.'),
    ('--temperature=0', 'flag --temperature=0.0: must be above 0.'),
    ('--output={file}/x.json', '{file} is not a writable directory; give a path where the '
     'results can be written.'),
    ('--output={tmp}', 'is a directory; give a file path.'),
])
def test_a_benchmark_flag_that_cannot_work_is_refused_when_parsed(arg, message, tmp_path):
  from absl import flags  # pylint: disable=g-import-not-at-top
  (tmp_path / 'file').write_text('')
  paths = {'file': str(tmp_path / 'file'), 'tmp': str(tmp_path)}
  with pytest.raises(flags.IllegalFlagValueError) as raised:
    _benchmark_flags()(['benchmark', arg.format(**paths)])
  assert message.format(**paths) in str(raised.value)


def test_benchmark_flags_that_can_work_are_taken(tmp_path):
  values = _benchmark_flags()
  output = tmp_path / 'new' / 'folder' / 'results.json'  # write_json makes the folders.
  values(['benchmark', '--steps=1,24', '--shapes=b,a', '--temperature=0.1', f'--output={output}'])
  assert (values.steps, values.shapes, values.output) == (['1', '24'], ['b', 'a'], str(output))


@pytest.mark.parametrize('args, line', [
    (['cli_vs_nanogpt.py', '--shapes=4x4x128', '--steps=8', '--log_every=8'],
     "--steps=8 with --log_every=8 leaves no timed record of ours; give at least 2 x "
     "--log_every steps."),
    (['train_throughput.py', '--workloads=nanogpt_cpu', '--dtype=float8', '--peers=',
      '--peak_size=64', '--output='],
     "Config error: config.model.dtype='float8' is unknown"),
])
def test_a_benchmark_stops_with_one_line_before_its_runs(args, line):
  """The checks after parsing: of flags together, and of the config they build."""
  proc = subprocess.run([sys.executable, os.path.join('benchmarks', args[0]), *args[1:]],
                        cwd=REPOSITORY, capture_output=True, text=True, check=False)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith(line), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr and '| ' not in proc.stdout  # no run, no table row.


def test_every_module_attribute_a_script_uses_exists():
  """Was: gpt2_small.py called memory.run_config after it moved to cli_runs, and failed
  on every run. Each `module.name` of ours (benchmarks.*, transformer_jax.*) that a
  script the suite does not run (benchmarks/, experiments/) uses must name something
  the module has."""
  import ast  # pylint: disable=g-import-not-at-top
  import importlib  # pylint: disable=g-import-not-at-top
  missing = []
  scripts = (glob.glob(os.path.join(REPOSITORY, 'benchmarks', '*.py')) +
             glob.glob(os.path.join(REPOSITORY, 'experiments', '**', '*.py'), recursive=True))
  assert len(scripts) > 15
  for path in sorted(scripts):
    tree = ast.parse(open(path).read())
    modules = {}  # the name bound in the script -> the module's dotted name.
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and (node.module or '').split('.')[0] in (
          'benchmarks', 'transformer_jax'):
        for alias in node.names:
          dotted = f'{node.module}.{alias.name}'
          if _is_module(dotted):
            modules[alias.asname or alias.name] = dotted
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in modules
          and not hasattr(importlib.import_module(modules[node.value.id]), node.attr)):
        missing.append(f'{os.path.basename(path)}:{node.lineno} '
                       f'{node.value.id}.{node.attr}')
  assert not missing, missing


def _is_module(dotted: str) -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top
  try:
    return importlib.util.find_spec(dotted) is not None
  except ModuleNotFoundError:
    return False
