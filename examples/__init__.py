"""Example applications of optax_rmsprop."""
