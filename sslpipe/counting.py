"""Count what a piece of torch code asks of a GPU, on the CPU: kernels, bytes, host syncs, launches.

    with DispatchCounter(roots=[model, optimizer, *batch.views]) as counted:
        step()
    counted.kernels, counted.bytes, counted.syncs, counted.launches

Timings on a shared 2-core machine say little about a GPU; these counts are deterministic and
are what sets a GPU's pace where the math is light: each kernel dispatched is a launch, each byte
it reads or writes crosses the device memory, each host synchronisation stalls the queue. A
`TorchDispatchMode` sees every aten op (the backward's too) with its tensors; a `TorchFunctionMode`
around it sees what the dispatcher does not (`tolist`, `numpy`, how a tensor was created).

Which tensors live on "the device": the `roots` (a module's parameters and buffers, an optimizer's
state, the batch), anything computed from one, and what a factory creates with an explicit
`device=` (or `*_like` of a device tensor). Everything else was made on the host: `torch.tensor`
of Python data, `torch.randperm(n)`, `torch.from_numpy`. Counted as host synchronisations, each
under its name in `syncs`:

- reading a device tensor on the host: `.item()`, `bool(t)`, `int(t)`, `float(t)` (one
  `_local_scalar_dense` each), `.tolist()`, `.numpy()`, `.cpu()`;
- ops whose output size depends on the data: `nonzero`, `masked_select`, boolean-mask indexing
  (`x[mask]`, `x[mask] = v`), `unique`, `repeat_interleave` without an output size;
- `torch.tensor(data, device=...)` (a copy from pageable memory) and moving a host tensor to the
  device without `non_blocking=True` (`.to(device)`, `.cuda()`).

On CPU tensors `.to(device)` of a device tensor cannot be told from a copy back to the host, so it
is not counted. Bytes are, per kernel, the bytes of its tensor arguments and results (a broadcast
input counts its distinct elements once); a fused GPU kernel may touch fewer, a kernel that
re-reads its input more. `launches` estimates CUDA launches: one per kernel, except that a
`_foreach_*` op over many tensors is split by `multi_tensor_apply` into launches of at most
110/64/48/36/30 tensors (by the number of tensor lists) and 320 blocks of 65,536 elements.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

aten = torch.ops.aten

NO_KERNEL = {aten._local_scalar_dense.default, aten.lift_fresh.default, aten.detach.default,
             aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default,
             aten.new_empty.default, aten.new_empty_strided.default, aten._unsafe_view.default,
             aten.set_.source_Storage_storage_offset, aten.resize_.default}
DATA_DEPENDENT = {"nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_dim",
                  "unique_consecutive", "masked_scatter", "nonzero_static"}
HOST_READS = {"tolist", "numpy", "cpu"}
FACTORIES = {"tensor", "as_tensor", "randperm", "arange", "zeros", "ones", "empty", "full", "rand", "randn",
             "randint", "linspace", "logspace", "eye", "scalar_tensor"}
# multi_tensor_apply (ATen/native/cuda/MultiTensorApply.cuh): tensors per launch by list depth.
FOREACH_TENSORS = {1: 110, 2: 64, 3: 48, 4: 36, 5: 30}
FOREACH_BLOCKS, FOREACH_CHUNK = 320, 65536


@dataclass
class Counts:
    """What a region dispatched: kernels (`ops` by name), estimated CUDA `launches`, `bytes` read
    and written by the kernels (`bytes_by_op` by name), and host synchronisations by kind (`syncs`)."""

    kernels: int = 0
    launches: int = 0
    bytes: int = 0
    ops: Counter = field(default_factory=Counter)
    bytes_by_op: Counter = field(default_factory=Counter)
    syncs: Counter = field(default_factory=Counter)

    @property
    def sync_count(self) -> int:
        return sum(self.syncs.values())


class DispatchCounter:
    """A context manager counting the kernels, bytes, launches and host syncs of what runs inside.

    `roots`: tensors, modules (their parameters and buffers) and optimizers (their parameters and
    state) that stand for device memory. The counts accumulate in `self.counts` (also reachable
    as attributes: `counter.kernels`).
    """

    def __init__(self, roots: Iterable = ()):
        self.counts = Counts()
        self._device = WeakIdKeyDictionary()  # tensor -> True when it lives on the device
        for tensor in _tensors_of(roots):
            self._device[tensor] = True
        self._modes = (_HostSide(self), _Kernels(self))

    def __getattr__(self, name):
        return getattr(self.__dict__["counts"], name)

    def __enter__(self) -> DispatchCounter:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def on_device(self, tensor) -> bool:
        return isinstance(tensor, torch.Tensor) and tensor in self._device

    def mark(self, value, on_device: bool) -> None:
        for tensor in tree_flatten(value)[0]:
            if isinstance(tensor, torch.Tensor):
                if on_device:
                    self._device[tensor] = True
                else:
                    self._device.pop(tensor, None)

    def sync(self, kind: str) -> None:
        self.counts.syncs[kind] += 1


class _HostSide(TorchFunctionMode):
    """What the dispatcher does not show: reads to the host, and how tensors are created."""

    def __init__(self, counter: DispatchCounter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        counter = self.counter
        source = args[0] if args else None
        if name in HOST_READS and counter.on_device(source):
            counter.sync(name)
        moved = (name in ("to", "cuda") and isinstance(source, torch.Tensor)
                 and not counter.on_device(source) and _moves_to_device(name, args[1:], kwargs))
        if moved and not kwargs.get("non_blocking", False):
            counter.sync("host-to-device copy")
        out = func(*args, **kwargs)
        if name in FACTORIES and isinstance(out, torch.Tensor):
            explicit = kwargs.get("device") is not None
            if name in ("tensor", "as_tensor") and explicit:
                counter.sync(f"torch.{name}(..., device=)")
            counter.mark(out, explicit)
        elif moved or (name.endswith("_like") and counter.on_device(source)):
            counter.mark(out, True)
        return out


def _moves_to_device(name: str, args, kwargs) -> bool:
    if name == "cuda":
        return True
    targets = [*args, kwargs.get("device"), kwargs.get("other")]
    return any(isinstance(t, (torch.device, str, torch.Tensor, int)) and not isinstance(t, bool)
               for t in targets if t is not None and not isinstance(t, torch.dtype))


class _Kernels(TorchDispatchMode):
    """Every aten op: kernels, bytes, launches, data-dependent syncs; device-ness flows to results."""

    def __init__(self, counter: DispatchCounter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        counter, counts = self.counter, self.counter.counts
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on_device = any(counter.on_device(t) for t in inputs)
        name = func._schema.name.split("::")[-1]
        if on_device and (name in DATA_DEPENDENT or _bool_indexing(func, args)
                          or (name == "repeat_interleave" and kwargs.get("output_size") is None
                              and len(args) > 1 and isinstance(args[1], torch.Tensor))):
            counter.sync(name)
        if func is aten._local_scalar_dense.default and on_device:
            counter.sync("item")
        out = func(*args, **kwargs)
        if on_device:
            counter.mark(out, True)
        if func in NO_KERNEL or _is_view(func):
            return out
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        counts.kernels += 1
        counts.ops[name] += 1
        moved = sum(_span_bytes(t) for t in inputs) + sum(_span_bytes(t) for t in outputs)
        counts.bytes += moved
        counts.bytes_by_op[name] += moved
        counts.launches += _foreach_launches(args) if name.startswith("_foreach_") else 1
        return out


def _is_view(func) -> bool:
    return any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)


def _bool_indexing(func, args) -> bool:
    if func not in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
        return False
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


def _span_bytes(t: torch.Tensor) -> int:
    """The bytes of the distinct elements a tensor view covers (a broadcast dim counts once)."""
    distinct = math.prod(size for size, stride in zip(t.shape, t.stride()) if stride != 0)
    return distinct * t.element_size()


def _foreach_launches(args) -> int:
    lists = [a for a in args if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)]
    if not lists:
        return 1
    tensors = lists[0]
    per_launch = FOREACH_TENSORS.get(len(lists), 30)
    chunks = sum(max(1, -(-t.numel() // FOREACH_CHUNK)) for t in tensors)
    return max(-(-len(tensors) // per_launch), -(-chunks // FOREACH_BLOCKS))


def _tensors_of(roots) -> Iterable[torch.Tensor]:
    for root in roots:
        if isinstance(root, torch.Tensor):
            yield root
        elif isinstance(root, torch.nn.Module):
            yield from root.parameters()
            yield from root.buffers()
        elif isinstance(root, torch.optim.Optimizer):
            for group in root.param_groups:
                yield from group["params"]
            for state in root.state.values():
                yield from (v for v in state.values() if isinstance(v, torch.Tensor))
        else:
            yield from (t for t in tree_flatten(root)[0] if isinstance(t, torch.Tensor))


@dataclass
class CompiledCounts:
    """What inductor generated for one call of a compiled function on the CPU backend: `kernels`
    (`torch._inductor.metrics.generated_kernel_count`), and `bytes` estimated from the generated
    code (see `compiled_counts`), with `loop_bytes` per parallel loop; `compile_s` the first call's
    wall time, compilation included."""

    kernels: int
    bytes: int
    loop_bytes: list[int]
    compile_s: float


def compiled_counts(compiled, *args) -> tuple[object, CompiledCounts]:
    """Call `compiled` (a `torch.compile`d function, not yet called on these shapes) on `args`;
    returns its result and what its generated code counts.

    Bytes are estimated from the C++ inductor writes for the CPU (its own `num_bytes_accessed`
    stays 0 there): each kernel function is a sequence of parallel loops (`#pragma omp for` /
    `single`); a loop counts the full size of every distinct buffer it names, once (an in-out
    buffer twice: read and written), and an extern kernel (a library call) its buffer arguments.
    Sizes come from the wrapper's allocations and the graph's inputs. A buffer read by several
    loops counts in each; on a GPU, inductor's Triton kernels are cut differently, so the bytes
    say what the graph moves, not what a GPU kernel list will be.
    """
    import time

    from torch._inductor import metrics
    from torch._inductor.utils import run_and_get_code

    metrics.reset()
    started = time.perf_counter()
    result, sources = run_and_get_code(compiled, *args)
    elapsed = time.perf_counter() - started
    loops = [b for source in sources for b in _loop_bytes(source)]
    return result, CompiledCounts(metrics.generated_kernel_count, sum(loops), loops, elapsed)


_DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8,
                "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1}
_SHAPE, _STRIDE = r"\(([\d, ]*)\)", r"\([\d, ]*\)"


def _loop_bytes(source: str) -> list[int]:
    """Per parallel loop of the inductor CPU wrapper `source`, the bytes of the buffers it names."""
    import re

    sizes: dict[str, int] = {}  # buffer or input name -> bytes of its view
    dtypes: dict[str, int] = {}
    for name, shape, dtype in re.findall(rf"(\w+) = rand_strided\({_SHAPE}, {_STRIDE}.*?dtype=torch\.(\w+)",
                                         source):
        sizes[name], dtypes[name] = math.prod(_ints(shape)) * _DTYPE_BYTES[dtype], _DTYPE_BYTES[dtype]
    call = source[source.index("def call("):] if "def call(" in source else source
    for line in call.splitlines():
        line = line.strip()
        if m := re.match(rf"(\w+) = empty_strided_\w+\({_SHAPE}, {_STRIDE}, torch\.(\w+)", line):
            size = _DTYPE_BYTES[m[3]]
            sizes[m[1]], dtypes[m[1]] = math.prod(_ints(m[2])) * size, size
        elif m := re.match(rf"(\w+) = reinterpret_tensor\((\w+), {_SHAPE}", line):
            size = dtypes.get(m[2], 4)
            sizes[m[1]], dtypes[m[1]] = math.prod(_ints(m[3])) * size, size
        elif m := re.match(r"(\w+) = (\w+); del \w+\s+# reuse", line):
            sizes[m[1]], dtypes[m[1]] = sizes.get(m[2], 0), dtypes.get(m[2], 4)
    loops = []
    kernels = re.findall(r"(\w+) = async_compile\.cpp_pybinding\(\[.*?\], r'''(.*?)'''", source, flags=re.S)
    for name, text in kernels:
        signature = re.search(r"kernel\((.*?)\)\s*\{", text, flags=re.S)
        params = re.findall(r"(\w+)\s*(?:,|$)", signature[1]) if signature else []
        called = re.search(rf"\b{name}\(([^)]*)\)", call)
        if not called:
            continue
        arguments = dict(zip(params, (a.strip() for a in called[1].split(","))))
        blocks = re.split(r"#pragma omp (?:for|single)", text)
        for block in blocks[1:] if len(blocks) > 1 else blocks:
            names = set(re.findall(r"\b((?:in_out|in|out)_ptr\d+)\b", block))
            loops.append(sum(sizes.get(arguments.get(p, ""), 0) * (2 if p.startswith("in_out") else 1)
                             for p in names))
    for args in re.findall(r"extern_kernels\.\w+\((.*?)\)\n", call):
        loops.append(sum(sizes.get(a.split("=")[-1].strip(), 0) for a in args.split(",")))
    return loops


def _ints(shape: str) -> list[int]:
    return [int(s) for s in shape.replace(" ", "").split(",") if s]
