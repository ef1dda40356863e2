"""Task metrics that need the whole eval split decoded, and text-in/text-out decoding.

`--mode=eval` adds these to the loss/accuracy/perplexity of `train.evaluate`:
- character LMs: bits per character (the loss is in nats per character);
- G2P on CMUdict: word and phoneme error rates over every word of the eval
  split, a word counting as right when the output equals any of its
  pronunciations (`eval_metrics.g2p_error_rates`);
- translation: corpus BLEU (sacrebleu) of the decoded eval split against the raw
  reference sentences.
Decoding follows `config.decode` (beam search with the paper's alpha=0.6, beam 4
by default). `--mode=decode` turns input lines into output lines with the same
settings.
"""

import math
from typing import Sequence

from transformer_jax import eval_metrics
from transformer_jax import generate
from transformer_jax.data import sources


def _decode_kwargs(config, tokenizer) -> dict:
  d = config.decode
  return dict(method=d.method, beam_size=d.beam_size, alpha=d.alpha,
              temperature=d.temperature, top_k=d.top_k, top_p=d.top_p, seed=config.seed,
              encode=_encode(config, tokenizer), context=config.seq_len)


def _encode(config, tokenizer):
  """Text -> model input ids, as today's pipeline makes them (sources end with <eos>)."""
  # TODO(integration): replace with the data recipe's encode_input.
  if config.model.variant == 'seq2seq':
    return lambda s: tokenizer.encode(s) + [tokenizer.eos_id]
  return tokenizer.encode


def _first(items: list, limit: int) -> list:
  return items[:limit] if limit else items


def g2p_metrics(config, model, params, tokenizer) -> dict:
  """Word and phoneme error rates on the eval split's words (all of them)."""
  split = config.data.eval_split or 'dev'
  words = _first(sources.cmudict_g2p(config.data.keep_stress)[split], config.decode.max_examples)
  predictions = generate.translate(model, params, tokenizer, [w for w, _ in words],
                                   batch_size=config.decode.batch_size,
                                   **_decode_kwargs(config, tokenizer))
  rates = eval_metrics.g2p_error_rates(predictions, [prons for _, prons in words])
  return {'word_error_rate': rates['wer'], 'phoneme_error_rate': rates['per'],
          'decoded_words': len(words)}


def bleu_metrics(config, model, params, tokenizer) -> dict:
  """Corpus BLEU of the decoded eval split against its raw references."""
  d = config.data
  name = d.name[len('tfds:'):]
  split = d.eval_split or sources.TFDS_EVAL_SPLIT[name]
  pairs = _first(sources.tfds_examples(name, split, d.data_dir, d.source_language,
                                       d.target_language, d.max_examples),
                 config.decode.max_examples)
  hypotheses = generate.translate(model, params, tokenizer, [s for s, _ in pairs],
                                  batch_size=config.decode.batch_size,
                                  **_decode_kwargs(config, tokenizer))
  return {'bleu': eval_metrics.corpus_bleu(hypotheses, [t for _, t in pairs]),
          'decoded_sentences': len(pairs)}


def describe(config) -> dict:
  """How --mode=eval measured: the eval split and, where the task decodes, the
  decoding method (recorded with the numbers in metrics.jsonl)."""
  d = config.data
  tags = {}
  if d.name == 'cmudict':
    tags['eval_split'] = d.eval_split or 'dev'
  elif d.name.startswith('tfds:'):
    tags['eval_split'] = d.eval_split or sources.TFDS_EVAL_SPLIT[d.name[len('tfds:'):]]
  if d.task == 'seq2seq':
    m = config.decode
    tags['decode'] = {'beam': f'beam {m.beam_size}, alpha {m.alpha}', 'greedy': 'greedy',
                      'sample': f'sample T={m.temperature} top_k={m.top_k} top_p={m.top_p}'
                      }[m.method]
  return tags


def task_metrics(config, model, params, tokenizer, loss: float) -> dict:
  """The metrics beyond loss and accuracy that the config's task reports."""
  d = config.data
  if d.task == 'lm' and d.tokenizer == 'char':
    return {'bits_per_character': loss / math.log(2)}
  if d.task == 'seq2seq' and d.name == 'cmudict':
    return g2p_metrics(config, model, params, tokenizer)
  if d.task == 'seq2seq' and d.name.startswith('tfds:'):
    return bleu_metrics(config, model, params, tokenizer)
  return {}


def decode_lines(config, model, params, tokenizer, lines: Sequence[str]) -> list:
  """--mode=decode: a continuation of each prompt (decoder) or an output for
  each source (seq2seq)."""
  if config.model.variant == 'decoder':
    return generate.generate_text(model, params, tokenizer, lines,
                                  max_new_tokens=config.sample_length,
                                  **_decode_kwargs(config, tokenizer))
  if config.model.variant == 'seq2seq':
    return generate.translate(model, params, tokenizer, lines,
                              batch_size=config.decode.batch_size,
                              **_decode_kwargs(config, tokenizer))
  raise ValueError(f'config.model.variant={config.model.variant} does not generate text; '
                   '--mode=decode needs a decoder or seq2seq model.')
