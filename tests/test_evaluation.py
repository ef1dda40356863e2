"""--mode=eval task metrics (decoded on the eval split) and --mode=decode."""

import json
import math
import os
import subprocess
import sys
import types

import pytest

from transformer_jax import evaluation
from transformer_jax import generate
from transformer_jax import config as config_lib
from transformer_jax import configs
from transformer_jax import metrics as metrics_lib
from transformer_jax import restore
from transformer_jax import run_log
from transformer_jax import trainer
from transformer_jax.data import sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_g2p_config():
  c = configs.load('cmudict_g2p:quick')
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
  trainer.train(tiny_g2p_config(), workdir)
  return workdir


def test_g2p_eval_decodes_the_split_and_scores_it(g2p_workdir):
  config = tiny_g2p_config()
  config.decode.method = 'greedy'
  result = evaluation.evaluate_checkpoint(config, g2p_workdir)
  evaluation.record_eval(config, g2p_workdir, result)
  assert result['decoded_words'] == 24
  # The same numbers from decoding the first 24 dev words directly.
  run = restore.open_run(config, g2p_workdir)
  model, params, tokenizer = run.model, run.params, run.tokenizer
  words = sources.cmudict_g2p()['dev'][:24]
  encode = lambda word: tokenizer.encode(word) + [tokenizer.eos_id]
  outputs = generate.translate(model, params, tokenizer,
                               [w for w, _ in words], encode=encode, context=config.seq_len,
                               method='greedy')
  rates = metrics_lib.g2p_error_rates(outputs, [p for _, p in words])
  assert result['word_error_rate'] == rates['wer']
  assert result['phoneme_error_rate'] == rates['per']
  with open(os.path.join(g2p_workdir, 'metrics.jsonl')) as f:
    last = [json.loads(line) for line in f][-1]
  assert last['split'] == 'eval' and last['word_error_rate'] == rates['wer']

  # The same checkpoint on the test split: the split is the only thing that changes.
  config.data.eval_split = 'test'
  on_test = evaluation.evaluate_checkpoint(config, g2p_workdir)
  evaluation.record_eval(config, g2p_workdir, on_test)
  test_words = sources.cmudict_g2p()['test'][:24]
  outputs = generate.translate(model, params, tokenizer,
                               [w for w, _ in test_words], encode=encode, context=config.seq_len,
                               method='greedy')
  assert on_test['word_error_rate'] == metrics_lib.g2p_error_rates(
      outputs, [p for _, p in test_words])['wer']
  # Each --mode=eval record says which split and which decoding it measured.
  records = [r for r in run_log.read_jsonl(g2p_workdir, 'eval') if 'word_error_rate' in r]
  assert [(r['eval_split'], r['decode']) for r in records[-2:]] == [
      ('dev', 'greedy'), ('test', 'greedy')]


def test_decode_mode_prints_one_line_per_input(g2p_workdir, tmp_path):
  words = tmp_path / 'words.txt'
  words.write_text('transformer\n\njax\nflax\n')
  cmd = [sys.executable, '-m', 'transformer_jax.main', '--config=cmudict_g2p:quick',
         f'--workdir={g2p_workdir}', '--mode=decode', f'--input={words}',
         '--config.decode.method=greedy', '--config.model.num_layers=1',
         '--config.model.d_model=32', '--config.model.num_heads=2', '--config.total_steps=10',
         '--config.eval_steps=2', '--config.checkpoint_every=10', '--config.eval_every=10']
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert len(out.stdout.splitlines()) == 4  # one output per input line, the empty one too.
  missing = subprocess.run(cmd[:-9] + ['--input=/nonexistent.txt'] + cmd[-8:], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
  assert missing.returncode != 0
  assert missing.stderr.strip().splitlines()[-1] == (
      '--input=/nonexistent.txt does not exist; give a text file with one input per line.')


def test_char_lm_reports_bits_per_character(tmp_path):
  c = configs.load('shakespeare_char')
  run = types.SimpleNamespace(config=c, datasets=types.SimpleNamespace(references=None))
  metrics = evaluation.task_metrics(run, loss=1.5)
  assert metrics == {'bits_per_character': 1.5 / math.log(2)}


def test_decode_mode_needs_a_model_that_outputs_text(tmp_path):
  c = configs.load('shakespeare_genre')  # a classifier; a masked LM fills masks (test_fill_mask).
  with pytest.raises(config_lib.ConfigError, match='--mode=decode needs a decoder, seq2seq or '
                     'masked-LM run'):
    evaluation.decode_checkpoint(c, str(tmp_path / 'nothing_restored'), ['x'])
  assert not os.path.exists(tmp_path / 'nothing_restored')  # refused before restoring.


def test_a_beam_wider_than_half_the_vocabulary_is_a_config_error():
  # Refused with the config field and its bound, not as decode.beam_search's
  # ValueError traceback after the checkpoint is restored.
  c = configs.load('shakespeare_char:quick')
  c.decode.beam_size = 49
  with pytest.raises(config_lib.ConfigError, match=r'^config.decode.beam_size=49 is more than '
                     r'half the vocabulary \(config.model.vocab_size=96\); set it to at most 48.$'):
    config_lib.validate(c)
  c.decode.method = 'greedy'  # the beam is not used.
  config_lib.validate(c)
