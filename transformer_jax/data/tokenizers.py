"""Tokenizers behind one interface: character, byte, SentencePiece (and the
grapheme/phoneme vocabulary of the G2P task), and a Hugging Face checkpoint's
own tokenizer (`HFTokenizer`, read by `transformers`).

Every tokenizer reserves the same special ids so that the models and the
pipeline never need to ask which one they got:

  0 <pad>   padding; the models derive segment ids from `token != 0`.
  1 <unk>   a symbol the vocabulary does not hold.
  2 <eos>   end of an example (and the start symbol of line-based LM rows).
  3 <mask>  the masked-LM corruption token.

`encode(str) -> list[int]` and `decode(list[int]) -> str` never add or strip
<eos>; the data recipes decide where examples end. `decode` drops <pad>, <eos>
and <mask>. A sentence pair is written [CLS] a [SEP] b [SEP] (`cls_id`,
`sep_id`); these tokenizers have no [CLS] or [SEP] of their own, so <eos>
serves as both, as it starts and ends a line of an LM. In a --mode=decode line
of a masked LM, `mask_token` ('[MASK]') marks a position to fill: it becomes
one <mask> id, whatever the tokenizer (one character for `char`). The one
exception is `HFTokenizer`: a checkpoint's ids are its own, so it names them in
the same attributes (`pad_id`, `eos_id`, `mask_id`, `cls_id`, `sep_id`,
`mask_token`, `special_ids`), which the pipeline reads instead of the constants.

A run owns its vocabulary: `tokenizer.save(directory)` writes it (a small
tokenizer.json, plus the .model file for SentencePiece) and `load(directory)`
reads it back, so a resumed run maps text to the ids it was trained on even if
the data it was built from has changed since.
"""

import hashlib
import json
import os
import shutil
import tempfile
from typing import Callable, Iterable, Optional, Sequence

from absl import logging
import numpy as np

from transformer_jax import hub
from transformer_jax import progress
from transformer_jax.data import DataError

PAD_ID, UNK_ID, EOS_ID, MASK_ID = 0, 1, 2, 3
SPECIALS = ('<pad>', '<unk>', '<eos>', '<mask>')
NUM_SPECIALS = len(SPECIALS)
VOCABULARY_FILE = 'tokenizer.json'
RUN_DIRECTORY = 'tokenizer'  # under a run's workdir.


class Tokenizer:
  """The interface the pipeline, decoding and notebooks rely on."""
  name = 'base'
  pad_id, unk_id, eos_id, mask_id = PAD_ID, UNK_ID, EOS_ID, MASK_ID
  cls_id = sep_id = EOS_ID  # a sentence pair's [CLS] and [SEP].
  mask_token = '[MASK]'  # the text that marks a masked position in a decode input.

  @property
  def vocab_size(self) -> int:
    raise NotImplementedError

  def encode(self, text: str) -> list:
    raise NotImplementedError

  def decode(self, ids: Sequence[int]) -> str:
    raise NotImplementedError

  @property
  def vocabulary(self) -> tuple:
    """The symbols built from data (characters, graphemes and phonemes); ()
    for a tokenizer that is not a symbol table."""
    return ()

  @property
  def special_ids(self) -> tuple:
    """Ids that are never text (BERT masking leaves them alone)."""
    return tuple(range(NUM_SPECIALS))

  def encode_array(self, text: str) -> np.ndarray:
    """encode() as an int32 array [n]."""
    return np.asarray(self.encode(text), dtype=np.int32)

  def save(self, directory: str):
    """Writes the vocabulary to `directory` (read back by `load`)."""
    _write_json(directory, {'name': self.name, **self._fields(directory)})

  def _fields(self, directory: str) -> dict:
    del directory
    return {}

  def _strip(self, ids):
    """Ids without <pad>, <eos>, <mask> (as plain ints)."""
    return [int(i) for i in ids if int(i) not in (PAD_ID, EOS_ID, MASK_ID)]


