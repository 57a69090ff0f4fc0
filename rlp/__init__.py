"""RLP, reinforcement learning as a pretraining objective (arXiv 2510.01265).

``rlp`` itself is the Composer-free core: the objective (:mod:`rlp.objective`), the algorithm's configuration
(:mod:`rlp.config`), positions, the thought template, rollouts, scoring, the no-think teacher and the whole step as
one function (:func:`rlp.step.rlp_loss`). :mod:`rlp.run` is the run layer on top of it: recipe schema, streaming
data, models, checkpoints, metrics, the Composer ``Algorithm`` and the training entry point.
"""
