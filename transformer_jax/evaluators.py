"""The evaluators of --mode=eval: each named, and loaded by its name.

After the eval loss, `--mode=eval` runs the evaluators config.evals names (by
default its dataset's: catalog.DATASETS), in order, and records what each
returns with the loss (metrics.jsonl); training evals do too on the first
config.eval_decode_examples examples where that is set (evaluation.training_task_metrics). An evaluator is a function of `Inputs`
returning {metric: value}; `EVALUATORS` maps each name of catalog.EVALUATORS
(which says what it fits, for config.validate) to its function, so adding a
metric is one function here and one entry there, not a branch in evaluation.
The metric maths is metrics.py's.
"""

import dataclasses
import math
from typing import Callable, Optional, Sequence

from transformer_jax import metrics as metrics_lib


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What an evaluator reads of a restored run."""
  config: object  # the run's config (ConfigDict).
  loss: float  # the eval loss: nats per target token.
  references: Optional[list]  # the eval split's references (Datasets.references), or None.
  # input texts -> one output text each, decoded as config.decode says.
  generate: Callable[[Sequence[str]], list]
  # How many pairs are decoded: None = config.decode.max_examples (--mode=eval); a
  # training eval's config.eval_decode_examples.
  max_examples: Optional[int] = None

  def reference_pairs(self) -> list:
    """The (input, reference) pairs decoded: the first `max_examples`, else
    config.decode.max_examples (0 = all) of the eval split's."""
    limit = self.config.decode.max_examples if self.max_examples is None else self.max_examples
    return self.references[:limit] if limit else list(self.references)


def bits_per_character(inputs: Inputs) -> dict:
  """The eval loss in bits per character: nats per token / ln 2, each token a
  character (a char tokenizer)."""
  return {'bits_per_character': inputs.loss / math.log(2)}


def bleu(inputs: Inputs) -> dict:
  """Corpus BLEU (sacrebleu, 0-100) of the decoded sources against their reference
  translations: references are (source, target) sentence pairs."""
  pairs = inputs.reference_pairs()
  outputs = inputs.generate([source for source, _ in pairs])
  return {'bleu': metrics_lib.corpus_bleu(outputs, [target for _, target in pairs]),
          'decoded_sentences': len(pairs)}


def g2p_error_rates(inputs: Inputs) -> dict:
  """Word and phoneme error rates of the decoded words (metrics.g2p_error_rates): a
  word is right when its output equals any of its pronunciations; references
  are (word, [pronunciation, ...]) pairs."""
  pairs = inputs.reference_pairs()
  outputs = inputs.generate([word for word, _ in pairs])
  rates = metrics_lib.g2p_error_rates(outputs, [prons for _, prons in pairs])
  return {'word_error_rate': rates['wer'], 'phoneme_error_rate': rates['per'],
          'decoded_words': len(pairs)}


# name -> function; the names and what each fits: catalog.EVALUATORS.
EVALUATORS = {
    'bits_per_character': bits_per_character,
    'bleu': bleu,
    'g2p_error_rates': g2p_error_rates,
}


def evaluate(names: Sequence[str], inputs: Inputs) -> dict:
  """The metrics of the evaluators `names` (config.evaluators(config)), in order."""
  out = {}
  for name in names:
    out.update(EVALUATORS[name](inputs))
  return out
