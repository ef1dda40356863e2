"""Sentence-pair classification on GLUE (encoder-only, BERT-style): MRPC by default.

Each example is one row, [CLS] a [SEP] b [SEP], whose token types are 0 through
the first [SEP] and 1 after it, each type adding its own learned segment
embedding (Devlin et al. 2019, section 3, figure 2; config.model.token_types=2).
The classifier reads the first token's output ([CLS]: pooling=first) through
BERT's pooler (dense + tanh). The optimiser is BERT's fine-tuning recipe (AdamW
with weight decay 0.01, linear warmup over the first 10% of the updates, then
linear decay to 0, batch 32, 3 epochs of the train split); from scratch it trains
a small model over a SentencePiece vocabulary of the train split. Evaluated on
the validation split (MNLI: validation_matched); GLUE's test labels are hidden.
Needs the TFDS data: on a machine with internet TFDS downloads and prepares it.

  python -m transformer_jax.main --config=glue_pairs --workdir=runs/mrpc
  python -m transformer_jax.main --config=glue_pairs:qnli --workdir=runs/qnli
  python -m transformer_jax.main --config=glue_pairs:rte --workdir=runs/rte
  python -m transformer_jax.main --config=glue_pairs:qqp --workdir=runs/qqp
  python -m transformer_jax.main --config=glue_pairs:mnli --workdir=runs/mnli
  python -m transformer_jax.main --config=glue_pairs:quick --workdir=/tmp/mrpc_quick

Fine-tuning a BERT from the Hugging Face cache (`huggingface-cli download NAME`
first, where there is internet; its own WordPiece vocabulary, [CLS] and [SEP]),
at the paper's fine-tuning rate:

  BERT=google-bert/bert-base-uncased
  python -m transformer_jax.main --config=glue_pairs --workdir=runs/mrpc_bert \
      --config.init_from=hf:$BERT --config.data.tokenizer=hf --config.learning_rate=2e-5 \
      $(python -c "from transformer_jax import hf; print(hf.flags('$BERT', 'classify'))")
"""

from transformer_jax import config as config_lib
from transformer_jax import configs

# arg -> (TFDS dataset, classes, training examples): 3 epochs of batch 32 each. Without an
# arg (and with quick): MRPC, the Microsoft Research Paraphrase Corpus.
TASKS = {'mrpc': ('glue/mrpc', 2, 3_668), 'qnli': ('glue/qnli', 2, 104_743),
         'rte': ('glue/rte', 2, 2_490), 'qqp': ('glue/qqp', 2, 363_846),
         'mnli': ('glue/mnli', 3, 392_702)}
ARGS = {'qnli': 'question answering as entailment', 'rte': 'recognising textual entailment',
        'qqp': 'Quora question pairs', 'mnli': 'multi-genre entailment, 3 classes',
        'quick': 'a short smoke run of a tiny model on 256 MRPC pairs, bytes as tokens'}
EPOCHS = 3


def get_config(arg: str = ''):
  """arg: '' (MRPC) or one of ARGS."""
  arg = configs.parse_arg(arg, ARGS)
  dataset, num_classes, examples = TASKS.get(arg, TASKS['mrpc'])
  c = config_lib.base_config()
  c.model.variant = 'encoder'
  c.model.encoder_head = 'classify'
  c.model.num_classes = num_classes
  c.model.token_types = 2
  c.model.pooling = 'first'
  c.model.pooler = True
  c.model.embedding_norm = True
  c.model.position = 'learned'
  c.model.scale_embeddings = False
  c.model.activation = 'gelu'
  c.model.num_layers = 4
  c.model.d_model = 256
  c.model.num_heads = 4
  c.model.ffn_ratio = 4.0
  c.model.dropout_rate = 0.1
  c.model.vocab_size = 8000
  c.model.max_len = 128
  c.data.name = f'tfds:{dataset}'
  c.data.task = 'classify'
  c.data.tokenizer = 'sentencepiece'
  c.data.vocab_size = 8000
  c.data.overflow = 'truncate'  # the longer sentence of a pair loses its last tokens.
  c.seq_len = 128
  c.batch_size = 32
  c.total_steps = EPOCHS * examples // c.batch_size
  c.learning_rate = 5e-4
  c.warmup_steps = c.total_steps // 10
  c.optimizer.name = 'adamw'
  c.optimizer.weight_decay = 0.01
  c.optimizer.schedule = 'linear'
  c.optimizer.label_smoothing = 0.0
  c.eval_every = max(c.total_steps // EPOCHS, 1)
  c.checkpoint_every = c.eval_every
  c.log_every = 50
  if arg == 'quick':
    c.model.num_layers = 1
    c.model.d_model = 32
    c.model.num_heads = 2
    c.model.vocab_size = 260
    c.data.tokenizer = 'byte'
    c.data.max_examples = 256
    c.batch_size = 8
    c.total_steps = 20
    c.warmup_steps = 2
    c.eval_every = 20
    c.eval_steps = 4
    c.checkpoint_every = 20
    c.log_every = 10
  return c
