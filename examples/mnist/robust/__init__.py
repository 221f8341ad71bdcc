"""What the trainer adds to Flax's MNIST example so that a run survives real machines.

The Flax-shaped core (``main``, ``config``, ``train``, ``models``, ``input_pipeline``,
``reporting``) calls each of these in one line:

- ``workdir_lock``: one run per workdir; a second one is refused, naming the first.
- ``checkpoints``: orbax checkpoints; a rerun continues the run bit for bit, refuses other
  settings unless ``--overwrite``, and sets a damaged newest checkpoint aside.
- ``preemption``: SIGTERM or Ctrl-C saves a checkpoint and stops, on every process at the
  same step.
- ``divergence``: a nan or inf stops the run before it reaches a checkpoint.
- ``xla_cpu``: a faster XLA:CPU setting, added to ``XLA_FLAGS`` before JAX starts.
"""
