"""How each per-parameter state buffer is stored: a floating array, or 8-bit or 4-bit codes.

``nu``, ``mu`` and the momentum buffer are read into the dtype the update is
computed in, updated there, and written back in their storage format. Each
buffer has one :class:`Encoding`, fixed when the state is created from the
parameter's shape and dtype, the :class:`StatePrecision` and the buffer's role:

* a floating array, of ``state_dtype`` or, by default, the parameter's dtype
  but at least float32 (:mod:`optax_rmsprop._dtypes`);
* with ``state_dtype="int8"``, block-quantized 8-bit codes
  (:mod:`optax_rmsprop._quantize`): ``nu`` on the zero-free ``NU`` grid, first
  moments on the ``SIGNED`` map;
* with ``state_dtype="int4"``, 4-bit codes two per byte: ``nu`` on the
  zero-free ``NU4`` grid (powers of two), first moments on ``SIGNED4``.

A complex moment is stored as its real and imaginary parts on a trailing axis
of 2. Leaves with fewer than ``min_quantized_size`` elements, and scalars,
stay as the default policy keeps them: they cost little and are often biases
and norms.

A buffer is stored as two arrays at its parameter's position in two parallel
trees: ``values`` (the float array, or the codes) and ``absmax`` (the float32
per-block absmax of the codes; for a float buffer None, or in a quantized
state a float32 scalar 0, so that every position holds an array that
checkpointers can save). So every state leaf is a plain array, as
``nnx.Optimizer``, ``optax.tree.map_params`` and checkpointers expect. Shapes,
for a parameter of shape ``(..., L)`` with ``n`` blocks:

=========  ============================  ============================
state      codes                         absmax
=========  ============================  ============================
int8       ``(..., L)``                  ``(..., n)``
int4       ``(..., ceil(L / 2))`` uint8  ``(..., n, 1)``
=========  ============================  ============================

(complex: one more trailing axis of 2 on both). The unit axis marks 4-bit
codes, so a stored state says what it holds; reading it back needs the
parameter's last axis ``L`` only there, where ``ceil(L / 2)`` leaves its
parity open.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optax_rmsprop import _dtypes, _jax_versions, _quantize, _rounding, _validation, _xla_hints
from optax_rmsprop._quantize import Codebook
from optax_rmsprop._tree import Tree

# The quantized states by name: (code width in bits, default block size).
QUANTIZED = {"int8": (8, 256), "int4": (4, 128)}
# The maps by code width: (nu's, the first moments').
_MAPS = {8: (_quantize.NU, _quantize.SIGNED), 4: (_quantize.NU4, _quantize.SIGNED4)}


@dataclasses.dataclass(frozen=True)
class StatePrecision:
    """The resolved ``state_dtype`` and its quantization settings.

    Attributes:
      dtype: a floating dtype for every buffer, or None for the default policy
        (and for a quantized state's unquantized small leaves).
      bits: 8 or 4 when buffers of at least ``min_size`` elements are
        block-quantized, else 0.
      block_size: elements per quantization block (along the last axis).
      min_size: the smallest leaf that is quantized.
    """

    dtype: np.dtype | None = None
    bits: int = 0
    block_size: int = 0
    min_size: int = 4096

    @property
    def quantized(self) -> bool:
        return self.bits > 0

    @property
    def stochastic(self) -> bool:
        """The moving averages are stored more coarsely than computed, and round
        stochastically: 8-bit or 4-bit codes, or a 16-bit float state."""
        return self.quantized or (self.dtype is not None and self.dtype.itemsize < 4)

    @classmethod
    def from_args(
        cls, state_dtype: Any, block_size: Any = None, min_quantized_size: Any = None
    ) -> StatePrecision:
        """``state_dtype`` and the quantization settings as the user gives them, checked.

        Raises:
          ValueError: naming the argument, for a ``state_dtype`` that is not
            None, a floating dtype, ``"int8"`` or ``"int4"``; for settings that
            are not positive integers or come without a quantized state; for
            an odd ``block_size`` with ``"int4"`` (its codes go two per byte).
        """
        name = _quantized_name(state_dtype)
        for arg, value in (("block_size", block_size), ("min_quantized_size", min_quantized_size)):
            if value is None:
                continue
            if name is None:
                raise ValueError(
                    f"{arg} applies to state_dtype='int8' or 'int4' only, got {arg}={value!r} "
                    f"with state_dtype={state_dtype!r}."
                )
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{arg} must be a positive integer, got {value!r}.")
        if name is None:
            return cls(dtype=_floating_dtype(state_dtype))
        bits, default_block = QUANTIZED[name]
        if bits == 4 and block_size is not None and block_size % 2:
            raise ValueError(
                f"block_size must be even with state_dtype='int4' (two 4-bit codes per "
                f"byte), got block_size={block_size!r}."
            )
        return cls(
            bits=bits,
            block_size=int(block_size or default_block),
            min_size=int(min_quantized_size or cls.min_size),
        )

    def encoding(self, param: jax.Array, *, real: bool, path: str = "") -> Encoding:
        """The encoding of a buffer for ``param``: ``real`` for ``nu``, else a first moment."""
        dtype_of = _dtypes.nu_dtype if real else _dtypes.moment_dtype
        dtype = dtype_of(param.dtype, self.dtype, path)  # also rejects integer params
        if not (self.quantized and param.ndim >= 1 and param.size >= self.min_size):
            return Encoding(dtype, root=real and dtype == np.float16)
        length = param.shape[-1]
        if self.code_bytes(length) >= _dtypes.real_dtype(dtype).itemsize:
            return Encoding(dtype)  # short rows: the codes and absmax would take more bytes
        n_blocks = _quantize.num_blocks(length, self.block_size)
        return Encoding(dtype, codebook_for(self.bits, real=real), n_blocks, length)

    def code_bytes(self, length: int) -> float:
        """Bytes per element of a quantized buffer whose last axis is ``length``.

        Its codes (``ceil(length * bits / 8)`` bytes a row) and one float32
        absmax per block: 5 for int8 rows of 1 element, 1.5 for rows of 8,
        ``1 + 4 / block_size`` from the block size on.
        """
        n_blocks = _quantize.num_blocks(length, self.block_size)
        return (math.ceil(length * self.bits / 8) + 4 * n_blocks) / length


def codebook_for(bits: int, *, real: bool) -> Codebook:
    """The map of ``nu`` (``real``) or of a first moment, in ``bits`` bits."""
    nu, signed = _MAPS[bits]
    return nu if real else signed


def _quantized_name(state_dtype: Any) -> str | None:
    """``"int8"`` or ``"int4"`` if ``state_dtype`` names a quantized state, else None.

    Only the strings: the codes are not int8 or int4 arrays (``nu``'s are
    ``uint8``, int4's two per byte), so an integer dtype would promise the wrong thing.
    """
    if isinstance(state_dtype, str):
        return state_dtype if state_dtype in QUANTIZED else None
    return None


def _floating_dtype(state_dtype: Any) -> np.dtype | None:
    if state_dtype is None:
        return None
    try:
        dtype = jnp.dtype(state_dtype)
    except TypeError as err:
        raise ValueError(
            f"state_dtype must be {_validation.ALLOWED_STATE_DTYPES}, got {state_dtype!r}."
        ) from err
    if dtype.name in QUANTIZED:
        raise ValueError(
            f"state_dtype={dtype.name} as a dtype is ambiguous: pass the string "
            f"state_dtype='{dtype.name}' for {dtype.name[3:]}-bit block-quantized state "
            "(its codes are stored as uint8)."
        )
    _validation.check_floating_state_dtype(dtype)
    return dtype


@dataclasses.dataclass(frozen=True)
class Encoding:
    """How one buffer is stored.

    Attributes:
      dtype: the dtype of the values the buffer stands for: the float array's
        own dtype, or float32 / complex64 for codes.
      codebook: the map of the codes, or None for a float array.
      n_blocks: quantization blocks along the last axis (codes only).
      length: the parameter's last axis (codes only; read back for 4-bit codes,
        whose packed axis leaves its parity open).
      root: the float array holds the square root of the values (float16
        ``nu``: float16's range holds ``sqrt(nu)`` down to ``|g|`` of 6e-8,
        where ``nu`` itself underflows below ``|g|`` of 2e-4).
    """

    dtype: np.dtype
    codebook: Codebook | None = None
    n_blocks: int = 0
    length: int = 0
    root: bool = False

    @property
    def quantized(self) -> bool:
        return self.codebook is not None

    @property
    def complex(self) -> bool:
        return jnp.issubdtype(self.dtype, jnp.complexfloating)

    @classmethod
    def of_stored(
        cls,
        values: jax.Array,
        absmax: jax.Array | None,
        *,
        real: bool,
        param_shape: tuple[int, ...],
        length_known: bool,
    ) -> Encoding:
        """The encoding of stored arrays, for readers that hold a state but no optimizer.

        ``param_shape`` is the parameter's shape, or that of ``nu`` when the
        parameters are not at hand (``length_known=False``): enough for 8-bit
        codes, not for 4-bit ones.

        Raises:
          ValueError: for 4-bit codes without the parameter's shape.
        """
        if absmax is None or absmax.ndim == 0:
            return cls(values.dtype, root=real and values.dtype == np.float16)
        complex_codes = values.ndim == len(param_shape) + 1  # (re, im) on a trailing axis
        packed = absmax.ndim == values.ndim + 1  # the unit axis of 4-bit absmax
        if packed and not length_known:
            raise ValueError(
                "This state holds 4-bit codes (state_dtype='int4'), two per byte: pass the "
                "parameters (params=..., arrays or jax.ShapeDtypeStruct) to read it, so that "
                "each last axis's length is known."
            )
        dtype = jnp.dtype(jnp.complex64 if complex_codes else jnp.float32)
        codebook = codebook_for(4 if packed else 8, real=real)
        n_blocks = absmax.shape[-1 - complex_codes - packed]
        length = param_shape[-1] if length_known else values.shape[-1 - complex_codes]
        return cls(dtype, codebook, n_blocks, length)

    def init(self, param: jax.Array, fill: Any, absmax_placeholder: bool) -> tuple:
        """``(values, absmax)`` of a buffer filled with ``fill``, written directly.

        A constant block's codes are its fill code and its absmax is
        ``|fill|``, so nothing is quantized (and XLA folds no constant).
        ``fill`` is ``>= 0``. The arrays shard like ``param`` (explicit
        sharding too).
        """
        if not self.quantized:
            placeholder = jnp.zeros((), jnp.float32) if absmax_placeholder else None
            fill = jnp.sqrt(fill) if self.root else fill
            return jnp.full_like(param, fill, dtype=self.dtype), placeholder
        code = self.codebook.fill_code
        if self.codebook.packed:
            byte = (code & 0xF) | (code & 0xF) << 4
            shape = (*param.shape[:-1], math.ceil(param.shape[-1] / 2))
            codes = _jax_versions.shard_like(jnp.full(shape, byte, jnp.uint8), param)
        else:
            codes = jnp.full_like(param, code, dtype=self.codebook.code_dtype)
        absmax = jnp.full((*param.shape[:-1], self.n_blocks), fill, jnp.float32)
        absmax = self._marked(_jax_versions.shard_like(absmax, param))
        if self.complex:  # (re, im) on a trailing axis; fill is real
            return jnp.stack([codes, codes], -1), jnp.stack([absmax, jnp.zeros_like(absmax)], -1)
        return codes, absmax

    def read(self, values: jax.Array, absmax: jax.Array | None, dtype: np.dtype) -> jax.Array:
        """The buffer's values in ``dtype`` (complex for complex buffers)."""
        if not self.quantized:
            return (
                jnp.square(_dtypes.cast(values, dtype))
                if self.root
                else _dtypes.cast(values, dtype)
            )
        if self.complex:
            real = _dtypes.real_dtype(dtype)
            re, im = (self._decode(values[..., i], absmax[..., i], real) for i in range(2))
            return jax.lax.complex(re, im).astype(dtype)
        return self._decode(values, absmax, dtype)

    def write(
        self,
        value: jax.Array,
        absmax: jax.Array | None,
        seed: jax.Array | None = None,
        codes_pass: jax.Array | None = None,
    ) -> tuple:
        """``value`` in this encoding: ``(values, absmax)``; the absmax is recomputed.

        ``seed`` (:func:`~optax_rmsprop._rounding.stream_seed`) rounds a real
        value stochastically where it is stored more coarsely than computed:
        on a ``nu`` grid, or cast to a narrower float. ``codes_pass`` is the
        same value computed apart for the pass that writes the codes
        (:meth:`~optax_rmsprop._xla_hints.Hints.per_pass`); the absmax pass
        reads ``value``.
        """
        if not self.quantized:
            value = jnp.sqrt(value) if self.root else value
            if seed is None or self.complex or self.dtype.itemsize >= value.dtype.itemsize:
                return _dtypes.cast(value, self.dtype), absmax
            random = _rounding.random_bits(value.shape, seed)
            return _rounding.stochastic_cast(value, self.dtype, random), absmax
        again = value if codes_pass is None else codes_pass
        if self.complex:
            pairs = ((value.real, again.real), (value.imag, again.imag))
            parts = [self._encode(x, y) for x, y in pairs]
            return tuple(jnp.stack(arrays, -1) for arrays in zip(*parts, strict=True))
        return self._encode(value, again, seed)

    @property
    def storage_dtype(self) -> np.dtype:
        """The dtype of the stored values: the codes', or the float array's."""
        return self.codebook.storage_dtype if self.quantized else jnp.dtype(self.dtype)

    def stores_as_computed(self, dtype: np.dtype) -> bool:
        """The buffer is stored as it is computed in ``dtype``: a float array of that dtype."""
        return not self.quantized and self.dtype == dtype

    def _marked(self, absmax: jax.Array) -> jax.Array:
        """``absmax`` as stored: with the unit axis that marks 4-bit codes."""
        return absmax[..., None] if self.codebook.packed else absmax

    def _decode(self, codes: jax.Array, absmax: jax.Array, dtype: np.dtype) -> jax.Array:
        if not self.codebook.packed:  # 8-bit codes have the values' own shape
            return _quantize.decode_blocks(codes, absmax, self.codebook).astype(dtype)
        values = _quantize.decode_blocks(codes, absmax[..., 0], self.codebook, self.length)
        return values.astype(dtype)

    def _encode(
        self, value: jax.Array, again: jax.Array, seed: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        absmax = _quantize.block_absmax(value, self.n_blocks)
        codes = _quantize.encode_blocks(again, absmax, self.codebook, seed)
        return codes, self._marked(absmax)


# -- whole trees ----------------------------------------------------------------------
def encodings(params: Tree, precision: StatePrecision, *, real: bool) -> Tree:
    """The :class:`Encoding` of each parameter's buffer (a tree of static leaves)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, p: precision.encoding(p, real=real, path=jax.tree_util.keystr(path)), params
    )


def init_tree(
    params: Tree, fill: Any, precision: StatePrecision, *, real: bool
) -> tuple[Tree, Tree | None]:
    """The values and absmax trees (absmax None unless quantized) of a buffer of ``fill``."""
    leaves, treedef = jax.tree.flatten(params)
    codings = treedef.flatten_up_to(encodings(params, precision, real=real))
    pairs = [e.init(p, fill, precision.quantized) for p, e in zip(leaves, codings, strict=True)]
    values, absmax = _unzip(treedef, pairs)
    return values, absmax if precision.quantized else None


@dataclasses.dataclass(frozen=True)
class Buffer:
    """One state buffer (``nu``, ``mu`` or the momentum buffer) of a whole tree, as stored.

    Attributes:
      values: the float arrays or codes, one per parameter.
      absmax: the per-block absmax tree of a quantized state (a float32 scalar
        0 at leaves kept unquantized), or None.
      encodings: each leaf's :class:`Encoding`.
      dtypes: each leaf's compute dtype (real for ``nu``): what it is read in.
    """

    values: Tree
    absmax: Tree | None
    encodings: Tree
    dtypes: Tree

    @classmethod
    def of(
        cls,
        values: Tree,
        absmax: Tree | None,
        grads: Tree,
        like: Tree,
        precision: StatePrecision,
        *,
        real: bool,
    ) -> Buffer:
        """The buffer stored in ``values`` and ``absmax``, read with ``grads``' compute dtypes.

        ``like`` (the params, or the raw gradients) fixes each leaf's encoding.
        """
        of_real = _dtypes.real_dtype if real else (lambda d: d)
        dtypes = jax.tree.map(lambda g: of_real(g.dtype), grads)
        buffer = cls(values, absmax, encodings(like, precision, real=real), dtypes)
        buffer.check_stored()
        return buffer

    def check_stored(self) -> None:
        """Raises if a leaf holds another dtype than its encoding stores (codes for floats).

        Raises:
          ValueError: naming the leaf, for a state saved by an optimizer that
            stored that leaf otherwise (0.3.0 quantized rows shorter than the
            codes' break-even, which are now kept in float32).
        """
        paths, treedef = jax.tree_util.tree_flatten_with_path(self.values)
        for (path, v), e in zip(paths, treedef.flatten_up_to(self.encodings), strict=True):
            if jnp.dtype(v.dtype) != e.storage_dtype:
                raise ValueError(
                    f"The optimizer state's leaf {jax.tree_util.keystr(path) or '<root>'} "
                    f"holds {jnp.dtype(v.dtype).name} values where this optimizer stores "
                    f"{e.storage_dtype.name}: it was saved by another version or with other "
                    "options (optax_rmsprop 0.3.0 stored rows shorter than the codes' "
                    "break-even as codes). Convert it with `optax_rmsprop.dequantize_state` "
                    "of the version that saved it, or start the state afresh."
                )

    def _leaves(self, *trees: Tree) -> tuple[Any, list[tuple]]:
        """The treedef, and per leaf ``(values, absmax or None, encoding, dtype, *trees)``."""
        values, treedef = jax.tree.flatten(self.values)
        absmax = [None] * len(values) if self.absmax is None else treedef.flatten_up_to(self.absmax)
        rest = [treedef.flatten_up_to(t) for t in (self.encodings, self.dtypes, *trees)]
        return treedef, list(zip(values, absmax, *rest, strict=True))

    def _with(self, treedef: Any, pairs: list[tuple]) -> Buffer:
        values, absmax = _unzip(treedef, pairs)
        return dataclasses.replace(
            self, values=values, absmax=None if self.absmax is None else absmax
        )

    def read(self) -> Tree:
        """Every leaf's values in its compute dtype."""
        treedef, leaves = self._leaves()
        return treedef.unflatten([e.read(v, a, d) for v, a, e, d in leaves])

    def write(
        self, new: Tree, *, seeds: list | None = None, passes: tuple[Tree, ...] | None = None
    ) -> Buffer:
        """``new`` (compute-dtype values) written in each leaf's encoding.

        ``seeds``: one stochastic-rounding seed per leaf, in leaf order, or
        None (round to nearest). ``passes``: ``new`` computed apart for each
        pass that writes codes, the absmax's and the codes'
        (:meth:`~optax_rmsprop._xla_hints.Hints.per_pass`), or for the one
        pass that writes a rounded float (its first;
        :meth:`~optax_rmsprop._xla_hints.Hints.per_rounded_pass`); leaves
        stored as computed are written from ``new``.
        """
        passes = (new, new) if passes is None else passes
        treedef, leaves = self._leaves(new, passes[0], passes[-1])
        seeds = [None] * len(leaves) if seeds is None else seeds
        pairs = [
            e.write(first, a, seed, second)
            if e.quantized
            else e.write(x if e.stores_as_computed(d) else first, a, seed)
            for (_, a, e, d, x, first, second), seed in zip(leaves, seeds, strict=True)
        ]
        return self._with(treedef, pairs)

    def quantized(self) -> bool:
        """Whether any leaf is stored as codes."""
        return any(e.quantized for e in jax.tree.leaves(self.encodings, is_leaf=is_encoding))

    def stored_as_computed(self) -> bool:
        """Whether every leaf is stored as it is computed (float32 state of float32 params)."""
        _, leaves = self._leaves()
        return all(e.stores_as_computed(d) for _, _, e, d in leaves)

    def read_back(self, new: Tree, hints: _xla_hints.Hints, *, codes: bool) -> tuple[Buffer, Tree]:
        """``(stored, used)``: the buffer's values as a step that uses them reads them.

        Where the buffer is stored more coarsely than computed, the step reads
        the values back as stored (loaded, :meth:`~optax_rmsprop._xla_hints.Hints.loaded`):
        rounded floats, and with ``codes`` the 8-bit codes too. Elsewhere (a
        buffer stored as computed, 4-bit codes, or codes without ``codes``) it
        uses ``new``, the values as computed.
        """
        treedef, leaves = self._leaves(new)
        pairs, used = [], []
        for v, a, e, d, x in leaves:
            back = not e.stores_as_computed(d) and (
                not e.quantized or (codes and not e.codebook.packed)
            )
            v = hints.loaded(v, codes=e.quantized) if back else v
            pairs.append((v, a))
            used.append(e.read(v, a, d) if back else x)
        return self._with(treedef, pairs), treedef.unflatten(used)

    def after(self, hints: _xla_hints.Hints, first: Tree) -> Buffer:
        """The buffer written after the passes that write ``first``.

        Those passes read this buffer's old values (through ``g / denom``), and
        the new values overwrite the old ones in place: where XLA cannot order
        the two, it keeps a copy of the old ones (1 byte per parameter for
        8-bit codes). A leaf stored as computed is updated in the same fusion
        as ``first``, and is left alone.
        """
        treedef, leaves = self._leaves(first)
        pairs = []
        for v, a, e, d, b in leaves:
            pairs.append((v if e.stores_as_computed(d) else hints.after(v, b), a))
        return self._with(treedef, pairs)

    def codes_after(self, hints: _xla_hints.Hints, other: Tree, *, packed: bool) -> Buffer:
        """The buffer written after ``other`` (another buffer's new codes), at the leaves
        stored as 4-bit codes (``packed``) or as 8-bit codes, where the shapes match."""
        treedef, leaves = self._leaves(other)
        pairs = []
        for v, a, e, _, c in leaves:
            if e.quantized and e.codebook.packed == packed and jnp.shape(c) == jnp.shape(v):
                v = hints.after(v, c)
            pairs.append((v, a))
        return self._with(treedef, pairs)


def stored_encodings(
    values: Tree, absmax: Tree | None, like: Tree, *, real: bool, length_known: bool
) -> Tree:
    """:meth:`Encoding.of_stored` over a state's trees.

    ``like`` gives each parameter's shape, leaf by leaf in order (its
    containers may differ, as ``nnx.Param`` and ``nnx.OptVariable`` do): the
    parameters (``length_known``) or the state's ``nu`` (enough for every
    encoding but 4-bit codes).

    Raises:
      ValueError: if ``like`` has not one leaf per state leaf.
    """
    leaves, treedef = jax.tree.flatten(values)
    shapes = [tuple(jnp.shape(x)) for x in jax.tree.leaves(like)]
    if len(shapes) != len(leaves):
        raise ValueError(
            f"params has {len(shapes)} leaves but the optimizer state has {len(leaves)}: "
            "pass the parameters the optimizer was initialised with."
        )
    absmax = [None] * len(leaves) if absmax is None else treedef.flatten_up_to(absmax)
    found = [
        Encoding.of_stored(v, a, real=real, param_shape=shape, length_known=length_known)
        for v, a, shape in zip(leaves, absmax, shapes, strict=True)
    ]
    return treedef.unflatten(found)


def read_tree(values: Tree, absmax: Tree | None, encoding_tree: Tree, dtypes: Tree) -> Tree:
    """Every buffer of a tree read in ``dtypes`` (one per leaf), for the offline readers."""
    leaves, treedef = jax.tree.flatten(values)
    absmax = [None] * len(leaves) if absmax is None else treedef.flatten_up_to(absmax)
    rest = zip(treedef.flatten_up_to(encoding_tree), treedef.flatten_up_to(dtypes), strict=True)
    read = [e.read(v, a, d) for v, a, (e, d) in zip(leaves, absmax, rest, strict=True)]
    return treedef.unflatten(read)


def _unzip(treedef: Any, pairs: list[tuple]) -> tuple[Tree, Tree]:
    """Per-leaf ``(values, absmax)`` pairs as two trees of ``treedef``."""
    return tuple(treedef.unflatten([pair[i] for pair in pairs]) for i in (0, 1))


def is_encoding(x: Any) -> bool:
    return isinstance(x, Encoding)
