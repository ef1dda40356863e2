"""Hugging Face checkpoints: tiny random GPT-2 and BERT models built from their
configs (no download), saved, imported with config.init_from=hf:PATH, and their
logits compared with transformers' own in float32; a GPT-2 exported back loads
into transformers with the same logits; the refusals are one line."""

import json
import os
import re

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


def test_export_of_a_model_transformers_has_no_class_for_is_refused_in_one_line(tmp_path):
  """It wrote our own names under no model_type: BertForMaskedLM.from_pretrained then
  loaded it with no error and every weight random."""
  m = config_lib.model_config()
  m.update(variant='encoder', num_layers=1, d_model=8, num_heads=2, vocab_size=11, max_len=8)
  params = build_model(m).init(jax.random.key(0), jnp.ones((1, 3), jnp.int32))['params']
  with pytest.raises(config_lib.ConfigError) as e:
    hf.export(m, params, str(tmp_path / 'out'))
  assert "position='sinusoidal'" in _one_line(e) and 'head_transform=False' in _one_line(e)
  assert not os.path.exists(tmp_path / 'out')


def _hf_model(arch, tied, head='mlm', seed=0):
  """A random transformers model of `arch` (gpt2 | bert), its output layer tied or not."""
  torch.manual_seed(seed)
  if arch == 'gpt2':
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=D,
                                  n_layer=LAYERS, n_head=HEADS, tie_word_embeddings=tied)
    return _perturbed(transformers.GPT2LMHeadModel(cfg))
  if head == 'classify':
    return _perturbed(transformers.BertForSequenceClassification(_bert_config(num_labels=3)))
  return _perturbed(transformers.BertForMaskedLM(_bert_config(tie_word_embeddings=tied)))


def _logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens), attention_mask=torch.tensor(tokens != 0)).logits.numpy()


@pytest.mark.parametrize('arch,tied,head', [('gpt2', True, 'mlm'), ('gpt2', False, 'mlm'),
                                            ('bert', True, 'mlm'), ('bert', False, 'mlm'),
                                            ('bert', True, 'classify')])
def test_weights_in_and_out_are_complete_and_verified(arch, tied, head, tmp_path):
  """Issue 24, kind 1. Import: every tensor becomes a parameter or is listed unused with
  its reason, and the logits equal transformers' (an untied BERT's decoder was counted
  as "tied" and dropped: MLM logits off by up to 2.9). Export: transformers' own Auto
  class loads it with no missing, unexpected or mismatched key, and equal logits."""
  theirs = _hf_model(arch, tied, head)
  path = _save(theirs, tmp_path / 'theirs')
  run = {'num_classes': 3} if head == 'classify' else {}
  variant = 'decoder' if arch == 'gpt2' else 'encoder'
  config, model, params, report = _import(path, variant, head, **run)
  new = 'project/logits/bias' if (arch, tied) == ('gpt2', False) else 'none'  # zeros: the same.
  assert f'new, initialised fresh: {new};' in report and 'dropped: none' in report, report
  # Untied: our decoder's Dense has a bias GPT-2's lm_head lacks; BERT's keeps a second one
  # (cls.predictions.bias) its forward does not read.
  extra = {('gpt2', False): VOCAB, ('bert', False): -VOCAB}.get((arch, tied), 0)
  assert accounting.count_params(config.model) == theirs.num_parameters() + extra
  tokens = _tokens()
  if arch == 'bert':
    tokens[1, 6:] = 0  # padding: our encoder masks pad_id, transformers the attention_mask.
  real = tokens != 0 if head == 'mlm' else slice(None)
  ours = np.asarray(model.apply({'params': params}, jnp.asarray(tokens, jnp.int32)))
  np.testing.assert_allclose(ours[real], _logits(theirs, tokens)[real], atol=TOLERANCE,
                             rtol=TOLERANCE)

  out = str(tmp_path / 'export')
  assert hf.export(config.model, params, out) == arch
  auto = {'gpt2': transformers.AutoModelForCausalLM, 'bert': transformers.AutoModelForMaskedLM,
          'classify': transformers.AutoModelForSequenceClassification}
  back, info = auto['classify' if head == 'classify' else arch].from_pretrained(
      out, output_loading_info=True)
  assert type(back) is type(theirs)
  assert not any(info[k] for k in ('missing_keys', 'unexpected_keys', 'mismatched_keys')), info
  np.testing.assert_allclose(_logits(back.eval(), tokens)[real], ours[real], atol=1e-5, rtol=1e-5)
  assert back.config.tie_word_embeddings == tied


