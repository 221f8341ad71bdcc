"""XLA keeps a float32 temporary when a bfloat16 buffer is rounded and read back.

    python benchmarks/xla_repros/rounded_read_back.py

An RMSProp step with momentum whose two buffers are stored in bfloat16, all
arguments donated: the new momentum buffer is rounded to bfloat16, and the
parameter update reads it back as stored. Everything is elementwise, so XLA
can overwrite every buffer in place with no temporary at all, which jaxlib
0.9.1 and newer do. jaxlib 0.9.0 and older keep a copy of each old buffer and
write the update ``g / (sqrt(nu) + eps)`` out in float32.

Reading the rounded buffer through a no-op (its bits divided by a 1 that XLA
cannot see is 1: ``kept`` below) removes the float32 temporary on the older
jaxlib, and costs a bfloat16 copy on the newer. optax_rmsprop applies it below
jaxlib 0.9.1 (``_xla_hints.FUSES_ROUNDED_READ_BACK``). The figures per jaxlib
are in ``README.md`` beside this file.

Only jax and numpy are needed; it prints the jaxlib version, then the
temporaries in bytes per parameter and the entry computation's buffers.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import jaxlib

F32, BF16 = jnp.float32, jnp.bfloat16
SHAPE = (2048, 2048)


def kept(x: jax.Array) -> jax.Array:
    """``x``, bit for bit: its bits divided by a 1 that XLA cannot fold."""
    bits = jax.lax.bitcast_convert_type(x, jnp.uint16)
    low = bits & 1
    one = (low & (low ^ 1)) + jnp.uint16(1)
    return jax.lax.bitcast_convert_type(jax.lax.div(bits, one), x.dtype)


def step(params, nu, momentum, grads, *, hint: bool):
    """RMSProp with momentum; both buffers stored in bfloat16 and read back as stored."""
    new_nu = (0.9 * nu.astype(F32) + 0.1 * grads * grads).astype(BF16)
    update = grads / (jnp.sqrt(new_nu.astype(F32)) + 1e-8)
    new_momentum = (0.9 * momentum.astype(F32) + update).astype(BF16)
    if hint:
        new_momentum = kept(new_momentum)
    return params - 0.01 * new_momentum.astype(F32), new_nu, new_momentum


def main() -> None:
    args = [jax.ShapeDtypeStruct(SHAPE, dtype) for dtype in (F32, BF16, BF16, F32)]
    n = SHAPE[0] * SHAPE[1]
    print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, {jax.default_backend()}")
    for hint in (False, True):
        fn = jax.jit(lambda *a, hint=hint: step(*a, hint=hint), donate_argnums=(0, 1, 2))
        compiled = fn.lower(*args).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes / n
        entry = compiled.as_text().split("ENTRY", 1)[1].split("\n}", 1)[0]
        buffers = [
            line.split(" = ")[1].split("{")[0]
            for line in entry.splitlines()
            if re.search(r" (fusion|call|copy)\(", line)  # jaxlib 0.4 calls parallel fusions
        ]
        print(f"  {'with' if hint else 'without'} kept: {temp:g} B/param of temporaries")
        print(f"    entry fusions, calls and copies: {', '.join(buffers)}")


if __name__ == "__main__":
    main()
