"""Where bytes live, shared by every stage: object stores (:mod:`~pipeline.storage.remote`) and the local staging
folder of a ``prepare`` run with its done markers (:mod:`~pipeline.storage.staging`)."""
