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
