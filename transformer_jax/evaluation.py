"""Evaluation: the eval loop every mode shares, and --mode=eval and --mode=decode
on a finished run.

`evaluate` sums the eval step over an eval split (training evaluates with it
too, trainer.py); `eval_measure` says how an evaluation measured, recorded
with its numbers. `--mode=eval` and `--mode=decode` read a finished run
(restore.py: its parameters, model, tokenizer and step) and build nothing of
training: eval builds the eval split alone, decode reads no data.

`--mode=eval` adds the task's metrics to the loss/accuracy/perplexity of
`evaluate` over the eval split (all of it unless config.eval_steps is set), and
appends the record to metrics.jsonl:
- character LMs: bits per character (the loss is in nats per character);
- G2P on CMUdict: word and phoneme error rates over every word of the eval
  split, a word counting as right when the output equals any of its
  pronunciations (`metrics.g2p_error_rates`);
- translation: corpus BLEU (sacrebleu) of the decoded eval split against the raw
  reference sentences.
Which of these a run reports follows from its dataset: the references come from
its recipe (`Datasets.references`), and every input is encoded by the recipe's
own `encode_input`, exactly as its training examples were. Decoding follows
`config.decode` (beam search with the paper's alpha=0.6, beam 4 by default).
The eval split may be other held-out data than the run's own (another
config.data.eval_split, config.data.eval_files): the record then names the
fields it was measured with (`eval_overrides`), so it never stands in for the
run's own evals.
`--mode=decode` turns input lines into output lines with the same settings; for a
masked LM each line's `[MASK]` markers are filled (generate.fill_masks: the
config.decode.top_k likeliest fills of each, 5 when it is 0).
"""

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from transformer_jax import config as config_lib
from transformer_jax import evaluators
from transformer_jax import generate
from transformer_jax import metrics as metrics_lib
from transformer_jax import parallel
from transformer_jax import progress
from transformer_jax import restore
from transformer_jax import run_log
from transformer_jax import train as train_lib
from transformer_jax.data import datasets as datasets_lib


def evaluate(strategy, state, batches, max_batches: int = 0) -> dict:
  """Sums of eval_step over `batches` (all of them when max_batches is 0)."""
  total = None
  count = max_batches or (len(batches) if hasattr(batches, '__len__') else None)
  bar = progress.bar(batches, total=count, desc='evaluating', unit='batch', leave=False)
  for i, batch in enumerate(bar):
    if max_batches and i >= max_batches:
      break
    sums = strategy.eval_step(state, strategy.put_batch(batch))
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  if total is None:
    raise ValueError('The eval split yielded no batches; check config.data.')
  return strategy.fetch(total)


def eval_measure(config, datasets, overrides: Optional[dict] = None, weights: str = '') -> dict:
  """How an evaluation measured, recorded with its numbers (metrics.jsonl) so that
  evals measured differently are never compared as one series: the eval split,
  where the dataset has a choice of them, config.eval_steps where it caps the
  batches (a partial eval), config.eval_stride where the windows overlap (a
  sliding-window eval: more context per target, for a model that uses it a lower
  loss), the `overrides` of a finished run's config it
  was measured with (restore.FinishedRun.overrides: e.g. other eval files), and
  the `weights` when they are not the parameters of the step recorded
  (restore.FinishedRun.weights: the EMA, an average of checkpoints).
  Keys: run_log.MEASURE_KEYS."""
  measure = {}
  if datasets.recipe.selects_eval_split:
    measure['eval_split'] = datasets.eval_split
  if config.eval_steps:
    measure['eval_steps'] = config.eval_steps
  if 0 < config.eval_stride < config.seq_len:
    measure['eval_stride'] = config.eval_stride
  if overrides:
    measure['eval_overrides'] = overrides
  if weights:
    measure['weights'] = weights
  return measure


@dataclasses.dataclass
class Opened:
  """A finished run (restore.py) and what eval or decode reads it with."""
  config: Any
  model: Any  # flax.linen.Module
  params: Any
  tokenizer: Any  # tokenizers.Tokenizer, or None (images).
  encode_input: Callable[[str], list]  # text -> the ids of a model input.
  datasets: Optional[datasets_lib.Datasets] = None  # eval only: the eval split, references.


def _opened(finished: restore.FinishedRun, datasets=None) -> Opened:
  encode = (datasets.encode_input if datasets is not None else
            datasets_lib.input_encoder(finished.config, finished.tokenizer))
  return Opened(config=finished.config, model=finished.model, params=finished.params,
                tokenizer=finished.tokenizer, encode_input=encode, datasets=datasets)


def _generate(run: Opened, lines: Sequence[str], max_new_tokens: int) -> list:
  """The output for each line (a continuation for decoders, an output for
  seq2seq, the line with its masks' fills for a masked LM), decoded as
  config.decode says."""
  config, d = run.config, run.config.decode
  if config_lib.ModelConfig.of(config.model).fills_masks:
    fills = generate.fill_masks(run.model, run.params, run.tokenizer, lines,
                                encode=run.encode_input, context=config.seq_len,
                                top_k=d.top_k or generate.FILL_TOP_K, batch_size=d.batch_size)
    return [generate.fill_mask_text(line, f, run.tokenizer.mask_token)
            for line, f in zip(lines, fills)]
  common = dict(encode=run.encode_input, context=config.seq_len, method=d.method,
                beam_size=d.beam_size, alpha=d.alpha, temperature=d.temperature, top_k=d.top_k,
                top_p=d.top_p, seed=config.seed)
  if config.model.variant == 'decoder':
    return generate.generate_text(run.model, run.params, run.tokenizer, lines,
                                  max_new_tokens=max_new_tokens, **common)
  return generate.translate(run.model, run.params, run.tokenizer, lines,
                            batch_size=d.batch_size, **common)


