"""What each dataset is, as plain data: the one place its facts live.

`DATASETS` maps every config.data.name to a `Dataset`: the kind of its raw
examples, the tasks it serves, its eval splits, its images' shape and classes,
the fields of its TFDS records, and the evaluators `--mode=eval` runs on it by
default. `EVALUATORS` says what each evaluator scores (the functions are in
evaluators.py, loaded by name). Config validation, the data sources, the
recipes and evaluation read these tables; none keeps its own copy.

Adding a dataset whose examples an existing recipe reads (a TFDS text
classification set, say) is one `Dataset` entry here; a new kind of example
also needs its recipe (data/recipes.py).

This module imports nothing of the package: it is the bottom floor.
"""

import dataclasses
from typing import Optional

# kind -> what one raw example of a dataset of that kind is (data/sources.py reads them).
KINDS = {
    'translation': '(source, target): a sentence and its translation',
    'lm': 'a text',
    'classify': '(text, label)',
    'pairs': '(text a, text b, label): a sentence pair and its class',
    'image': '(image uint8 [H, W, C], label)',
    'g2p': '(word, pronunciation): a word and its phonemes',
    'corpus': 'a corpus of works: one token stream (lm, mlm), passages labelled by genre',
    'files': "the user's files: lines, source<TAB>target or text<TAB>label",
}
TFDS_PREFIX = 'tfds:'  # config.data.name=tfds:<name> reads TFDS dataset <name>.


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """What an evaluator scores (evaluators.py holds its function under the same name):
  the tasks, dataset kinds and tokenizers it fits; an empty tuple fits any."""
  tasks: tuple
  kinds: tuple = ()
  tokenizers: tuple = ()
  reports: str = ''  # the metrics it adds to an eval record.

  def misfit(self, task: str, kind: str, tokenizer: str) -> Optional[str]:
    """Why it cannot score a run of this task, dataset kind and tokenizer, or None."""
    for what, value, allowed in (('task', task, self.tasks), ('dataset kind', kind, self.kinds),
                                 ('tokenizer', tokenizer, self.tokenizers)):
      if allowed and value not in allowed:
        return f'scores {what} {" or ".join(allowed)}, not {value}'
    return None


