"""Each tokenizer: round trip on the corpus, unknown characters, empty lines."""

import numpy as np
import pytest

from transformer_jax.data import sources
from transformer_jax.data import tokenizers


@pytest.fixture(scope='module')
def split():
  return sources.shakespeare_split()


def test_char_round_trip_on_the_corpus(split):
  train, valid = split
  tok = tokenizers.CharTokenizer.from_text(train)
  assert tok.vocab_size == 84 + tokenizers.NUM_SPECIALS
  ids = tok.encode_array(valid)
  assert ids.min() >= tokenizers.NUM_SPECIALS
  assert tok.decode(ids) == valid


def test_char_unknown_and_empty():
  tok = tokenizers.CharTokenizer.from_text('abc\n')
  assert tok.pad_id == 0
  assert tok.encode('') == [] and tok.decode([]) == ''
  assert tok.encode('\n\n') == [tok.encode('\n')[0]] * 2
  ids = tok.encode('abz\u00e9')  # neither z nor the non-ASCII e-acute were seen.
  assert ids[2:] == [tokenizers.UNK_ID, tokenizers.UNK_ID]
  assert tok.decode(ids) == 'ab\ufffd\ufffd'
  # Padding and <eos> never show up in decoded text.
  assert tok.decode(ids[:2] + [tokenizers.EOS_ID, tokenizers.PAD_ID]) == 'ab'


def test_char_ascii_fast_path_matches_the_slow_path(split):
  tok = tokenizers.CharTokenizer.from_text(split[0])
  text = split[1][:5000]
  np.testing.assert_array_equal(tok.encode_array(text),
                                tok.encode_array(text + '\u00e9')[:-1])


def test_unigram_entropy_of_a_uniform_stream():
  assert tokenizers.unigram_entropy(np.arange(8)) == pytest.approx(np.log(8))


def test_byte_round_trip_and_any_text(split):
  tok = tokenizers.ByteTokenizer()
  assert tok.vocab_size == 256 + tokenizers.NUM_SPECIALS
  valid = split[1][:20000]
  assert tok.decode(tok.encode(valid)) == valid
  text = 'caf\u00e9 \u2014 \U0001f600\n\n'
  assert tok.decode(tok.encode(text)) == text
  assert min(tok.encode(text)) >= tokenizers.NUM_SPECIALS
  assert tok.encode('') == []


@pytest.fixture(scope='module')
def spm(split, tmp_path_factory):
  lines = split[0][:400_000].split('\n')
  return tokenizers.load_or_train_sentencepiece(
      lambda: iter(lines), str(tmp_path_factory.mktemp('spm')), 'test', 400)


def test_sentencepiece_round_trip_keeps_newlines_and_spaces(spm, split):
  assert spm.vocab_size == 400
  assert (spm.pad_id, spm.unk_id, spm.eos_id, spm.mask_id) == (0, 1, 2, 3)
  valid = split[1][:20000]
  ids = spm.encode(valid)
  assert len(ids) < len(valid) / 1.5  # subwords, not characters.
  assert spm.decode(ids) == valid
  text = '\n  Indented line,  two spaces.\n\n\nEnd\n'
  assert spm.decode(spm.encode(text)) == text
  assert spm.encode('') == [] and spm.decode([]) == ''


def test_sentencepiece_unknown_character(spm):
  ids = spm.encode('a\u4e2d')
  assert tokenizers.UNK_ID in ids


def test_sentencepiece_is_cached(spm, tmp_path):
  again = tokenizers.load_or_train_sentencepiece(
      lambda: pytest.fail('retrained a cached model'), spm.model_path.rsplit('/', 1)[0],
      'test', 400)
  assert again.encode('to be or not') == spm.encode('to be or not')
