"""XLA and 4-bit codes: a narrowing bitcast, and a shift pattern hoisted out of loops.

    python benchmarks/xla_repros/narrowing_bitcast.py

Two ways to unpack bytes holding two 4-bit codes each, decoded into a float32
array (2048 x 2048 codes, the float32 argument donated):

* by bytes: the byte widened to uint16 with its high nibble moved up 4 bits,
  then ``bitcast_convert_type`` to two uint8 (a narrowing bitcast). jaxlib
  0.7.2 and newer fuse it, with no temporary; jaxlib 0.4.35 writes the bytes
  out.
* by shifts: each byte shifted right by ``[0, 4]`` (a broadcast pair). No
  temporary, on every jaxlib; but inside a ``jax.lax.fori_loop`` XLA hoists the
  pair out of the loop and passes it in as a loop argument (``u8[2]``), and the
  shifts by amounts read from memory inside the loop are not vectorized: in
  optax_rmsprop a 4-bit step inside ``fori_loop`` ran 2x slower than alone
  (``docs/design_notes.md``, commit ``79eeff0``).

optax_rmsprop unpacks by bytes from jaxlib 0.7.2 (where the narrowing bitcast
fuses; ``_xla_hints.FUSES_NARROWING_BITCAST``), and by shifts before. The
figures per jaxlib are in ``README.md`` beside this file.

Only jax and numpy are needed; it prints the jaxlib version, then for each way
the temporaries in bytes per code and the size-2 arrays of the loop's program.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

ROWS, BYTES = 2048, 1024  # two codes per byte: 2048 x 2048 codes


def by_bytes(packed: jax.Array) -> jax.Array:
    """The codes, low nibble first: a uint16 of the two nibbles read as two bytes."""
    wide = packed.astype(jnp.uint16)
    spread = (wide & np.uint16(0x0F)) | ((wide & np.uint16(0xF0)) << np.uint16(4))
    return jax.lax.bitcast_convert_type(spread, jnp.uint8).reshape(ROWS, 2 * BYTES)


def by_shifts(packed: jax.Array) -> jax.Array:
    """The codes, low nibble first: each byte shifted by 0 and by 4."""
    pairs = (packed[..., None] >> np.array([0, 4], np.uint8)) & np.uint8(0xF)
    return pairs.reshape(ROWS, 2 * BYTES)


def temporaries(unpack) -> float:
    """Bytes of temporaries per code of ``x * codes``, ``x`` donated."""
    fn = jax.jit(lambda packed, x: x * unpack(packed).astype(jnp.float32), donate_argnums=1)
    args = (
        jax.ShapeDtypeStruct((ROWS, BYTES), jnp.uint8),
        jax.ShapeDtypeStruct((ROWS, 2 * BYTES), jnp.float32),
    )
    memory = fn.lower(*args).compile().memory_analysis()
    return memory.temp_size_in_bytes / (ROWS * 2 * BYTES)


def hoisted(unpack) -> list[str]:
    """The size-2 arrays in the optimised program of a 3-step loop that unpacks."""

    def body(i, total):
        packed = jnp.zeros((ROWS, BYTES), jnp.uint8) + i.astype(jnp.uint8)
        return total + unpack(packed).astype(jnp.int32)

    loop = jax.jit(lambda total: jax.lax.fori_loop(0, 3, body, total))
    text = loop.lower(jnp.zeros((ROWS, 2 * BYTES), jnp.int32)).compile().as_text()
    return sorted(set(re.findall(r"\b(?:u8|s8|pred|s32)\[2\]", text)))


def main() -> None:
    print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, {jax.default_backend()}")
    for name, unpack in (("by bytes", by_bytes), ("by shifts", by_shifts)):
        print(f"  {name}: {temporaries(unpack):g} B/code of temporaries;", end=" ")
        print(f"size-2 arrays in the loop: {hoisted(unpack) or 'none'}")


if __name__ == "__main__":
    main()
