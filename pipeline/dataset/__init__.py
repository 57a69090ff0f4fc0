"""Reading a prepared dataset back without a StreamingDataset: file access (:mod:`~pipeline.dataset.files`),
shard decoding (:mod:`~pipeline.dataset.shards`), and the ``inspect`` and ``verify`` commands."""
