"""config.init_from=hf:NAME: Hub ids read from huggingface_hub's cache, offline; a missing
one is one line naming the fix. The cache is made here, laid out as huggingface_hub lays
it out, holding a tiny random GPT-2 that transformers' save_pretrained wrote."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

transformers = pytest.importorskip('transformers')
huggingface_hub = pytest.importorskip('huggingface_hub')

from conftest import REPOSITORY  # pylint: disable=g-import-not-at-top,g-bad-import-order
from transformer_jax import config as config_lib
from transformer_jax import hf
from transformer_jax import hub
from transformer_jax.models.transformer import build_model

NAME = 'tiny-org/tiny-gpt2'
REVISION = 'f' * 40
CHARS = 88  # the Shakespeare char tokenizer's ids: the checkpoint reads its text.


@pytest.fixture(scope='module')
def hf_home(tmp_path_factory):
  """HF_HOME with NAME cached: hub/models--tiny-org--tiny-gpt2/refs/main naming a snapshot
  in snapshots/<revision>/ that holds config.json and model.safetensors."""
  home = tmp_path_factory.mktemp('hf_home')
  repo = home / 'hub' / f'models--{NAME.replace("/", "--")}'
  (repo / 'refs').mkdir(parents=True)
  (repo / 'refs' / 'main').write_text(REVISION)
  transformers.set_seed(0)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=CHARS, n_positions=32, n_embd=16, n_layer=1, n_head=2))
  model.save_pretrained(str(repo / 'snapshots' / REVISION))
  return home


@pytest.fixture
def offline_cache(hf_home, monkeypatch):
  """huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when imported: set as it would set them."""
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(hf_home / 'hub'))
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
  return hf_home


def test_a_cached_id_is_read_as_its_snapshot_directory(offline_cache):
  snapshot = str(offline_cache / 'hub' / f'models--{NAME.replace("/", "--")}' / 'snapshots' /
                 REVISION)
  assert hub.local_dir(NAME) == snapshot
  assert hf.flags(NAME, tokenizer='char') == hf.flags(snapshot, tokenizer='char')
  loaded = []
  for spec in (NAME, snapshot):
    config = config_lib.base_config()
    config.model.update(variant='decoder', dropout_rate=0.0)
    hf.configure(config, spec)
    assert config.init_from == f'hf:{spec}'  # the id stays the run's: another cache reads it.
    fresh = build_model(config.model).init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))
    params, report = hf.load(config, jax.device_get(fresh['params']))
    assert report.startswith(f'Initialised from gpt2 {spec}: ') and 'fresh: none' in report
    loaded.append(params)
  jax.tree.map(np.testing.assert_array_equal, *loaded)


def test_an_id_the_cache_lacks_is_one_line_naming_the_fix(offline_cache, monkeypatch):
  config = config_lib.base_config()
  config.model.variant = 'decoder'
  with pytest.raises(config_lib.ConfigError) as e:
    hf.configure(config, 'tiny-org/not-cached')
  assert str(e.value) == (
      f'config.init_from=hf:tiny-org/not-cached: tiny-org/not-cached is not a directory, nor in '
      f'the Hugging Face cache ({offline_cache / "hub"}), and HF_HUB_OFFLINE=1 forbids '
      'downloading it; run `hf download tiny-org/not-cached` where there is internet (with this '
      'HF_HOME or HF_HUB_CACHE), or unset HF_HUB_OFFLINE.')
  # Online, but the Hub cannot be reached (a port nothing listens on): the same, said so.
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
  monkeypatch.setattr(huggingface_hub.constants, 'ENDPOINT', 'http://127.0.0.1:9')
  with pytest.raises(config_lib.ConfigError) as e:
    hf.read_config('tiny-org/not-cached')
  message = str(e.value)
  assert '\n' not in message and 'could not be downloaded' in message
  assert message.endswith('connect to the internet, or run `hf download tiny-org/not-cached` on '
                          'a machine that is and copy its cache here (HF_HOME or HF_HUB_CACHE).')


def test_a_run_starts_from_a_cached_id_offline_on_the_command_line(hf_home, tmp_path):
  """HF_HOME and HF_HUB_OFFLINE=1 as a user sets them; the id goes where a directory went."""
  env = {**os.environ, 'HF_HOME': str(hf_home), 'HF_HUB_OFFLINE': '1', 'PYTHONPATH': REPOSITORY}
  env.pop('HF_HUB_CACHE', None)
  flags = subprocess.run(
      [sys.executable, '-c', f'from transformer_jax import hf; '
       f'print(hf.flags({NAME!r}, tokenizer="char"))'],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert flags.returncode == 0, flags.stderr[-2000:]

  def main(workdir, name):
    return subprocess.run(
        [sys.executable, '-m', 'transformer_jax.main', '--config=shakespeare_char:quick',
         f'--workdir={tmp_path / workdir}', f'--config.init_from=hf:{name}',
         *flags.stdout.split(), '--config.seq_len=32', '--config.batch_size=4',
         '--config.total_steps=2', '--config.warmup_steps=1', '--config.eval_every=2',
         '--config.eval_steps=1', '--config.checkpoint_every=2', '--config.log_every=1',
         '--config.num_samples=0'], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600)

  run = main('run', NAME)
  assert run.returncode == 0, run.stderr[-2000:]
  assert f'Initialised from gpt2 {NAME}: ' in run.stdout
  assert json.loads(run.stdout.strip().splitlines()[-1])['step'] == 2
  missing = main('other', 'tiny-org/missing')
  assert missing.returncode == 2, missing.stderr[-2000:]
  last = missing.stderr.strip().splitlines()[-1]
  assert last.startswith('Config error: config.init_from=hf:tiny-org/missing: ')
  assert last.endswith(
      'run `hf download tiny-org/missing` where there is internet (with this HF_HOME or '
      'HF_HUB_CACHE), or unset HF_HUB_OFFLINE.')
  assert not (tmp_path / 'other').exists()  # refused before a workdir is made.
