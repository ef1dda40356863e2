"""What a run records for comparing runs: TensorBoard HParams, config and text
samples (read back with TensorBoard's own reader and plugins), Weights & Biases
offline runs, and progress bars that show in a notebook kernel."""

import json
import os
import pty
import struct
import subprocess
import sys
import textwrap

from google.protobuf import json_format
import pytest
from tensorboard import context
from tensorboard.backend.event_processing import data_provider
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import backend_context
from tensorboard.plugins.hparams import metadata
from tensorboard.util import tensor_util

from tests.conftest import REPOSITORY, TINY, load_config, override
from transformer_jax import config as config_lib
from transformer_jax import progress
from transformer_jax import run_log


def _tensorboard(logdir):
  accumulator = event_accumulator.EventAccumulator(
      str(logdir), size_guidance={event_accumulator.TENSORS: 0})
  accumulator.Reload()
  return accumulator


def _texts(accumulator, tag) -> list:
  """The texts of a text summary at its one step, as written (code blocks undone)."""
  [event] = accumulator.Tensors(tag)
  return [textwrap.dedent(block.decode()) for block in
          tensor_util.make_ndarray(event.tensor_proto).reshape(-1)]


def _hparams(accumulator) -> dict:
  content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)
  start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
  return {name: json_format.MessageToDict(value) for name, value in start.hparams.items()}


# Trains a tiny decoder with samples where `import tensorflow` fails, as in the
# default install (TensorFlow comes with the tfds extra only).
_TRAIN_WITHOUT_TENSORFLOW = """
import sys
sys.modules['tensorflow'] = None
from tests.conftest import TINY, load_config, override
from transformer_jax import trainer
trainer.train(override(load_config(), {**TINY, 'total_steps': 2, 'num_samples': 2,
                                       'sample_length': 8}), sys.argv[1])
"""


def test_a_run_records_hparams_config_and_samples_that_tensorboard_reads(tmp_path):
  workdir = tmp_path / 'run'
  done = subprocess.run([sys.executable, '-c', _TRAIN_WITHOUT_TENSORFLOW, str(workdir)],
                        cwd=REPOSITORY, capture_output=True, text=True, timeout=300,
                        env={**os.environ, 'PYTHONPATH': REPOSITORY})
  assert done.returncode == 0, done.stderr[-2000:]
  accumulator = _tensorboard(workdir / 'tensorboard')
  with open(workdir / 'config.json') as f:
    saved = json.load(f)
  hparams = _hparams(accumulator)
  assert set(hparams) == set(config_lib.flatten(saved))
  assert hparams['model.d_model'] == 32 and hparams['data.name'] == 'shakespeare'
  assert hparams['model.num_kv_heads'] == 'null'  # an unset field, as JSON text.
  assert json.loads(_texts(accumulator, 'config')[0]) == saved
  samples = _texts(accumulator, 'samples')
  printed = done.stdout[done.stdout.index('--- sample 1 ---'):]
  assert len(samples) == 2
  assert printed == ''.join(f'--- sample {i + 1} ---\n{text.strip()}\n'
                            for i, text in enumerate(samples))
  assert accumulator.Scalars('eval/loss')[-1].step == 2


def test_the_hparams_dashboard_lists_what_a_sweep_varies_first_with_eval_metrics(tmp_path):
  """Two runs of a sweep that differ in num_heads, read as TensorBoard's
  HParams plugin reads a logdir: num_heads leads the columns, and the eval
  scalars are the metrics."""
  for heads, loss in ((2, 1.5), (4, 1.25)):
    config = override(load_config(), {**TINY, 'model.num_heads': heads})
    writer = run_log.MetricWriter(str(tmp_path / 'runs' / f'heads{heads}'), 10, echo=False,
                                  config=config)
    writer.write(5, 'train', {'loss': 2.0})
    writer.write(10, 'eval', {'loss': loss})
    writer.close()
  multiplexer = plugin_event_multiplexer.EventMultiplexer()
  multiplexer.AddRunsFromDirectory(str(tmp_path))
  multiplexer.Reload()
  provider = data_provider.MultiplexerDataProvider(multiplexer, str(tmp_path))
  hparams_context = backend_context.Context(base_plugin.TBContext(
      logdir=str(tmp_path), multiplexer=multiplexer, data_provider=provider))
  ctx = context.RequestContext()
  experiment = hparams_context.experiment_from_metadata(
      ctx, '', True, hparams_context.hparams_metadata(ctx, ''),
      hparams_context.hparams_from_data_provider(ctx, '', None))
  assert experiment.hparam_infos[0].name == 'model.num_heads'
  assert experiment.hparam_infos[0].differs and not experiment.hparam_infos[1].differs
  assert {m.name.tag for m in experiment.metric_infos} == {'eval/loss', 'train/loss'}


