"""Tools that read what a training run wrote: the ``rlp`` command (export, eval, plot, thoughts) and the demo."""
