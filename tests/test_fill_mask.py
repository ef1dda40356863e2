"""--mode=decode on a masked LM: each [MASK] of a line filled with the likeliest tokens."""

import collections
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPOSITORY, load_config, override, override_flags
from transformer_jax import config as config_lib
from transformer_jax import evaluation
from transformer_jax import generate
from transformer_jax import restore
from transformer_jax import trainer
from transformer_jax.data import DataError
from transformer_jax.data import datasets
from transformer_jax.data import sources

# shakespeare_mlm:quick, small and brief: with rotary positions 200 steps are enough
# for a character MLM to read its neighbours (with sinusoids it still guesses ' ').
BRIEF = {'model.num_layers': 2, 'model.d_model': 64, 'model.num_heads': 4,
         'model.position': 'rotary', 'seq_len': 64, 'batch_size': 32, 'total_steps': 200,
         'optimizer.schedule': 'constant', 'learning_rate': 3e-3, 'warmup_steps': 50,
         'eval_every': 200, 'eval_steps': 2, 'checkpoint_every': 200, 'log_every': 100}


def brief_config():
  return override(load_config('shakespeare_mlm:quick'), BRIEF)


# The tests sharing the module's trained model run on one xdist worker (CI's
# --dist loadgroup), so the model is trained once, not once per worker.
SHARED_MODEL = pytest.mark.xdist_group('fill_mask_model')


@pytest.fixture(scope='module')
def mlm_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('mlm'))
  trainer.train(brief_config(), workdir)
  return workdir


@SHARED_MODEL
def test_fills_of_held_out_text_beat_the_unigram_guess(mlm_workdir):
  """One character masked per held-out line (the validation split): the model's
  likeliest fill is right more often than the training text's commonest character."""
  config = brief_config()
  train_text, held_out = sources.shakespeare_split()
  commonest = collections.Counter(train_text).most_common(1)[0][0]
  rng = np.random.default_rng(0)
  lines, answers = [], []
  for line in [l for l in held_out.split('\n') if 20 <= len(l) <= 60][:200]:
    at = int(rng.integers(len(line)))
    lines.append(line[:at] + '[MASK]' + line[at + 1:])
    answers.append(line[at])
  run = restore.open_run(config, mlm_workdir)
  fills = generate.fill_masks(run.model, run.params, run.tokenizer, lines,
                              encode=datasets.input_encoder(config, run.tokenizer),
                              context=config.seq_len, top_k=3, batch_size=64)
  assert [len(f) for f in fills] == [1] * len(lines)  # one mask per line, three fills each.
  assert all(len(f[0]) == 3 for f in fills)
  probabilities = np.asarray([[p for _, p in f[0]] for f in fills])
  assert np.all(np.diff(probabilities, axis=1) <= 0) and np.all(probabilities.sum(1) <= 1 + 1e-6)
  model_accuracy = np.mean([f[0][0][0] == a for f, a in zip(fills, answers)])
  unigram_accuracy = np.mean([a == commonest for a in answers])
  assert model_accuracy > unigram_accuracy, (model_accuracy, unigram_accuracy)


@SHARED_MODEL
def test_decode_mode_prints_each_line_with_its_fills(mlm_workdir, tmp_path):
  """The decode contract: one output line per input line, in order, an empty line
  and a line without [MASK] included (printed as they are); a fill that is a
  newline is printed as the two characters \\n."""
  inputs = tmp_path / 'masked.txt'
  inputs.write_text('To be, or not to b[MASK]\n\nno mask here\n[MASK][MASK]ROMEO\n')
  cmd = [sys.executable, '-m', 'transformer_jax.main', '--config=shakespeare_mlm:quick',
         f'--workdir={mlm_workdir}', '--mode=decode', f'--input={inputs}',
         '--config.decode.top_k=4', *override_flags(BRIEF)]
  out = subprocess.run(cmd, cwd=REPOSITORY, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert len(lines) == 4 and lines[1:3] == ['', 'no mask here']
  assert lines[0].startswith('To be, or not to b[') and lines[0].endswith(']')
  assert lines[0][len('To be, or not to b['):-1].count('|') == 3  # four fills.
  assert lines[3].startswith('[') and lines[3].endswith(']ROMEO')  # two masks side by side.
  # The same lines from Python, the newline of a fill written as \n.
  config = override(brief_config(), {'decode.top_k': 4})
  direct = evaluation.decode_checkpoint(config, mlm_workdir, inputs.read_text().splitlines())
  assert [l.replace('\\', '\\\\').replace('\n', '\\n') for l in direct] == lines


def test_a_mark_is_one_mask_id_and_the_text_around_it_is_encoded_as_an_input():
  config = load_config('shakespeare_mlm')
  tokenizer = datasets.recipe_for(config)(config).new_tokenizer(None)
  encode = datasets.input_encoder(config, tokenizer)
  ids = generate.masked_ids(encode, tokenizer, 'th[MASK] c[MASK]t')
  assert ids == [*encode('th'), tokenizer.mask_id, *encode(' c'), tokenizer.mask_id,
                 *encode('t')]
  assert generate.fill_mask_text('th[MASK] c[MASK]t', [[('e', 0.9)], [('a', 0.5), ('u', 0.25)]],
                                 '[MASK]') == 'th[e 0.900] c[a 0.500|u 0.250]t'


@SHARED_MODEL
def test_a_line_longer_than_the_context_and_a_classifier_are_refused_in_one_line(mlm_workdir):
  config = brief_config()
  with pytest.raises(DataError, match=r'^input 1 has 65 tokens, more than the 64 the model was '
                     r'trained on \(config.seq_len\); shorten it.$'):
    evaluation.decode_checkpoint(config, mlm_workdir, ['[MASK]', 'x' * 64 + '[MASK]'])
  with pytest.raises(config_lib.ConfigError, match='--mode=decode needs a decoder, seq2seq or '
                     'masked-LM run'):
    evaluation.decode_checkpoint(load_config('shakespeare_genre'), mlm_workdir, ['x'])
