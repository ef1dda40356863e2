"""The batch contract: what every batch the data layer yields holds.

A batch is a dict of numpy arrays (which task feeds which variant:
config.TASKS); b = config.batch_size / hosts (this host's
rows), L = config.seq_len, and every sequence is zero-padded (pad id 0).

  task      model variant   rows          key                    dtype    shape
  lm        decoder         all           inputs                 int32    [b, L]
                                          targets                int32    [b, L]
                                          weights                float32  [b, L]
                            packed        segment_ids            int32    [b, L]
                                          positions              int32    [b, L]
  mlm       encoder (mlm)   all           inputs (masked)        int32    [b, L]
                                          targets (unmasked)     int32    [b, L]
                                          weights (1 = masked)   float32  [b, L]
                            packed        segment_ids            int32    [b, L]
                                          positions              int32    [b, L]
  classify  encoder         all           inputs                 int32    [b, L]
            (classify)                    targets (class)        int32    [b]
                                          weights                float32  [b]
                            pairs         token_types            int32    [b, L]
  classify  encoder         images        inputs (in [0, 1])     float32  [b, H, W, C]
  (images)  (classify,                    targets (class)        int32    [b]
            patch_size>0)                 weights                float32  [b]
  seq2seq   seq2seq         all           inputs (source)        int32    [b, l]
                                          targets (target)       int32    [b, l]
                                          weights                float32  [b, l]
                            packed        inputs_segment_ids     int32    [b, L]
                                          inputs_positions       int32    [b, L]
                                          targets_segment_ids    int32    [b, L]
                                          targets_positions      int32    [b, L]

l = L except for length-bucketed seq2seq train batches, where l is the batch's
bucket (a power of two below L, or L). Segment ids number the examples of a
packed row 1, 2, ... (0 = padding) and positions restart at 0 per example;
unpacked rows carry neither (encoders and the seq2seq model derive them from
`inputs != pad_id`; a decoder-only model reads every token of its right-padded,
causal rows as real: models/transformer.py).
A sentence pair (a dataset of kind `pairs`, or text<TAB>text<TAB>label files) is
one row, [CLS] a [SEP] b [SEP] (examples.pair_ids: the tokenizer's cls_id and
sep_id), whose `token_types` are 0 up to the first [SEP], then 1 (BERT's
segments A and B; 0 on padding), for an encoder with config.model.token_types=2.
Eval batches are never packed or bucketed: one example per row, padded to L,
and the last batch filled with all-zero rows of weight 0. Images (H = W =
config.model.image_size, C = num_channels) are never padded; an image model
makes its own segment ids and positions (models/transformer.ImageEmbedder).
"""

# Batch keys each variant's model takes (the rest, targets and weights, feed the loss).
MODEL_INPUTS = {
    'decoder': ('inputs', 'segment_ids', 'positions'),
    'encoder': ('inputs', 'segment_ids', 'positions', 'token_types'),
    'seq2seq': ('inputs', 'targets', 'inputs_segment_ids', 'inputs_positions',
                'targets_segment_ids', 'targets_positions'),
}

# task -> {side: features laid out along it}; each side gets its own segment
# ids and positions (named as in the table above).
PACKED_SIDES = {
    'lm': {'inputs': ('inputs', 'targets', 'weights')},
    'mlm': {'inputs': ('inputs',)},
    'seq2seq': {'inputs': ('inputs',), 'targets': ('targets', 'weights')},
}