def task_metrics(run: Opened, loss: float) -> dict:
  """The metrics beyond loss and accuracy that the run reports: those of the
  evaluators config.evals names (default: its dataset's, catalog.py)."""
  config = run.config
  inputs = evaluators.Inputs(config=config, loss=loss, references=run.datasets.references,
                             generate=lambda lines: _generate(run, lines, 0))
  return evaluators.evaluate(config_lib.evaluators(config), inputs)


def training_task_metrics(config, model, params, datasets, loss: float) -> tuple:
  """(metrics, texts) of a training eval: the evaluators of `task_metrics` on the first
  config.eval_decode_examples examples of the eval split ({} and [] when it is 0), and
  each decoded example as 'source / reference / hypothesis' text (TensorBoard's text
  tab). `params`: one copy; `datasets`: the run's (datasets.Datasets)."""
  names = config_lib.evaluators(config)
  if not config.eval_decode_examples or not names:
    return {}, []
  run = Opened(config=config, model=model, params=params, tokenizer=datasets.tokenizer,
               encode_input=datasets.encode_input, datasets=datasets)
  decoded = []

  def generate_lines(lines):
    outputs = _generate(run, lines, 0)
    decoded.extend(outputs)
    return outputs

  inputs = evaluators.Inputs(config=config, loss=loss, references=datasets.references,
                             generate=generate_lines, max_examples=config.eval_decode_examples)
  values = evaluators.evaluate(names, inputs)
  pairs = inputs.reference_pairs() if datasets.references is not None else []
  texts = [f'source: {source}\nreference: {reference}\nhypothesis: {output}'
           for (source, reference), output in zip(pairs, decoded)]
  return values, texts


def eval_tags(config, datasets, overrides: Optional[dict] = None, weights: str = '') -> dict:
  """How --mode=eval measured: eval_measure (the eval split, the batches, the
  overrides, the weights) and, where the task decodes, the decoding method
  (recorded with the numbers in metrics.jsonl)."""
  tags = eval_measure(config, datasets, overrides, weights)
  if config.data.task == 'seq2seq':
    m = config.decode
    tags['decode'] = {'beam': f'beam {m.beam_size}, alpha {m.alpha}', 'greedy': 'greedy',
                      'sample': f'sample T={m.temperature} top_k={m.top_k} top_p={m.top_p}'
                      }[m.method]
  return tags


def evaluate_checkpoint(config, workdir: str) -> dict:
  """--mode=eval: the metrics of the checkpoint config.restore_checkpoint names
  (the weights config.restore_params names) on the eval split, with the task's
  decoding metrics and tags; `record_eval` writes them. Builds the eval split and
  the eval step only."""
  finished = restore.open_run(config, workdir)
  datasets = datasets_lib.eval_datasets(config, finished.tokenizer)
  strategy = parallel.create(config, None, train_lib.eval_step)
  state = strategy.place(train_lib.eval_state(config, finished.model, finished.params,
                                              finished.step))
  sums = evaluate(strategy, state, datasets.eval(), config.eval_steps)
  values = metrics_lib.summarize(sums, config.data.task)
  values.update(task_metrics(_opened(finished, datasets), values['loss']))
  tags = eval_tags(config, datasets, finished.overrides(), finished.weights)
  return dict(values, step=finished.step, **tags)


def record_eval(config, workdir: str, result: dict):
  """Appends an evaluate_checkpoint result to the run's records (metrics.jsonl
  and TensorBoard).

  Raises:
    OSError: the workdir cannot be written (e.g. it is read-only).
  """
  tags = {k: v for k, v in result.items() if isinstance(v, str) or k in run_log.MEASURE_KEYS}
  values = {k: v for k, v in result.items()
            if isinstance(v, (int, float)) and k != 'step' and k not in tags}
  writer = run_log.MetricWriter(workdir, config.total_steps, echo=False)  # main prints it.
  try:
    writer.write(result['step'], 'eval', values, tags)
  finally:
    writer.close()


def check_decodable(config):
  """Raises ConfigError before anything is restored when the model neither
  generates nor fills masks (a classifier)."""
  m = config_lib.ModelConfig.of(config.model)
  if not (m.generates or m.fills_masks):
    raise config_lib.ConfigError(
        f'config.model.encoder_head={m.encoder_head} outputs classes, not text; --mode=decode '
        'needs a decoder, seq2seq or masked-LM run (--mode=eval scores a classifier).')


def decode_checkpoint(config, workdir: str, lines: Sequence[str]) -> list:
  """--mode=decode: the output of the checkpoint config.restore_checkpoint names
  for each input line, one per line, in order (an empty line is an empty prompt
  or source; a masked LM's line without [MASK] comes back as it is). Reads the
  run's parameters and vocabulary, and no data."""
  check_decodable(config)
  return _generate(_opened(restore.open_run(config, workdir)), lines, config.sample_length)
