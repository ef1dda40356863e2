"""--mode=eval task metrics (decoded on the eval split) and --mode=decode."""

import json
import math
import os
import runpy
import subprocess
import sys

import pytest

from transformer_jax import eval_metrics
from transformer_jax import evaluation
from transformer_jax import generate
from transformer_jax import metrics as metrics_lib
from transformer_jax import train
from transformer_jax.data import sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
G2P_CONFIG = os.path.join(REPO, 'experiments', 'configs', 'cmudict_g2p.py')


def tiny_g2p_config():
  c = runpy.run_path(G2P_CONFIG)['get_config']('quick')
  c.model.update(num_layers=1, d_model=32, num_heads=2)
  c.total_steps = 10
  c.eval_every = 10
  c.eval_steps = 2
  c.checkpoint_every = 10
  c.decode.max_examples = 24
  c.decode.batch_size = 8
  return c


@pytest.fixture(scope='module')
def g2p_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('g2p'))
  train.train(tiny_g2p_config(), workdir)
  return workdir


def test_g2p_eval_decodes_the_split_and_scores_it(g2p_workdir):
  config = tiny_g2p_config()
  config.decode.method = 'greedy'
  result = train.evaluate_checkpoint(config, g2p_workdir)
  assert result['decoded_words'] == 24
  # The same numbers from decoding the first 24 dev words directly.
  _, strategy, state, datasets, model = train.restore_latest(config, g2p_workdir)
  words = sources.cmudict_g2p()['dev'][:24]
  encode = lambda word: datasets.tokenizer.encode(word) + [datasets.tokenizer.eos_id]
  outputs = generate.translate(model, strategy.to_checkpoint(state).params, datasets.tokenizer,
                               [w for w, _ in words], encode=encode, context=config.seq_len,
                               method='greedy')
  rates = eval_metrics.g2p_error_rates(outputs, [p for _, p in words])
  assert result['word_error_rate'] == rates['wer']
  assert result['phoneme_error_rate'] == rates['per']
  with open(os.path.join(g2p_workdir, 'metrics.jsonl')) as f:
    last = [json.loads(line) for line in f][-1]
  assert last['split'] == 'eval' and last['word_error_rate'] == rates['wer']

  # The same checkpoint on the test split: the split is the only thing that changes.
  config.data.eval_split = 'test'
  on_test = train.evaluate_checkpoint(config, g2p_workdir)
  test_words = sources.cmudict_g2p()['test'][:24]
  outputs = generate.translate(model, strategy.to_checkpoint(state).params, datasets.tokenizer,
                               [w for w, _ in test_words], encode=encode, context=config.seq_len,
                               method='greedy')
  assert on_test['word_error_rate'] == eval_metrics.g2p_error_rates(
      outputs, [p for _, p in test_words])['wer']
  # Each --mode=eval record says which split and which decoding it measured.
  records = [r for r in metrics_lib.read_jsonl(g2p_workdir, 'eval') if 'word_error_rate' in r]
  assert [(r['eval_split'], r['decode']) for r in records[-2:]] == [
      ('dev', 'greedy'), ('test', 'greedy')]


def test_decode_mode_prints_one_line_per_input(g2p_workdir, tmp_path):
  words = tmp_path / 'words.txt'
  words.write_text('transformer\n\njax\nflax\n')
  cmd = [sys.executable, '-m', 'transformer_jax.main', f'--config={G2P_CONFIG}:quick',
         f'--workdir={g2p_workdir}', '--mode=decode', f'--input={words}',
         '--config.decode.method=greedy', '--config.model.num_layers=1',
         '--config.model.d_model=32', '--config.model.num_heads=2', '--config.total_steps=10',
         '--config.eval_steps=2', '--config.checkpoint_every=10', '--config.eval_every=10']
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert len(out.stdout.splitlines()) == 3  # the empty line is skipped.
  missing = subprocess.run(cmd[:-9] + ['--input=/nonexistent.txt'] + cmd[-8:], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
  assert missing.returncode != 0
  assert missing.stderr.strip().splitlines()[-1] == (
      '--input=/nonexistent.txt does not exist; give a text file with one input per line.')


def test_char_lm_reports_bits_per_character():
  c = runpy.run_path(os.path.join(REPO, 'experiments', 'configs',
                                  'shakespeare_char.py'))['get_config']()
  metrics = evaluation.task_metrics(c, None, None, None, loss=1.5)
  assert metrics == {'bits_per_character': 1.5 / math.log(2)}


def test_decode_mode_needs_a_generating_model():
  c = runpy.run_path(os.path.join(REPO, 'experiments', 'configs',
                                  'shakespeare_mlm.py'))['get_config']()
  with pytest.raises(ValueError, match='--mode=decode needs a decoder or seq2seq model'):
    evaluation.decode_lines(c, None, None, None, ['x'])