@pytest.mark.parametrize('arch,tied,edit', [('gpt2', True, {'n_embd': 2 * D}),
                                            ('gpt2', True, {'n_layer': LAYERS + 1}),
                                            ('bert', False, {'tie_word_embeddings': True}),
                                            ('bert', True, {'intermediate_size': 64})])
def test_a_config_json_that_contradicts_its_weights_gets_a_fix_that_works(arch, tied, edit,
                                                                         tmp_path):
  """The fix said before ended in `cannot reshape array of size 8192 into shape
  (128,2,64)`; now the weights say what config.json must hold, and following that works."""
  theirs = _hf_model(arch, tied)
  path = _save(theirs, tmp_path / 'theirs')
  config_json = os.path.join(path, 'config.json')
  with open(config_json) as f:
    fields = json.load(f)
  with open(config_json, 'w') as f:
    json.dump({**fields, **edit}, f)
  variant = 'decoder' if arch == 'gpt2' else 'encoder'
  with pytest.raises(config_lib.ConfigError) as e:
    _import(path, variant)
  message = _one_line(e)
  fix = re.fullmatch(r'.*contradicts its weights \(.*\); set (.*) in (\S+)\.', message)
  assert fix and fix.group(2) == config_json, message
  with open(config_json) as f:
    fields = json.load(f)
  with open(config_json, 'w') as f:  # the fix, as the line says it.
    json.dump({**fields, **json.loads('{' + fix.group(1) + '}')}, f)
  _, model, params, report = _import(path, variant)
  tokens = _tokens()
  ours = np.asarray(model.apply({'params': params}, jnp.asarray(tokens, jnp.int32)))
  np.testing.assert_allclose(ours, _logits(theirs, tokens), atol=TOLERANCE, rtol=TOLERANCE)


def test_a_tensor_the_import_does_not_know_is_refused_not_dropped(tmp_path):
  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top
  path = _save(_hf_model('gpt2', True), tmp_path / 'theirs')
  weights = load_file(os.path.join(path, 'model.safetensors'))
  weights['transformer.h.0.adapter.weight'] = np.ones((2, 2), np.float32)
  save_file(weights, os.path.join(path, 'model.safetensors'), metadata={'format': 'pt'})
  with pytest.raises(config_lib.ConfigError) as e:
    _import(path, 'decoder')
  assert 'h.0.adapter.weight' in _one_line(e)


def test_an_export_carries_the_vocabulary_its_own_import_needs(tmp_path):
  """hf.flags(DIR) on this project's own export said `holds no tokenizer files` unless
  tokenizer='char' was passed; the export now holds the run's vocabulary."""
  from transformer_jax.data import tokenizers  # pylint: disable=g-import-not-at-top
  tokenizer = tokenizers.CharTokenizer('abcdefgh')
  m = config_lib.model_config()
  m.update(variant='decoder', num_layers=1, d_model=8, num_heads=2, vocab_size=16, max_len=8,
           norm='pre', position='learned', scale_embeddings=False, activation='gelu_tanh')
  params = build_model(m).init(jax.random.key(0), jnp.ones((1, 3), jnp.int32))['params']
  out = str(tmp_path / 'export')
  hf.export(m, params, out, tokenizer=tokenizer)
  line = hf.flags(out)
  assert '--config.data.tokenizer=char' in line and f'--config.model.pad_id={m.pad_id}' in line
  config = config_lib.base_config()
  hf.configure(config, out)
  assert config.data.tokenizer == 'char' and config.model.d_model == 8


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


