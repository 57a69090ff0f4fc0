"""Stage 1 of ``rlp-data prepare``, reading: what the user typed becomes ordered groups of pieces, then documents.

* :mod:`~pipeline.inputs.groups`: the :class:`Piece` and :class:`Group` types and the supported file kinds;
* :mod:`~pipeline.inputs.expand`: ``--input`` values -> groups (globs, folders, chunking, merging small files);
* :mod:`~pipeline.inputs.s3`: ``s3://`` inputs listed and downloaded into the staging folder;
* :mod:`~pipeline.inputs.readers`: the per-format document readers of a group.
"""
