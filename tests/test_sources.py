"""The offline datasets: the corpus a reader can check, and split sizes."""

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
