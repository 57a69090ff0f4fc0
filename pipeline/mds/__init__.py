"""Stage 3 of ``rlp-data prepare``, writing: MDS folders and the root index (:mod:`~pipeline.mds.writer`), the
manifest (:mod:`~pipeline.mds.manifest`), and publishing to a folder or an object store
(:mod:`~pipeline.mds.publish`)."""