class CharTokenizer(Tokenizer):
  """One id per character; the vocabulary is the sorted characters of a text.

  Characters outside the vocabulary map to <unk> (decoded as U+FFFD), so a
  validation split with a character unseen in training still encodes.
  """
  name = 'char'

  def __init__(self, chars: Iterable[str]):
    self.chars = sorted(set(chars))
    self._id = {c: i + NUM_SPECIALS for i, c in enumerate(self.chars)}
    # Lookup table for the whole Basic Multilingual Plane: encoding 5M
    # characters is one numpy gather instead of a Python loop.
    self._table = np.full(0x10000, UNK_ID, dtype=np.int32)
    for c, i in self._id.items():
      if ord(c) < 0x10000:
        self._table[ord(c)] = i

  @classmethod
  def from_text(cls, text: str) -> 'CharTokenizer':
    return cls(set(text))

  @property
  def vocab_size(self) -> int:
    return NUM_SPECIALS + len(self.chars)

  @property
  def vocabulary(self) -> tuple:
    return tuple(self.chars)

  def _fields(self, directory: str) -> dict:
    del directory
    return {'chars': self.chars}

  def encode(self, text: str) -> list:
    return self.encode_array(text).tolist()

  def encode_array(self, text: str) -> np.ndarray:
    if text.isascii():
      codes = np.frombuffer(text.encode('ascii'), dtype=np.uint8).astype(np.int32)
      return self._table[codes]
    return np.asarray([self._id.get(c, UNK_ID) for c in text], dtype=np.int32)

  def decode(self, ids: Sequence[int]) -> str:
    return ''.join('\ufffd' if i == UNK_ID else self.chars[i - NUM_SPECIALS]
                   for i in self._strip(ids) if i < self.vocab_size)


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes, id = byte + 4: any text encodes, nothing is unknown."""
  name = 'byte'

  @property
  def vocab_size(self) -> int:
    return NUM_SPECIALS + 256

  def encode(self, text: str) -> list:
    return self.encode_array(text).tolist()

  def encode_array(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), dtype=np.uint8).astype(np.int32) + NUM_SPECIALS

  def decode(self, ids: Sequence[int]) -> str:
    data = bytes(i - NUM_SPECIALS for i in self._strip(ids)
                 if NUM_SPECIALS <= i < self.vocab_size)
    return data.decode('utf-8', errors='replace')


SPM_MODEL_FILE = 'spm.model'


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model, with newlines kept as their own piece.

  SentencePiece works on single lines, so `encode` splits the text on '\\n',
  encodes each line and joins them with the <nl> id; the model is trained with
  identity normalisation and without whitespace folding so that
  decode(encode(text)) == text for any text made of the training characters.
  """
  name = 'sentencepiece'

  def __init__(self, model_path: str):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    self.model_path = model_path
    self._sp = spm.SentencePieceProcessor(model_file=model_path)
    self.newline_id = self._sp.piece_to_id('<nl>')
    assert self._sp.pad_id() == PAD_ID and self._sp.unk_id() == UNK_ID
    assert self._sp.eos_id() == EOS_ID and self._sp.piece_to_id('<mask>') == MASK_ID

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def _fields(self, directory: str) -> dict:
    """The model file, copied into `directory` unless it already is there."""
    path = os.path.join(directory, SPM_MODEL_FILE)
    if os.path.abspath(self.model_path) != os.path.abspath(path):
      os.makedirs(directory, exist_ok=True)
      tmp = f'{path}.tmp-{os.getpid()}'  # every process of a multi-host run saves it.
      shutil.copyfile(self.model_path, tmp)
      os.replace(tmp, path)
    return {'model': SPM_MODEL_FILE}

  def encode(self, text: str) -> list:
    ids = []
    for n, line in enumerate(text.split('\n')):
      if n:
        ids.append(self.newline_id)
      if line:
        ids.extend(self._sp.encode(line))
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    lines, line = [], []
    for i in self._strip(ids):
      if i == self.newline_id:
        lines.append(line)
        line = []
      else:
        line.append(i)
    lines.append(line)
    return '\n'.join(self._sp.decode(l) for l in lines)


