"""The offline datasets: the corpus a reader can check, and split sizes."""

import pytest

from transformer_jax.data import sources


def test_shakespeare_corpus_is_the_documented_one():
  text = sources.shakespeare_text()
  assert len(sources.shakespeare_works()) == 42
  assert len(text) == 5_057_198
  assert len(set(text)) == 84


def test_shakespeare_split_is_first_90_percent_then_last_10():
  train, valid = sources.shakespeare_split()
  assert (len(train), len(valid)) == (4_551_478, 505_720)
  assert train + valid == sources.shakespeare_text()


def test_every_work_has_a_genre():
  genres = sources.shakespeare_genres()
  assert set(genres) == set(sources.shakespeare_works())
  assert set(genres.values()) == set(sources.GENRES)


def test_genre_split_is_by_play():
  train, test = sources.genre_split()
  assert not set(train) & set(test)
  assert len(train) + len(test) == 42
  genres = sources.shakespeare_genres()
  assert {genres[w] for w in test} == set(sources.GENRES)
  assert sources.genre_split() == (train, test)


# ---------------------------------------------------------------------------
# CMUdict.


def test_g2p_split_positions():
  # 1-based dictionary positions: 20, 40, ... dev; 17, 18, 37, 38, ... test.
  names = [sources.g2p_split_of(p) for p in range(1, 41)]
  assert [p for p, s in enumerate(names, 1) if s == 'dev'] == [20, 40]
  assert [p for p, s in enumerate(names, 1) if s == 'test'] == [17, 18, 37, 38]


def test_cmudict_split_sizes_and_no_shared_words():
  splits = sources.cmudict_g2p()
  sizes = {k: len(v) for k, v in splits.items()}
  assert sizes == {'train': 107_146, 'dev': 6_302, 'test': 12_604}
  words = {k: {w for w, _ in v} for k, v in splits.items()}
  assert sum(len(w) for w in words.values()) == sum(sizes.values())  # no duplicates.
  assert not words['train'] & words['test'] and not words['train'] & words['dev']
  assert not words['dev'] & words['test']
  # All pronunciations of a word stay together; stress digits are gone.
  assert dict(splits['train'])['live'] == ['L AY V', 'L IH V']
  assert dict(splits['dev'])['read'] == ['R EH D', 'R IY D']
  assert not any(c.isdigit() for _, ps in splits['dev'] for p in ps for c in p)


def test_cmudict_split_is_reproducible_and_keeps_stress_on_request():
  with_stress = sources.cmudict_g2p(keep_stress=True)
  plain = sources.cmudict_g2p()
  for split in sources.G2P_SPLITS:
    assert [w for w, _ in with_stress[split]] == [w for w, _ in plain[split]]
  assert dict(with_stress['train'])['hello'] == ['HH AH0 L OW1', 'HH EH0 L OW1']


# ---------------------------------------------------------------------------
# Local text files: bad input gets one line naming the file, the line and the fix.


def test_text_lines_and_tsv(tmp_path):
  path = tmp_path / 'a.tsv'
  path.write_text('hello\tbonjour\n\nworld\tmonde\r\n', encoding='utf-8')
  assert sources.read_text_file(str(path), tsv=True) == [('hello', 'bonjour'),
                                                         ('world', 'monde')]
  assert sources.read_text_file(str(path)) == ['hello\tbonjour', 'world\tmonde']


def test_a_byte_order_mark_is_not_text(tmp_path):
  path = tmp_path / 'notepad.txt'
  path.write_bytes(b'\xef\xbb\xbfhello\r\nworld\r\n')
  assert sources.read_text_file(str(path)) == ['hello', 'world']


@pytest.mark.parametrize('content, tsv, message', [
    (b'', False, r'a\.txt: the file is empty; give a file with one example per line\.'),
    (b' \n\n', False, r'a\.txt: the file is empty'),
    (b'ok\ncaf\xe9\n', False, r'a\.txt:2: invalid UTF-8 at byte 3 .*re-encode the file as UTF-8'),
    (b'a\tb\nno tab here\n', True, r'a\.txt:2: no tab in the line; write each example as '
                                   r'source<TAB>target'),
    (b'a\tb\n\tmonde\n', True, r'a\.txt:2: the source side is empty; write each example as '
                               r'source<TAB>target, both non-empty\.'),
    (b'a\tb\nworld\t\r\n', True, r'a\.txt:2: the target side is empty'),
])
def test_bad_text_files(tmp_path, content, tsv, message):
  path = tmp_path / 'a.txt'
  path.write_bytes(content)
  with pytest.raises(ValueError, match=message) as e:
    sources.read_text_file(str(path), tsv)
  assert '\n' not in str(e.value)


def test_missing_file(tmp_path):
  with pytest.raises(ValueError, match=r'nope\.txt: no such file \(config\.data\.train_files\)'):
    sources.expand_files(str(tmp_path / 'nope.txt'), 'train_files')


def test_a_directory_is_a_one_line_error(tmp_path):
  (tmp_path / 'sub').mkdir()
  (tmp_path / 'a.txt').write_text('hello\n')
  with pytest.raises(ValueError, match=r'sub: cannot be read \(Is a directory\); give readable '
                                       r'text files') as e:
    sources.read_text_files(sources.expand_files(str(tmp_path / '*'), 'train_files'))
  assert '\n' not in str(e.value)


def test_a_file_two_patterns_match_is_read_once(tmp_path):
  for name in ('a.txt', 'b.txt'):
    (tmp_path / name).write_text('hello\n')
  pattern = f'{tmp_path}/*.txt,{tmp_path}/a.txt,{tmp_path}/./b.txt'
  assert sources.expand_files(pattern, 'train_files') == [str(tmp_path / 'a.txt'),
                                                          str(tmp_path / 'b.txt')]
