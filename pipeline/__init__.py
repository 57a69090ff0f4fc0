"""``rlp-data``: raw corpora -> tokenised, packed MDS datasets for RLP pretraining.

Data flow of ``rlp-data prepare`` (:mod:`pipeline.prepare`, run by :mod:`pipeline.cli`):

* :mod:`pipeline.inputs`: ``--input`` values -> ordered groups -> documents;
* :mod:`pipeline.tokenize`: documents -> staged token streams (phase 1) -> packed samples (phase 2);
* :mod:`pipeline.mds`: samples -> MDS parts, ``index.json``, ``manifest.json``, published last;
* :mod:`pipeline.dataset`: a prepared dataset read back (``rlp-data inspect`` / ``verify``).

Shared by the stages: :mod:`pipeline.storage` (object stores, the staging folder) and :mod:`pipeline.errors`.
:mod:`pipeline.workers` runs the units of work in a process pool; :mod:`pipeline.prepare_args` holds the arguments.
:mod:`pipeline.synthetic` and :mod:`pipeline.bundled_tokenizer` are the embedded corpus and tokenizer.
"""