class G2PTokenizer(Tokenizer):
  """Graphemes and phonemes in one vocabulary, for grapheme-to-phoneme.

  A whitespace-separated piece of the text that is a phoneme ('HH', 'AH0')
  becomes that phoneme's id; any other piece is split into graphemes
  (characters). So encode('hello') spells the word and encode('HH AH L OW')
  gives four phonemes; decode writes graphemes together and phonemes apart.
  CMUdict's graphemes are lower case and its phonemes upper case, so the two
  never collide.
  """
  name = 'g2p'

  def __init__(self, graphemes: Iterable[str], phonemes: Iterable[str]):
    self.graphemes, self.phonemes = sorted(set(graphemes)), sorted(set(phonemes))
    self.symbols = self.graphemes + self.phonemes
    self._id = {s: i + NUM_SPECIALS for i, s in enumerate(self.symbols)}
    self._phonemes = set(self.phonemes)

  @property
  def vocab_size(self) -> int:
    return NUM_SPECIALS + len(self.symbols)

  @property
  def vocabulary(self) -> tuple:
    return tuple(self.symbols)

  def _fields(self, directory: str) -> dict:
    del directory
    return {'graphemes': self.graphemes, 'phonemes': self.phonemes}

  def encode(self, text: str) -> list:
    ids = []
    for piece in text.split():
      if piece in self._phonemes:
        ids.append(self._id[piece])
      else:
        ids.extend(self._id.get(c, UNK_ID) for c in piece)
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    pieces, word = [], ''
    for i in self._strip(ids):
      symbol = '\ufffd' if i == UNK_ID or i >= self.vocab_size else self.symbols[i - NUM_SPECIALS]
      if symbol in self._phonemes:
        pieces.extend([word, symbol] if word else [symbol])
        word = ''
      else:
        word += symbol
    return ' '.join(pieces + [word] if word else pieces)