def test_a_layernorm_without_bias_neither_imports_nor_exports_gpt2(gpt2_dir, tmp_path):
  """GPT-2's LayerNorms have a bias: a run without (norm_bias=False, nanoGPT's bias=False)
  is refused both ways in one line, as a run without dense biases is."""
  path, _ = gpt2_dir
  config = config_lib.base_config()
  config.model.variant = 'decoder'
  hf.configure(config, path)
  config.model.norm_bias = False
  with pytest.raises(config_lib.ConfigError) as e:
    hf.load(config, {})
  assert '--config.model.norm_bias=True' in _one_line(e)
  params = build_model(config.model).init(jax.random.key(0), jnp.ones((1, 3), jnp.int32))
  with pytest.raises(config_lib.ConfigError) as e:
    hf.export(config.model, params['params'], str(tmp_path / 'out'))
  assert 'norm_bias=False' in _one_line(e)
  assert not os.path.exists(tmp_path / 'out')


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


def test_refuses_a_broken_config_or_weights_file_in_one_line(gpt2_dir, tmp_path):
  # Each was a traceback (JSONDecodeError, KeyError, SafetensorError, UnpicklingError).
  path, _ = gpt2_dir
  (tmp_path / 'model.safetensors').write_bytes(b'')
  for text, message in (('{"model_type": "gpt2",', 'config.json is not JSON'),
                        ('{"model_type": "gpt2", "n_embd": 16}', 'config.json lacks vocab_size, '
                         'n_positions, n_layer, n_head;'),
                        ('[]', "model_type None is not an architecture")):
    (tmp_path / 'config.json').write_text(text)
    with pytest.raises(config_lib.ConfigError) as e:
      hf.read_config(str(tmp_path))
    assert message in _one_line(e)
  config, _, _, _ = _import(path, 'decoder')
  with open(os.path.join(path, 'model.safetensors'), 'rb') as f:
    (tmp_path / 'model.safetensors').write_bytes(f.read(3000))  # cut short.
  (tmp_path / 'config.json').write_text(open(os.path.join(path, 'config.json')).read())
  os.makedirs(tmp_path / 'bin')
  (tmp_path / 'bin' / 'config.json').write_text(open(os.path.join(path, 'config.json')).read())
  (tmp_path / 'bin' / 'pytorch_model.bin').write_bytes(b'not a pickle')
  for directory, name in ((tmp_path, 'model.safetensors'),
                          (tmp_path / 'bin', 'pytorch_model.bin')):
    config.init_from = f'hf:{directory}'
    with pytest.raises(config_lib.ConfigError) as e:
      hf.load(config, {})
    assert f'{directory}/{name} cannot be read (' in _one_line(e)
    assert 'is it complete? Save or download it again.' in _one_line(e)


