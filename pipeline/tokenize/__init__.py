"""Stage 2 of ``rlp-data prepare``: documents -> token streams -> fixed-size samples.

* :mod:`~pipeline.tokenize.tokenizer`: tokenizer loading, the BOS/EOS policy, batch encoding, token dtype;
* :mod:`~pipeline.tokenize.group`: phase 1, one group's documents tokenised into its staged token stream;
* :mod:`~pipeline.tokenize.pack`: the packing arithmetic (pure functions);
* :mod:`~pipeline.tokenize.samples`: phase 2, the samples of one part read back from the staged streams.
"""
