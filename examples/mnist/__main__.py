"""``python -m examples.mnist``: train an MNIST model with optax_rmsprop."""

import sys

from examples.mnist.main import main

sys.exit(main())