def test_a_run_starts_from_gpt2_trains_and_exports_for_transformers(tmp_path, capsys):
  """The command-line flow: train from hf:PATH (trainer.setup), then --mode=export."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import load_config, override  # pylint: disable=g-import-not-at-top
  from transformer_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from transformer_jax import trainer  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  # the char tokenizer's ids on Shakespeare: a checkpoint read with another tokenizer
  # than its own must have as many (hf.check_tokenizer).
  vocab = 88
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


def test_export_to_a_file_is_one_line(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  (tmp_path / 'taken').write_text('')
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [sys.executable, '-m', 'transformer_jax.main', f'--workdir={tmp_path}', '--mode=export',
       f'--output={tmp_path / "taken"}'], cwd=repo, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]  # was os.makedirs' traceback.
  assert result.stderr == (f'--output={tmp_path / "taken"} is a file, not a directory; give a '
                           'directory for the export.\n')


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


# ----------------------------------------------------------------------------
# Fine-tuning from the command line with the checkpoint's own tokenizer.

# A run of two steps at the tiny checkpoints' size; eval and checkpoint at its end.
RUN = ['--config.seq_len=32', '--config.batch_size=4', '--config.total_steps=2',
       '--config.warmup_steps=1', '--config.log_every=1', '--config.eval_every=2',
       '--config.eval_steps=2', '--config.checkpoint_every=2', '--config.num_samples=0']


def _shakespeare_sample(chars=2000):
  from transformer_jax.data import sources  # pylint: disable=g-import-not-at-top
  return sources.shakespeare_split()[0][:chars]


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
  """Tiny random GPT-2 and BERT masked LM, each saved with a tokenizer trained on
  Shakespeare as save_pretrained writes it: a byte-level BPE whose last id is
  <|endoftext|> (GPT-2's only special token, so its padding id is not 0), and a
  lower-casing WordPiece with [PAD] 0 ... [MASK] 4 (BERT's order, not ours)."""
  # pylint: disable=g-import-not-at-top
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
  # pylint: enable=g-import-not-at-top
  text = [_shakespeare_sample(100_000)]
  root = tmp_path_factory.mktemp('checkpoints')
  bpe = Tokenizer(models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = decoders.ByteLevel()
  bpe.train_from_iterator(text, trainers.BpeTrainer(
      vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  gpt2_tokenizer = transformers.GPT2TokenizerFast(
      tokenizer_object=bpe, bos_token='<|endoftext|>', eos_token='<|endoftext|>',
      unk_token='<|endoftext|>')
  eos = gpt2_tokenizer.eos_token_id
  torch.manual_seed(0)
  gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=len(gpt2_tokenizer), n_positions=64, n_embd=D, n_layer=1, n_head=2,
      bos_token_id=eos, eos_token_id=eos))
  wordpiece = Tokenizer(models.WordPiece(unk_token='[UNK]'))
  wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
  wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  wordpiece.decoder = decoders.WordPiece()
  wordpiece.train_from_iterator(text, trainers.WordPieceTrainer(
      vocab_size=300, special_tokens=['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'],
      show_progress=False))
  bert_tokenizer = transformers.BertTokenizerFast(
      tokenizer_object=wordpiece, unk_token='[UNK]', pad_token='[PAD]', cls_token='[CLS]',
      sep_token='[SEP]', mask_token='[MASK]')
  bert = transformers.BertForMaskedLM(transformers.BertConfig(
      vocab_size=len(bert_tokenizer), hidden_size=D, num_hidden_layers=1, num_attention_heads=2,
      intermediate_size=32, max_position_embeddings=64))
  paths = {}
  for name, model, tokenizer in (('gpt2', gpt2, gpt2_tokenizer), ('bert', bert, bert_tokenizer)):
    paths[name] = _save(model, root / name)
    tokenizer.save_pretrained(paths[name])
  return paths


def _main(*args, stdin=None):
  """python -m transformer_jax.main ARGS; its stdout (it must succeed)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import REPOSITORY  # pylint: disable=g-import-not-at-top
  result = subprocess.run([sys.executable, '-m', 'transformer_jax.main', *map(str, args)],
                          cwd=REPOSITORY, input=stdin, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def _last_json(stdout):
  return json.loads(stdout.strip().splitlines()[-1])


def test_gpt2_fine_tunes_on_the_command_line_with_its_tokenizer_and_the_run_keeps_it(
    checkpoints, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  from transformer_jax import configs  # pylint: disable=g-import-not-at-top
  from transformer_jax.data import recipes, tokenizers  # pylint: disable=g-import-not-at-top
  path = shutil.copytree(checkpoints['gpt2'], tmp_path / 'gpt2')
  theirs = transformers.AutoTokenizer.from_pretrained(path)
  sample = _shakespeare_sample()
  expected = theirs.encode(sample, add_special_tokens=False)
  workdir = tmp_path / 'run'
  # GPT-2 has no padding token: the tokenizer pads with <|endoftext|>, and the model must
  # agree; hf.flags says so (from config.json's eos_token_id) for the hf tokenizer only.
  assert f'--config.model.pad_id={theirs.eos_token_id}' in hf.flags(path).split()
  assert 'pad_id' not in hf.flags(path, tokenizer='char')
  command = ['--config=shakespeare_char:quick', f'--workdir={workdir}',
             f'--config.init_from=hf:{path}', '--config.data.tokenizer=hf', *hf.flags(path).split(),
             *RUN]
  trained = _main(*command)
  assert 'Initialised from gpt2' in trained and 'fresh: none' in trained
  shutil.move(path, tmp_path / 'moved')  # the run must not need the checkpoint any more.

  saved = tokenizers.load(str(workdir / 'tokenizer'))
  assert saved.name == 'hf' and saved.vocab_size == len(theirs) == theirs.eos_token_id + 1
  # The ids training read: the recipe's encode with the run's tokenizer (as on the whole text).
  recipe = recipes.ShakespeareStream(configs.load('shakespeare_char:quick'))
  assert recipe.encode(sample, saved, None, 'sample')['inputs'].tolist() == expected
  evaluated = _last_json(_main(*command, '--mode=eval'))
  assert evaluated['step'] == 2
  np.testing.assert_allclose(evaluated['loss'], _last_json(trained)['loss'], rtol=1e-5)
  decoded = _main(*command, '--mode=decode', '--config.decode.method=greedy',
                  '--config.sample_length=8', stdin='ROMEO:\nTo be\n').splitlines()
  assert len(decoded) == 2 and all(decoded)
  # And back: the export is a GPT-2 directory with the run's tokenizer beside it.
  out = tmp_path / 'export'
  assert 'AutoTokenizer' in _main(f'--workdir={workdir}', '--mode=export', f'--output={out}')
  back = transformers.AutoTokenizer.from_pretrained(str(out))
  assert back.encode(sample, add_special_tokens=False) == expected
  assert transformers.GPT2Config.from_pretrained(str(out)).eos_token_id == theirs.eos_token_id


def test_bert_fine_tunes_mlm_and_genres_on_the_command_line_with_its_tokenizer(
    checkpoints, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  path = shutil.copytree(checkpoints['bert'], tmp_path / 'bert')
  common = ['--config.data.tokenizer=hf', f'--config.data.tokenizer_path={path}',
            f'--config.init_from=hf:{path}', *RUN]
  mlm = ['--config=shakespeare_mlm:quick', f'--workdir={tmp_path / "mlm"}', *common,
         *hf.flags(path).split()]
  genres = ['--config=shakespeare_genre:quick', f'--workdir={tmp_path / "genres"}', *common,
            *hf.flags(path, 'classify').split()]
  trained = _main(*mlm)
  assert 'Initialised from bert' in trained and 'fresh: none' in trained
  assert 'fresh: classifier/bias, classifier/kernel, pooler/bias, pooler/kernel' in _main(*genres)
  shutil.move(path, tmp_path / 'moved')
  evaluated = _last_json(_main(*mlm, '--mode=eval'))
  np.testing.assert_allclose(evaluated['loss'], _last_json(trained)['loss'], rtol=1e-5)
  assert 0 <= _last_json(_main(*genres, '--mode=eval'))['accuracy'] <= 1


def test_bert_masking_uses_the_checkpoints_mask_and_special_ids(checkpoints):
  from transformer_jax.data import examples, tokenizers  # pylint: disable=g-import-not-at-top
  tokenizer = tokenizers.HFTokenizer(checkpoints['bert'])
  assert tokenizer.mask_id == 4 != tokenizers.MASK_ID and tokenizer.pad_id == 0
  ids = tokenizer.encode_array(_shakespeare_sample(20_000))[:64 * 32].reshape(64, 32)
  ids[:, -4:] = tokenizer.pad_id
  ids[:, 0] = tokenizer._tokenizer.cls_token_id  # pylint: disable=protected-access
  out = examples.mlm_transform(0, tokenizer, 0.15, 64)(0, {'inputs': ids})
  chosen = out['weights'] > 0
  assert not chosen[:, -4:].any() and not chosen[:, 0].any()  # padding and [CLS] stay.
  assert 0.7 < (out['inputs'][chosen] == tokenizer.mask_id).mean() < 0.9
  np.testing.assert_array_equal(out['inputs'][~chosen], ids[~chosen])


def test_a_tokenizer_that_is_not_the_checkpoints_is_refused_in_one_line(checkpoints, tmp_path):
  from conftest import load_config, override  # pylint: disable=g-import-not-at-top
  from transformer_jax import trainer  # pylint: disable=g-import-not-at-top
  from transformer_jax.data import datasets, tokenizers  # pylint: disable=g-import-not-at-top
  path = checkpoints['gpt2']
  config = hf.configure(override(load_config('shakespeare_char:quick'), {'seq_len': 32}), path)
  workdir = tmp_path / 'run'
  with pytest.raises(config_lib.ConfigError) as e:  # the char tokenizer: 88 ids, not 301.
    trainer.setup(config, str(workdir))
  assert _one_line(e).endswith('add --config.data.tokenizer=hf to read the text with the '
                               'checkpoint\'s tokenizer.')
  assert not (workdir / 'tokenizer').exists()  # so the corrected command builds its own.
  config.data.tokenizer = 'hf'
  with pytest.raises(config_lib.ConfigError) as e:  # the model reads 0 as padding.
    datasets.create_datasets(config, str(workdir))
  assert _one_line(e).endswith('set --config.model.pad_id=300.')
  no_tokenizer = tmp_path / 'model_only'  # a model's config.json, no tokenizer files.
  no_tokenizer.mkdir()
  (no_tokenizer / 'config.json').write_text(open(os.path.join(path, 'config.json')).read())
  config.init_from = f'hf:{no_tokenizer}'
  with pytest.raises(tokenizers.DataError, match='config.init_from.*no tokenizer files'):
    datasets.create_datasets(config, None)


@pytest.mark.parametrize('head', ['mlm', 'classify'])
def test_bert_segments_in_and_out_are_transformers_token_types(head, tmp_path):
  """A sentence pair's token types select BERT's token_type_embeddings: imported, our
  logits for types 0 then 1 equal transformers' for those token_type_ids; exported,
  transformers reads the same table back."""
  theirs = _hf_model('bert', True, head)
  run = {'num_classes': 3} if head == 'classify' else {}
  config, model, params, _ = _import(_save(theirs, tmp_path / 'theirs'), 'encoder', head, **run)
  assert config.model.token_types == 2
  tokens = _tokens()
  tokens[1, 7:] = 0
  types = np.where(np.arange(tokens.shape[1]) >= 4, 1, 0) * (tokens != 0)

  def their_logits(hf_model):
    with torch.no_grad():
      return hf_model(torch.tensor(tokens), attention_mask=torch.tensor(tokens != 0),
                      token_type_ids=torch.tensor(types)).logits.numpy()

  ours = np.asarray(model.apply({'params': params}, jnp.asarray(tokens, jnp.int32),
                                token_types=jnp.asarray(types, jnp.int32)))
  real = tokens != 0 if head == 'mlm' else slice(None)
  np.testing.assert_allclose(ours[real], their_logits(theirs)[real], atol=TOLERANCE,
                             rtol=TOLERANCE)
  assert not np.allclose(ours, model.apply({'params': params}, jnp.asarray(tokens, jnp.int32)))
  out = str(tmp_path / 'export')
  hf.export(config.model, params, out)
  auto = (transformers.AutoModelForSequenceClassification if head == 'classify' else
          transformers.AutoModelForMaskedLM)
  back = auto.from_pretrained(out).eval()
  np.testing.assert_allclose(their_logits(back)[real], ours[real], atol=1e-5, rtol=1e-5)


def test_a_bert_tokenizer_writes_pairs_and_masks_with_its_own_special_tokens(checkpoints):
  from transformer_jax import generate  # pylint: disable=g-import-not-at-top
  from transformer_jax.data import examples, tokenizers  # pylint: disable=g-import-not-at-top
  tokenizer = tokenizers.HFTokenizer(checkpoints['bert'])
  theirs = transformers.AutoTokenizer.from_pretrained(checkpoints['bert'])
  pair = theirs('to be or not', 'that is the question')  # [CLS] a [SEP] b [SEP], types.
  example = examples.make_example(('to be or not', 'that is the question', 1), 'classify',
                                  tokenizer, examples.Overflow('error', 64), 'pair')
  assert example['inputs'].tolist() == pair['input_ids']
  assert example['token_types'].tolist() == pair['token_type_ids']
  assert tokenizer.mask_token == theirs.mask_token == '[MASK]'
  ids = generate.masked_ids(tokenizer.encode, tokenizer, 'to be or [MASK] to be')
  assert ids == theirs.encode('to be or [MASK] to be', add_special_tokens=False)
