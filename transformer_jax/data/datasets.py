"""One recipe per dataset, and the entry points: `create_datasets` (training),
`eval_datasets` (--mode=eval) and `input_encoder` (--mode=decode).

A `Recipe` owns what is particular to a dataset: where its raw examples come
from (sources.py), its eval split (named in catalog.py) and the references the
decoding metrics score against, and `encode`, the one way its text becomes
model inputs, used alike by training examples, eval rows and
`Datasets.encode_input` (decode inputs). `create_datasets(config, workdir)`
picks the recipe for config.data.name and config.data.task from `RECIPES` and
returns a `Datasets`:

  tokenizer     encode/decode, vocab_size, pad_id (0; a Hugging Face checkpoint's
                tokenizer names its own: tokenizers.py); the run's own, saved in
                <workdir>/tokenizer/ at its first start.
                None for an image dataset (recipes.ImageRecipe).
  train         an infinite grain iterator of this host's rows of the global
                batches (batch.py: the keys; batching.py: how hosts share a
                batch). Shuffling is seeded by config.seed; the iterator's
                position is saved with grain.checkpoint.CheckpointSave(train)
                and restored with CheckpointRestore, after which it yields
                exactly the batch the saved run would have seen next
                (None from eval_datasets).
  eval()        a fresh, finite, deterministic iterable over the full eval
                split (this host's rows of each batch, the same number of
                batches on every host); the last batch is padded with weights 0.
  info          split sizes, 'unigram_entropy' (nats/token on train, LM tasks);
                {} from eval_datasets.
  eval_split    the eval split's name; references: its raw references for
                decoding metrics (G2P words, translation pairs), or None.
  encode_input  text -> the ids a training example of that text has as inputs.

`eval_datasets(config, tokenizer)` builds the eval split alone, with the
tokenizer a finished run saved (restore.py), and reads no training data where
the eval split is not cut from it; `input_encoder(config, tokenizer)` reads no
data at all.

Examples are held in memory, except a TFDS train split: it is streamed
(StreamedExamples over tfds.data_source, encoded batch by batch), so WMT14's
4.5M pairs or lm1b's 30M sentences need no more memory than a batch.
"""

import dataclasses
import functools
import sys
from typing import Callable, Iterable, Optional

from absl import logging
import grain
import jax

from transformer_jax import config as config_lib
from transformer_jax.data import examples as examples_lib
from transformer_jax.data import recipes
from transformer_jax.data import tokenizers as tok_lib

ConfigError = config_lib.ConfigError



def global_batch_size(config, num_devices: Optional[int] = None) -> int:
  """config.global_batch_size on this run's devices, logged when uneven_batch=drop lowered it."""
  n = num_devices or jax.device_count()
  b = config_lib.global_batch_size(config, n)
  if b != config.batch_size:
    logging.warning('config.batch_size=%d does not split over %d devices; using %d '
                    '(config.data.uneven_batch=drop).', config.batch_size, n, b)
  return b


def check_vocab(config, tokenizer):
  """The model must hold every id of the tokenizer and read its padding id as
  padding (a checkpoint's tokenizer names its own: GPT-2's is <|endoftext|>).
  Batches are padded with 0 (batch.py), which an encoder must read as padding;
  a decoder never attends forward to right padding, so any pad id does for it."""
  m, name = config.model, tokenizer.name
  fixes = []
  if tokenizer.vocab_size > m.vocab_size:
    fixes.append((f'config.model.vocab_size={m.vocab_size} is smaller than the {name} '
                  f'tokenizer\'s {tokenizer.vocab_size} ids',
                  f'--config.model.vocab_size={tokenizer.vocab_size} or more'))
  if tokenizer.pad_id != m.pad_id:
    fixes.append((f'config.model.pad_id={m.pad_id} is not the {name} tokenizer\'s padding id '
                  f'{tokenizer.pad_id}', f'--config.model.pad_id={tokenizer.pad_id}'))
  if fixes:
    raise ConfigError(f'{"; ".join(p for p, _ in fixes)}; set {" and ".join(f for _, f in fixes)}.')
  if m.variant != 'decoder' and tokenizer.pad_id != 0:
    raise ConfigError(f'the {name} tokenizer pads with id {tokenizer.pad_id}, but batches are '
                      f'padded with 0, which config.model.variant={m.variant} would read as a '
                      'token; use a tokenizer whose padding id is 0 (BERT\'s [PAD] is).')


