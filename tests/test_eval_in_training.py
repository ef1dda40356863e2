"""Training evals run the task's evaluators on config.eval_decode_examples examples."""

import glob
import os

from tensorboard.backend.event_processing import event_accumulator

from transformer_jax import configs
from transformer_jax import run_log
from transformer_jax import trainer


def tiny_g2p_config(**values):
  c = configs.load('cmudict_g2p:quick')
  c.model.update(num_layers=1, d_model=32, num_heads=2)
  c.update(total_steps=4, eval_every=2, eval_steps=1, checkpoint_every=4, log_every=2,
           **values)
  c.decode.method = 'greedy'
  return c


def test_training_evals_score_and_show_the_decoded_examples(tmp_path):
  workdir = str(tmp_path / 'g2p')
  trainer.train(tiny_g2p_config(eval_decode_examples=3), workdir)
  evals = run_log.read_jsonl(workdir, 'eval')
  assert [r['step'] for r in evals] == [2, 4]
  for r in evals:
    assert r['decoded_words'] == 3
    assert 0 <= r['word_error_rate'] <= 1 and r['phoneme_error_rate'] >= 0
  events = event_accumulator.EventAccumulator(
      os.path.join(workdir, 'tensorboard'), size_guidance={'tensors': 0, 'scalars': 0})
  events.Reload()
  assert [e.step for e in events.Scalars('eval/word_error_rate')] == [2, 4]
  texts = events.Tensors('eval/decoded')
  assert [t.step for t in texts] == [2, 4]
  rows = [row.decode() for row in texts[-1].tensor_proto.string_val]
  assert len(rows) == 3 and all('source:' in r and 'hypothesis:' in r for r in rows)


def test_training_evals_decode_nothing_by_default(tmp_path):
  workdir = str(tmp_path / 'g2p')
  trainer.train(tiny_g2p_config(), workdir)
  assert all('word_error_rate' not in r for r in run_log.read_jsonl(workdir, 'eval'))