# name -> Evaluator: the choices of config.evals.
EVALUATORS = {
    # the eval loss in bits: nats per token / ln 2, tokens being characters.
    'bits_per_character': Evaluator(('lm',), tokenizers=('char',),
                                    reports='bits_per_character'),
    # sacrebleu's corpus BLEU of the decoded eval split against its reference translations.
    'bleu': Evaluator(('seq2seq',), kinds=('translation',), reports='bleu, decoded_sentences'),
    # word and phoneme error rates of the decoded words against all their pronunciations.
    'g2p_error_rates': Evaluator(('seq2seq',), kinds=('g2p',),
                                 reports='word_error_rate, phoneme_error_rate, decoded_words'),
}


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One config.data.name and its facts.

  kind: a key of KINDS. tasks: the config.data.task values it serves.
  eval_split: the held-out split evaluated by default ('' where the recipe
    names it: text files); task_eval_split overrides it for some tasks.
  eval_splits: what config.data.eval_split may pick: () the default only,
    a tuple those splits, None any split of the source (TFDS names and slices).
  image_shape: (H, W, C) of every image (image datasets only).
  num_classes: labels of a classification dataset (0: found in the data).
  fields: the TFDS record's fields read as the example, in order (translation
    reads config.data.source_language and target_language instead).
  evaluators: config.evals when it is empty: those of them that fit the run.
  """
  kind: str
  tasks: tuple
  eval_split: str
  task_eval_split: tuple = ()  # ((task, split), ...)
  eval_splits: Optional[tuple] = ()
  image_shape: Optional[tuple] = None
  num_classes: int = 0
  fields: tuple = ()
  evaluators: tuple = ()

  def default_eval_split(self, task: str) -> str:
    """The split evaluated when config.data.eval_split is empty."""
    return dict(self.task_eval_split).get(task, self.eval_split)

  def default_evaluators(self, task: str, tokenizer: str) -> tuple:
    """The evaluators a run of this dataset reports when config.evals is empty."""
    return tuple(name for name in self.evaluators
                 if EVALUATORS[name].misfit(task, self.kind, tokenizer) is None)


_TRANSLATION = Dataset('translation', ('seq2seq',), 'test', eval_splits=None,
                       evaluators=('bleu',))


def _glue_pairs(eval_split: str, num_classes: int, fields: tuple) -> Dataset:
  """A GLUE sentence-pair classification task: fields (sentence A, sentence B, label)."""
  return Dataset('pairs', ('classify',), eval_split, eval_splits=None, num_classes=num_classes,
                 fields=fields)


_TFDS_IMAGES = dict(num_classes=10, eval_splits=None, fields=('image', 'label'))

DATASETS = {
    # The bundled Shakespeare: the first 90% of characters train, the last 10% is
    # validation; genre passages are split by work, every fifth work of a genre to test.
    'shakespeare': Dataset('corpus', ('lm', 'mlm', 'classify'), 'validation',
                           task_eval_split=(('classify', 'test'),),
                           evaluators=('bits_per_character',)),
    # CMUdict G2P: every 20th word dev, positions 17 and 18 modulo 20 test.
    'cmudict': Dataset('g2p', ('seq2seq',), 'dev', eval_splits=('dev', 'test'),
                       evaluators=('g2p_error_rates',)),
    # scikit-learn's digits, split by class with a fixed seed.
    'digits': Dataset('image', ('classify',), 'validation', eval_splits=('validation', 'test'),
                      image_shape=(8, 8, 1), num_classes=10),
    'text': Dataset('files', ('lm', 'mlm', 'classify', 'seq2seq'), '',
                    evaluators=('bits_per_character',)),
    'tfds:wmt14_translate/de-en': _TRANSLATION,
    'tfds:wmt17_translate/de-en': _TRANSLATION,
    'tfds:lm1b': Dataset('lm', ('lm', 'mlm'), 'test', eval_splits=None, fields=('text',),
                         evaluators=('bits_per_character',)),
    'tfds:glue/sst2': Dataset('classify', ('classify',), 'validation', eval_splits=None,
                              num_classes=2, fields=('sentence', 'label')),
    # GLUE's sentence-pair tasks (Wang et al. 2019), read as [CLS] a [SEP] b [SEP] with
    # token types (config.model.token_types=2). Their test splits hold no labels.
    'tfds:glue/mrpc': _glue_pairs('validation', 2, ('sentence1', 'sentence2', 'label')),
    'tfds:glue/qnli': _glue_pairs('validation', 2, ('question', 'sentence', 'label')),
    'tfds:glue/rte': _glue_pairs('validation', 2, ('sentence1', 'sentence2', 'label')),
    'tfds:glue/qqp': _glue_pairs('validation', 2, ('question1', 'question2', 'label')),
    'tfds:glue/mnli': _glue_pairs('validation_matched', 3, ('premise', 'hypothesis', 'label')),
    # AG's news topics (Zhang et al. 2015): a news article's description, 4 classes.
    'tfds:ag_news_subset': Dataset('classify', ('classify',), 'test', eval_splits=None,
                                   num_classes=4, fields=('description', 'label')),
    'tfds:mnist': Dataset('image', ('classify',), 'test', image_shape=(28, 28, 1),
                          **_TFDS_IMAGES),
    'tfds:cifar10': Dataset('image', ('classify',), 'test', image_shape=(32, 32, 3),
                            **_TFDS_IMAGES),
}


def tfds_names() -> tuple:
  """The TFDS datasets (names without the tfds: prefix)."""
  return tuple(name[len(TFDS_PREFIX):] for name in DATASETS if name.startswith(TFDS_PREFIX))


def names_of(**facts) -> tuple:
  """The config.data.name of every dataset whose fields equal `facts` (e.g. kind='image')."""
  return tuple(name for name, d in DATASETS.items()
               if all(getattr(d, key) == value for key, value in facts.items()))