def _wandb_records(run_dir) -> list:
  """The records of an offline W&B run's .wandb file (a LevelDB-style log of
  wandb's Record protos: 7-byte header, 32 KiB blocks, chunks with a 7-byte
  crc/length/type header)."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  [name] = [n for n in os.listdir(run_dir) if n.endswith('.wandb')]
  with open(os.path.join(run_dir, name), 'rb') as f:
    data = f.read()
  assert data[:4] == b':W&B'
  records, pending, position, block = [], b'', 7, 32768
  while position + 7 <= len(data):
    if block - position % block < 7:  # a block's tail too short for a header is padding.
      position += block - position % block
      continue
    _, length, kind = struct.unpack('<IHB', data[position:position + 7])
    pending += data[position + 7:position + 7 + length]
    position += 7 + length
    if kind in (1, 4):  # a whole record, or the last chunk of one.
      records.append(wandb_internal_pb2.Record.FromString(pending))
      pending = b''
  return records


def test_wandb_offline_run_holds_config_metrics_and_samples_grouped_by_sweep(
    tmp_path, monkeypatch):
  wandb = pytest.importorskip('wandb')
  for name in ('WANDB_CONFIG_DIR', 'WANDB_CACHE_DIR', 'WANDB_DATA_DIR'):
    monkeypatch.setenv(name, str(tmp_path / name))
  workdir = tmp_path / 'heads_sweep' / 'runs' / 'heads4'
  config = override(load_config(), {**TINY, 'model.num_heads': 4, 'wandb.enabled': True,
                                     'wandb.mode': 'offline'})
  config_lib.validate(config)
  for start, loss in ((0, 1.5), (5, 1.25)):  # a start and a resume continue one W&B run.
    writer = run_log.MetricWriter(str(workdir), 10, resume_step=start, echo=False, config=config)
    writer.write(start + 5, 'eval', {'loss': loss})
    writer.write_texts(start + 5, 'samples', ['To be', 'or not'])
    writer.close()
  wandb.teardown()  # waits for W&B's service to write out the runs' files.
  runs = sorted(p for p in os.listdir(workdir / 'wandb') if p.startswith('offline-run-'))
  assert len(runs) == 2
  run_ids = set()
  logged = []
  for run in runs:
    records = _wandb_records(workdir / 'wandb' / run)
    [start] = [r.run for r in records if r.WhichOneof('record_type') == 'run']
    run_ids.add(start.run_id)
    assert start.run_group == 'heads_sweep' and start.display_name == 'heads4'
    config_values = {u.key: json.loads(u.value_json) for u in start.config.update}
    assert config_values['model']['num_heads'] == 4 and config_values['seq_len'] == 32
    for r in records:
      if r.WhichOneof('record_type') == 'history':
        items = {'.'.join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
        logged.append({k: v for k, v in items.items() if k in ('step', 'eval/loss')
                       or k == 'samples._type'})
  assert run_ids == {(workdir / 'wandb' / 'run_id').read_text().strip()}
  assert {'step': 5, 'eval/loss': 1.5} in logged and {'step': 10, 'eval/loss': 1.25} in logged
  assert {'step': 10, 'samples._type': 'table-file'} in logged


def test_wandb_needs_its_package_and_a_project(monkeypatch):
  config = override(load_config(), {'wandb.enabled': True, 'wandb.project': ''})
  with pytest.raises(config_lib.ConfigError, match='config.wandb.project is empty'):
    config_lib.validate(config)
  with pytest.raises(config_lib.ConfigError, match='config.wandb.mode'):
    config_lib.validate(override(load_config(), {'wandb.mode': 'cloud'}))
  monkeypatch.setitem(sys.modules, 'wandb', None)  # find_spec then says it is missing.
  with pytest.raises(config_lib.ConfigError, match=r'transformer_jax\[wandb\]'):
    config_lib.validate(override(load_config(), {'wandb.enabled': True}))


def test_progress_bars_show_on_a_terminal_and_not_in_a_log_file(tmp_path):
  main, follower = pty.openpty()
  with open(follower, 'w') as terminal, open(tmp_path / 'log.txt', 'w') as log:
    for stream in (terminal, log):
      for _ in progress.bar(range(3), desc='evaluating', file=stream):
        pass
  shown = b''
  while True:  # to the end: the terminal passes what was written on in its own time.
    try:
      chunk = os.read(main, 4096)
    except OSError:  # closed and read to the end.
      break
    if not chunk:
      break
    shown += chunk
  assert 'evaluating: 100%' in shown.decode()
  os.close(main)
  assert (tmp_path / 'log.txt').read_text() == ''
  assert not progress.in_notebook() and progress.disabled() is None


def test_progress_bars_show_in_a_notebook_kernel():
  """In a Jupyter kernel, whose output is not a terminal, the bar still shows
  (tqdm's own disable=None would hide it)."""
  jupyter_client = pytest.importorskip('jupyter_client')
  manager, client = jupyter_client.manager.start_new_kernel(
      env={**os.environ, 'PYTHONPATH': REPOSITORY})
  try:
    code = ('from transformer_jax import progress\n'
            'print(progress.in_notebook(), progress.disabled())\n'
            'for _ in progress.bar(range(3), desc="decoding"): pass\n')
    shown = []
    client.execute_interactive(code, timeout=120, output_hook=lambda m: shown.append(
        m['content'].get('text') or json.dumps(m['content'].get('data', {}))))
  finally:
    client.stop_channels()
    manager.shutdown_kernel(now=True)
  output = ''.join(shown)
  assert 'True False' in output and 'decoding' in output, output
