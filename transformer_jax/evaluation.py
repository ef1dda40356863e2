"""--mode=eval and --mode=decode on a run's latest checkpoint.

`--mode=eval` adds the task's metrics to the loss/accuracy/perplexity of
`trainer.evaluate` over the eval split (all of it unless config.eval_steps is
set), and appends the record to metrics.jsonl:
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
`--mode=decode` turns input lines into output lines with the same settings.
"""

from typing import Sequence

from transformer_jax import config as config_lib
from transformer_jax import evaluators
from transformer_jax import generate
from transformer_jax import metrics as metrics_lib
from transformer_jax import run_log
from transformer_jax import trainer


def _generate(run: trainer.Run, lines: Sequence[str], max_new_tokens: int) -> list:
  """The output for each line (a continuation for decoders, an output for
  seq2seq), decoded as config.decode says."""
  config, d = run.config, run.config.decode
  common = dict(encode=run.datasets.encode_input, context=config.seq_len, method=d.method,
                beam_size=d.beam_size, alpha=d.alpha, temperature=d.temperature, top_k=d.top_k,
                top_p=d.top_p, seed=config.seed)
  if config.model.variant == 'decoder':
    return generate.generate_text(run.model, run.params, run.datasets.tokenizer, lines,
                                  max_new_tokens=max_new_tokens, **common)
  return generate.translate(run.model, run.params, run.datasets.tokenizer, lines,
                            batch_size=d.batch_size, **common)


def task_metrics(run: trainer.Run, loss: float) -> dict:
  """The metrics beyond loss and accuracy that the run reports: those of the
  evaluators config.evals names (default: its dataset's, catalog.py)."""
  config = run.config
  inputs = evaluators.Inputs(config=config, loss=loss, references=run.datasets.references,
                             generate=lambda lines: _generate(run, lines, 0))
  return evaluators.evaluate(config_lib.evaluators(config), inputs)


def eval_tags(config, datasets) -> dict:
  """How --mode=eval measured: trainer.eval_measure (the eval split, the batches)
  and, where the task decodes, the decoding method (recorded with the numbers
  in metrics.jsonl)."""
  tags = trainer.eval_measure(config, datasets)
  if config.data.task == 'seq2seq':
    m = config.decode
    tags['decode'] = {'beam': f'beam {m.beam_size}, alpha {m.alpha}', 'greedy': 'greedy',
                      'sample': f'sample T={m.temperature} top_k={m.top_k} top_p={m.top_p}'
                      }[m.method]
  return tags


def evaluate_checkpoint(config, workdir: str) -> dict:
  """--mode=eval: the latest checkpoint's metrics on the eval split, with the
  task's decoding metrics and tags; `record_eval` writes them."""
  with trainer.setup(config, workdir, 'eval') as run:
    sums = trainer.evaluate(run.strategy, run.state, run.datasets.eval(), config.eval_steps)
    values = metrics_lib.summarize(sums, config.data.task)
    values.update(task_metrics(run, values['loss']))
    tags = eval_tags(config, run.datasets)
  return dict(values, step=run.step, **tags)


def record_eval(config, workdir: str, result: dict):
  """Appends an evaluate_checkpoint result to the run's records (metrics.jsonl
  and TensorBoard).

  Raises:
    OSError: the workdir cannot be written (e.g. it is read-only).
  """
  tags = {k: v for k, v in result.items() if isinstance(v, str) or k in trainer.MEASURE_KEYS}
  values = {k: v for k, v in result.items()
            if isinstance(v, (int, float)) and k != 'step' and k not in tags}
  writer = run_log.MetricWriter(workdir, config.total_steps, echo=False)  # main prints it.
  try:
    writer.write(result['step'], 'eval', values, tags)
  finally:
    writer.close()


def check_decodable(config):
  """Raises ConfigError before anything is restored when the model cannot generate."""
  if not config_lib.ModelConfig.of(config.model).generates:
    raise config_lib.ConfigError(
        'config.model.variant=encoder does not generate text; --mode=decode needs a decoder '
        'or seq2seq run (--mode=eval scores an encoder).')


def decode_checkpoint(config, workdir: str, lines: Sequence[str]) -> list:
  """--mode=decode: the latest checkpoint's output for each input line, one per
  line, in order (an empty line is an empty prompt or source)."""
  check_decodable(config)
  with trainer.setup(config, workdir, 'decode') as run:
    return _generate(run, lines, config.sample_length)