class HFTokenizer(Tokenizer):
  """A Hugging Face checkpoint's tokenizer files (tokenizer.json, vocab.txt,
  vocab.json + merges.txt), read by `transformers.AutoTokenizer` (the hf extra;
  imported here only). Its special ids are the checkpoint's own ([PAD], [SEP],
  [MASK] for BERT; GPT-2 has only <|endoftext|>, which serves as <eos> and
  <pad>); `encode` adds no special tokens, as the other tokenizers ([CLS] and
  [SEP] included: a sentence pair's are put in by its example, examples.pair_ids,
  as `cls_id` and `sep_id`). Selected by config.data.tokenizer=hf; saved with the run as
  the files save_pretrained writes (under tokenizer/hf/).

  `path` is a directory, or a Hub id read from the Hugging Face cache (hub.py).

  Raises:
    DataError: `path` holds no tokenizer transformers can read.
    ConfigError: `path` is a Hub id neither cached nor downloadable.
  """
  name = 'hf'
  SUBDIRECTORY = 'hf'  # under the run's tokenizer/ directory.
  # A vocabulary file of some tokenizer: without one, AutoTokenizer builds an
  # empty tokenizer from a model's config.json, which encodes every text to [].
  FILES = ('tokenizer.json', 'vocab.txt', 'vocab.json', 'spiece.model', 'tokenizer.model',
           'sentencepiece.bpe.model')

  def __init__(self, path: str):
    path = hub.local_dir(path)
    if not any(os.path.isfile(os.path.join(path, f)) for f in self.FILES):
      raise DataError(f'{path} holds no tokenizer files ({", ".join(self.FILES[:3])}); give a '
                      'directory that save_pretrained wrote.')
    try:
      from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise DataError('tokenizer hf needs transformers: pip install "transformer_jax[hf]".'
                      ) from None
    try:
      self._tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
      raise DataError(f'{path} holds no tokenizer transformers can read ({type(e).__name__}); '
                      'give a directory that save_pretrained wrote.') from None
    t = self._tokenizer
    eos = t.eos_token_id if t.eos_token_id is not None else t.sep_token_id
    self.eos_id = EOS_ID if eos is None else eos
    self.pad_id = t.pad_token_id if t.pad_token_id is not None else self.eos_id
    self.unk_id = UNK_ID if t.unk_token_id is None else t.unk_token_id
    self.mask_id = MASK_ID if t.mask_token_id is None else t.mask_token_id
    self.mask_token = t.mask_token or Tokenizer.mask_token
    # BERT's [CLS] and [SEP]; a tokenizer without them (GPT-2) starts with its bos, else eos.
    starts = t.cls_token_id if t.cls_token_id is not None else t.bos_token_id
    self.cls_id = self.eos_id if starts is None else starts
    self.sep_id = self.eos_id if t.sep_token_id is None else t.sep_token_id

  @property
  def vocab_size(self) -> int:
    return len(self._tokenizer)

  @property
  def special_ids(self) -> tuple:
    return tuple(sorted(set(self._tokenizer.all_special_ids)))

  def save_pretrained(self, directory: str):
    """The tokenizer's files as transformers writes them (AutoTokenizer reads them)."""
    self._tokenizer.save_pretrained(directory)

  def _fields(self, directory: str) -> dict:
    """The files save_pretrained writes, in `directory`/hf/; each written whole
    (to a directory of this process, then renamed: every process of a multi-host
    run saves them)."""
    target = os.path.join(directory, self.SUBDIRECTORY)
    os.makedirs(target, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
      self.save_pretrained(tmp)
      for name in os.listdir(tmp):
        os.replace(os.path.join(tmp, name), os.path.join(target, name))
    return {'path': self.SUBDIRECTORY}

  def encode(self, text: str) -> list:
    # verbose=False: a text longer than the checkpoint's context is what a stream is.
    return list(self._tokenizer.encode(text, add_special_tokens=False, verbose=False))

  def decode(self, ids: Sequence[int]) -> str:
    return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def train_sentencepiece(lines: Iterable[str], model_path: str, vocab_size: int,
                        model_type: str = 'unigram', max_chars: int = 10**7) -> str:
  """Trains a SentencePiece model on `lines` and writes `model_path`.model.

  At most `max_chars` characters are used (the Flax WMT example does the
  same): enough for a stable vocabulary, and training stays within a minute,
  shown by a bar (characters read, then the time training). The file is written
  to a temporary name and renamed, so a concurrent reader never sees half a model.
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  what = f'SentencePiece {model_type} vocabulary of {vocab_size}'

  def limited(shown):
    used = 0
    for line in lines:
      if not line.strip():
        continue
      if used + len(line) > max_chars:
        break
      used += len(line)
      shown.update(len(line))
      yield line
    shown.set_description_str(f'{what}: training on')

  directory = os.path.dirname(model_path) or '.'
  os.makedirs(directory, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=directory) as tmp, progress.waiting(
      f'{what}: reading', bar_format='{desc} {n_fmt} characters [{elapsed}]', unit_scale=True,
      leave=False) as shown:
    prefix = os.path.join(tmp, 'spm')
    spm.SentencePieceTrainer.train(
        sentence_iterator=limited(shown), model_prefix=prefix, vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0,
        normalization_rule_name='identity', remove_extra_whitespaces=False,
        split_by_whitespace=True, max_sentence_length=1 << 16,
        pad_id=PAD_ID, unk_id=UNK_ID, eos_id=EOS_ID, bos_id=-1,
        user_defined_symbols=['<mask>', '<nl>'], hard_vocab_limit=False,
        minloglevel=2, num_threads=2)
    os.replace(prefix + '.model', model_path)
  return model_path


def load_or_train_sentencepiece(lines_fn, cache_dir: str, key: str, vocab_size: int,
                                model_type: str = 'unigram') -> SentencePieceTokenizer:
  """The SentencePiece model for `key`, trained once and cached in `cache_dir`.

  `lines_fn()` returns the training lines; it is only called when no cached
  model exists. The file name carries the key and the vocabulary size, so a
  changed config never silently reuses a stale model.
  """
  digest = hashlib.sha1(f'{key}|{vocab_size}|{model_type}'.encode()).hexdigest()[:10]
  path = os.path.join(cache_dir, f'spm_{vocab_size}_{digest}.model')
  if not os.path.exists(path):
    train_sentencepiece(lines_fn(), path, vocab_size, model_type)
  return SentencePieceTokenizer(path)


def _write_json(directory: str, fields: dict):
  """`directory`/tokenizer.json, written whole (to a temporary name of this
  process, then renamed: every process of a multi-host run writes the same file)."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, VOCABULARY_FILE)
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(fields, f, ensure_ascii=False)
  os.replace(tmp, path)


def is_saved(directory: str) -> bool:
  """Whether `directory` holds a saved vocabulary."""
  return os.path.exists(os.path.join(directory, VOCABULARY_FILE))


def load(directory: str) -> Tokenizer:
  """The tokenizer `Tokenizer.save(directory)` wrote."""
  with open(os.path.join(directory, VOCABULARY_FILE), encoding='utf-8') as f:
    fields = json.load(f)
  name = fields['name']
  if name == 'char':
    return CharTokenizer(fields['chars'])
  if name == 'byte':
    return ByteTokenizer()
  if name == 'g2p':
    return G2PTokenizer(fields['graphemes'], fields['phonemes'])
  if name == 'sentencepiece':
    return SentencePieceTokenizer(os.path.join(directory, fields['model']))
  if name == 'hf':
    return HFTokenizer(os.path.join(directory, fields['path']))
  raise DataError(f'{directory}/{VOCABULARY_FILE}: tokenizer {name!r} is unknown; remove '
                  'the directory to rebuild the vocabulary from the data.')


def saved_run_tokenizer(workdir: str, name: str) -> Optional[Tokenizer]:
  """The tokenizer saved in <workdir>/tokenizer/ (None: none is), read without
  the data (what a finished run is decoded with: restore.py).

  Raises:
    DataError: the saved one is not a `name` tokenizer.
  """
  directory = os.path.join(workdir, RUN_DIRECTORY)
  if not is_saved(directory):
    return None
  saved = load(directory)
  if saved.name != name:
    raise DataError(f'{directory} holds the {saved.name} vocabulary this run started with, '
                    f'not a {name} one; use a new workdir for another tokenizer.')
  return saved


def run_tokenizer(workdir: Optional[str], name: str,
                  build: Callable[[Optional[str]], Tokenizer]) -> Tokenizer:
  """The run's tokenizer: read from <workdir>/tokenizer/ once saved there.

  At a run's first start `build(directory)` makes it from the data (a
  SentencePiece model is trained into `directory`) and it is saved; later
  starts read it back, so a changed data file cannot shift ids. Symbols of
  the data the saved vocabulary lacks map to <unk>, and one warning says so.
  Without a workdir it is built, and not saved (`build(None)`).
  """
  if not workdir:
    return build(None)
  directory = os.path.join(workdir, RUN_DIRECTORY)
  saved = saved_run_tokenizer(workdir, name)
  if saved is None:
    tokenizer = build(directory)
    tokenizer.save(directory)
    return tokenizer
  if saved.vocabulary:
    known = set(saved.vocabulary)
    lacks = sorted(s for s in build(None).vocabulary if s not in known)
    if lacks:
      logging.warning('The data holds %d symbols the run\'s vocabulary in %s lacks (%s); they '
                      'map to <unk>.', len(lacks), directory, ' '.join(map(repr, lacks[:20])))
  return saved


def unigram_entropy(ids: np.ndarray, vocab_size: Optional[int] = None) -> float:
  """Entropy (nats/token) of the token frequencies: the loss of a model that
  ignores context, the baseline an LM must beat."""
  counts = np.bincount(np.asarray(ids).ravel(), minlength=vocab_size or 0)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())