# ----------------------------------------------------------------------------
# The registry and the entry point.

# Every recipe; create_datasets picks the one serving config.data.name and .task.
RECIPES = (recipes.ShakespeareStream, recipes.ShakespeareGenres, recipes.Cmudict,
           recipes.Tfds, recipes.TextFiles, recipes.Digits, recipes.TfdsImages)


def recipe_for(config) -> type:
  """The recipe class for config.data.name and config.data.task (a pair config.validate
  has checked against the catalog)."""
  d = config.data
  for recipe in RECIPES:
    if recipe.serves(d.name) and d.task in recipe.tasks_for(d.name):
      return recipe
  raise ConfigError(f'no recipe reads config.data.name={d.name!r} with task={d.task}; check it '
                    'with config.validate, or add the recipe to data/datasets.RECIPES.')


@dataclasses.dataclass
class Datasets:
  """A run's data (the module doc says what each field holds)."""
  tokenizer: Optional[tok_lib.Tokenizer]  # None for images.
  train: Optional[grain.DatasetIterator]  # None: eval_datasets.
  eval: Callable[[], Iterable[dict]]
  info: dict
  recipe: recipes.Recipe
  eval_split: str
  references: Optional[list]

  def encode_input(self, text: str) -> list:
    """The ids of `text` as a model input [n] (`encode_input`)."""
    return encode_input(self.recipe, self.tokenizer, text)


def encode_input(recipe: recipes.Recipe, tokenizer, text: str) -> list:
  """The ids of `text` as a model input [n]: the `inputs` of a training example
  of that text, made by the recipe's own encode (lm rows of lines start with
  <eos>, seq2seq sources end with it). Not cut to seq_len."""
  overflow = examples_lib.Overflow('error', sys.maxsize)
  example = recipe.encode(recipe.input_example(text), tokenizer, overflow, 'input')
  return example['inputs'].tolist()


def input_encoder(config, tokenizer) -> Callable[[str], list]:
  """text -> its ids as a model input (`encode_input`) for config's recipe,
  reading no data: what --mode=decode encodes its input lines with."""
  return functools.partial(encode_input, recipe_for(config)(config), tokenizer)


def create_datasets(config, workdir: Optional[str] = None) -> Datasets:
  """Tokenizer, train iterator, eval() and info for `config` (see module doc).

  With a workdir the tokenizer is the run's: built and saved in
  <workdir>/tokenizer/ at the first start, read back at later ones.
  """
  config_lib.validate(config)
  batch_size = global_batch_size(config)
  recipe = recipe_for(config)(config)
  tokenizer = None
  if recipe.tokenizes:
    tokenizer = tok_lib.run_tokenizer(workdir, recipe.tokenizer_name, recipe.new_tokenizer)
    check_vocab(config, tokenizer)
  train_ds, eval_ds, info = recipe.batches(tokenizer, batch_size)
  info.update(batch_size=batch_size)
  if tokenizer is not None:
    info.update(vocab_size=tokenizer.vocab_size, tokenizer=tokenizer.name)
  return Datasets(tokenizer=tokenizer, train=iter(train_ds), eval=lambda: eval_ds, info=info,
                  recipe=recipe, eval_split=recipe.eval_split, references=recipe.references())


def eval_datasets(config, tokenizer: Optional[tok_lib.Tokenizer]) -> Datasets:
  """The eval split of `config` alone, encoded with `tokenizer` (a finished
  run's own, restore.py), as create_datasets would build it: no train
  iterator, no info, and no training data read unless the eval split is cut
  from it (shakespeare, text without config.data.eval_files). The eval split
  may differ from the run's (config.data.eval_split, eval_files)."""
  config_lib.validate(config)
  batch_size = global_batch_size(config)
  recipe = recipe_for(config)(config)
  if tokenizer is not None:
    check_vocab(config, tokenizer)
  eval_ds = recipe.eval_batches(tokenizer, batch_size)
  return Datasets(tokenizer=tokenizer, train=None, eval=lambda: eval_ds, info={}, recipe=recipe,
                  eval_split=recipe.eval_split, references=recipe.references())
