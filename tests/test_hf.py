"""Hugging Face checkpoints: tiny random GPT-2 and BERT models built from their
configs (no download), saved, imported with config.init_from=hf:PATH, and their
logits compared with transformers' own in float32; a GPT-2 exported back loads
into transformers with the same logits; the refusals are one line."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
pytest.importorskip('safetensors')

from transformer_jax import config as config_lib  # pylint: disable=g-import-not-at-top
from transformer_jax import hf
from transformer_jax.models import accounting
from transformer_jax.models.transformer import build_model

VOCAB, D, HEADS, LAYERS, POSITIONS = 40, 16, 4, 2, 16
TOLERANCE = 1e-4


def _perturbed(model):
  """Every weight (LayerNorms and biases, which start at 1 and 0, included)
  moved off its initial value, so a wrong mapping cannot hide."""
  torch.manual_seed(1)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def _save(model, path):
  model.save_pretrained(str(path))
  return str(path)


def _tokens(batch=2, length=9):
  # no id 0: our models read pad_id (0) as padding.
  return np.random.default_rng(0).integers(1, VOCAB, (batch, length)).astype(np.int64)


def _import(path, variant, head='mlm', **run):
  """config + params of a run with init_from=hf:PATH (as trainer.setup does)."""
  config = config_lib.base_config()
  config.model.update(variant=variant, encoder_head=head, dropout_rate=0.0, **run)
  hf.configure(config, path)
  config_lib.validate_model(config.model)
  model = build_model(config.model)
  fresh = model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))['params']
  params, report = hf.load(config, jax.device_get(fresh))
  return config, model, params, report


@pytest.fixture(scope='module')
def gpt2_dir(tmp_path_factory):
  torch.manual_seed(0)
  cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=D,
                                n_layer=LAYERS, n_head=HEADS, bos_token_id=1, eos_token_id=1)
  model = _perturbed(transformers.GPT2LMHeadModel(cfg))
  return _save(model, tmp_path_factory.mktemp('gpt2')), model


def _bert_config(**kwargs):
  return transformers.BertConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=LAYERS,
                                 num_attention_heads=HEADS, intermediate_size=40,
                                 max_position_embeddings=POSITIONS, **kwargs)


def test_gpt2_logits_equal_transformers(gpt2_dir):
  path, theirs = gpt2_dir
  config, model, params, report = _import(path, 'decoder')
  assert config.model.activation == 'gelu_tanh' and config.model.norm == 'pre'
  assert 'new, initialised fresh: none' in report and 'not read' not in report
  assert accounting.count_params(config.model) == theirs.num_parameters()
  tokens = _tokens()
  ours = model.apply({'params': params}, jnp.asarray(tokens, jnp.int32))
  with torch.no_grad():
    expected = theirs(torch.tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours), expected, atol=TOLERANCE, rtol=TOLERANCE)


def test_bert_mlm_logits_equal_transformers(tmp_path):
  torch.manual_seed(0)
  theirs = _perturbed(transformers.BertForMaskedLM(_bert_config()))
  path = _save(theirs, tmp_path / 'bert')
  config, model, params, report = _import(path, 'encoder', 'mlm')
  assert config.model.head_transform and config.model.token_types == 2
  assert 'new, initialised fresh: none' in report
  assert accounting.count_params(config.model) == theirs.num_parameters()
  tokens = _tokens()
  tokens[1, 6:] = 0  # padding, masked on both sides.
  ours = model.apply({'params': params}, jnp.asarray(tokens, jnp.int32))
  with torch.no_grad():
    expected = theirs(torch.tensor(tokens), attention_mask=torch.tensor(tokens != 0)).logits
  real = tokens != 0
  np.testing.assert_allclose(np.asarray(ours)[real], expected.numpy()[real], atol=TOLERANCE,
                             rtol=TOLERANCE)


def test_bert_classifier_logits_equal_transformers(tmp_path):
  torch.manual_seed(0)
  theirs = _perturbed(transformers.BertForSequenceClassification(_bert_config(num_labels=3)))
  path = _save(theirs, tmp_path / 'bert_classifier')
  config, model, params, report = _import(path, 'encoder', 'classify', num_classes=3)
  assert config.model.pooler and config.model.pooling == 'first'
  assert 'new, initialised fresh: none' in report  # encoder, pooler and classifier all read.
  assert accounting.count_params(config.model) == theirs.num_parameters()
  tokens = _tokens()
  tokens[0, 7:] = 0
  ours = model.apply({'params': params}, jnp.asarray(tokens, jnp.int32))
  with torch.no_grad():
    expected = theirs(torch.tensor(tokens), attention_mask=torch.tensor(tokens != 0)).logits
  assert ours.shape == (2, 3)
  np.testing.assert_allclose(np.asarray(ours), expected.numpy(), atol=TOLERANCE, rtol=TOLERANCE)


def test_exported_gpt2_loads_into_transformers_with_equal_logits(gpt2_dir, tmp_path):
  path, _ = gpt2_dir
  config, model, params, _ = _import(path, 'decoder')
  out = str(tmp_path / 'export')
  assert hf.export(config.model, params, out) == 'gpt2'
  back = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
  tokens = _tokens()
  with torch.no_grad():
    theirs = back(torch.tensor(tokens)).logits.numpy()
  ours = model.apply({'params': params}, jnp.asarray(tokens, jnp.int32))
  np.testing.assert_allclose(theirs, np.asarray(ours), atol=TOLERANCE, rtol=TOLERANCE)


def test_export_of_another_layout_keeps_our_names(tmp_path):
  m = config_lib.model_config()
  m.update(variant='encoder', num_layers=1, d_model=8, num_heads=2, vocab_size=11, max_len=8)
  model = build_model(m)
  params = model.init(jax.random.key(0), jnp.ones((1, 3), jnp.int32))['params']
  assert hf.export(m, params, str(tmp_path)) == 'transformer_jax'
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  tensors = load_file(str(tmp_path / 'model.safetensors'))
  assert 'encoder/layer_0/self_attention/query/kernel' in tensors
  meta = json.loads((tmp_path / 'config.json').read_text())
  assert meta['format'] == 'transformer_jax' and meta['model']['variant'] == 'encoder'
  assert 'variant=' in hf.gpt2_layout(m)


def _one_line(excinfo):
  message = str(excinfo.value)
  assert '\n' not in message
  return message


def test_refuses_a_mismatched_config_naming_the_overrides(gpt2_dir):
  path, _ = gpt2_dir
  config = config_lib.base_config()
  config.model.variant = 'decoder'
  hf.configure(config, path)
  config.model.d_model = 32  # the run asks for another width.
  with pytest.raises(config_lib.ConfigError) as e:
    hf.load(config, {})
  message = _one_line(e)
  assert '--config.model.d_model=16' in message and 'ffn_ratio' not in message


def test_refuses_a_mismatched_shape(gpt2_dir):
  path, _ = gpt2_dir
  config, model, _, _ = _import(path, 'decoder')
  fresh = jax.device_get(model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))['params'])
  fresh['embedding']['embedding'] = np.zeros((VOCAB + 1, D), np.float32)
  with pytest.raises(config_lib.ConfigError) as e:
    hf.load(config, fresh)
  assert 'embedding/embedding' in _one_line(e)


def test_refuses_an_unknown_architecture(tmp_path):
  (tmp_path / 'config.json').write_text(json.dumps({'model_type': 't5'}))
  (tmp_path / 'model.safetensors').write_bytes(b'')
  with pytest.raises(config_lib.ConfigError) as e:
    hf.read_config(str(tmp_path))
  assert "'t5'" in _one_line(e)


def test_refuses_a_path_that_is_not_a_model_directory(tmp_path):
  with pytest.raises(config_lib.ConfigError) as e:
    hf.read_config(str(tmp_path / 'nowhere'))
  assert 'not a model directory' in _one_line(e)
  (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'gpt2'}))
  with pytest.raises(config_lib.ConfigError) as e:
    hf.read_config(str(tmp_path))
  assert 'no weights' in _one_line(e)


def test_a_run_starts_from_gpt2_trains_and_exports_for_transformers(tmp_path, capsys):
  """The command-line flow: train from hf:PATH (trainer.setup), then --mode=export."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import load_config, override  # pylint: disable=g-import-not-at-top
  from transformer_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from transformer_jax import trainer  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  vocab = 96  # shakespeare_char's vocabulary.
  cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=32, n_embd=16, n_layer=1,
                                n_head=2, bos_token_id=2, eos_token_id=2)
  path = _save(_perturbed(transformers.GPT2LMHeadModel(cfg)), tmp_path / 'gpt2')
  config = override(load_config('shakespeare_char:quick'),
                    {'seq_len': 32, 'batch_size': 4, 'warmup_steps': 1, 'total_steps': 1,
                     'log_every': 1, 'eval_every': 1, 'eval_steps': 1, 'checkpoint_every': 1,
                     'num_samples': 0})
  hf.configure(config, path)
  workdir = str(tmp_path / 'run')
  capsys.readouterr()
  trainer.train(config, workdir)
  line = [l for l in capsys.readouterr().out.splitlines() if l.startswith('Initialised from')]
  assert len(line) == 1 and 'gpt2' in line[0] and 'fresh: none' in line[0]

  out = str(tmp_path / 'export')
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [sys.executable, '-m', 'transformer_jax.main', f'--workdir={workdir}', '--mode=export',
       f'--output={out}'],  # the run's own model config is read from its checkpoint.
      cwd=repo, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'GPT2LMHeadModel.from_pretrained loads it' in result.stdout
  back = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
  with checkpoint_lib.Checkpointer(workdir, config, writable=False) as c:
    params = c.read_params(c.select('latest'))
  tokens = np.random.default_rng(0).integers(1, vocab, (2, 12))
  ours = build_model(config.model).apply({'params': params}, jnp.asarray(tokens, jnp.int32))
  with torch.no_grad():
    theirs = back(torch.tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(theirs, np.asarray(ours), atol=TOLERANCE, rtol=TOLERANCE)


def test_hf_tokenizer_reads_the_checkpoint_files_and_saves_with_the_run(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  from transformer_jax.data import tokenizers  # pylint: disable=g-import-not-at-top
  words = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'to', 'be', 'or', 'not']
  backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token='[UNK]'))
  backend.pre_tokenizer = pre_tokenizers.Whitespace()
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, pad_token='[PAD]', unk_token='[UNK]', sep_token='[SEP]',
      cls_token='[CLS]', mask_token='[MASK]')
  fast.save_pretrained(str(tmp_path / 'ckpt'))
  tok = tokenizers.HFTokenizer(str(tmp_path / 'ckpt'))
  assert tok.encode('to be or not to be') == [5, 6, 7, 8, 5, 6]
  assert tok.encode('to sleep') == [5, 1]
  assert (tok.pad_id, tok.mask_id, tok.eos_id, tok.vocab_size) == (0, 4, 3, len(words))
  assert tok.decode([5, 6, 0, 4]) == 'to be'
  tok.save(str(tmp_path / 'run'))  # the run's tokenizer/ directory.
  again = tokenizers.load(str(tmp_path / 'run'))
  assert again.name == 'hf' and again.encode('not to be') == [8, 5, 6]
  with pytest.raises(tokenizers.DataError):
    tokenizers.HFTokenizer(str(tmp_path / 'nothing'))


def test_flops_count_the_bert_head_transform():
  m = config_lib.model_config()
  m.update(variant='encoder', num_layers=1, d_model=8, num_heads=2, vocab_size=11, max_len=8)
  plain = accounting.flops_per_token(m, 8)
  m.update(head_transform=True, output_bias=True)
  assert accounting.flops_per_token(m, 8) == plain + 6 * 8 * 8
