"""The closed parts of the Neuron SDK, stood in at their lowest call, so that neuronx-distributed's own
code (parallel layers, ModelBuilder, `shard_checkpoint`, NxDModel) runs here unchanged from its source.

What cannot run off a Neuron host, and what stands in for it:

- torch-xla's HLO generation (`torch_neuronx.xla_impl.trace.generate_hlo`): for ModelBuilder (v2, inputs by
  name) the stand-in runs the module once on the CPU with the example inputs and describes what the HLO would:
  the user inputs, the weights (the module's state-dict entries, which ModelBuilder never inlines) and the
  outputs. NxD Inference's ModelBuilder (v1, inputs by position) goes on to rewrite the HLO and compile it with
  neuronx-cc's weight-layout pass, which nothing here can stand for: its call is recorded and the compile stops
  there (HloGenerationReached). Every call is recorded.
- neuronx-cc (`libneuronxla.neuron_xla_compile`): records the flags and the platform target and returns a
  NEFF that is only a description of the call.
- The Neuron runtime's classes and ops (`torch.classes.neuron.SPMDModel` / `LayoutTransformation`,
  `torch.ops.neuron._parallel_load`): TorchScript-compatible stand-ins that record what is loaded where; they
  execute nothing.
- The kernels NxD Inference's Flux forward executes, as CPU code of the same meaning: the NKI attention
  (`nkilib`'s `attention_cte`), the RmsNorm custom call (`torch_neuronx.xla_impl.ops.RmsNorm`) and the
  layer-boundary markers (`xla_hlo_call` custom calls that pass their operands through).
- Modules imported at module level whose functions are never called for inference on CPU (torch-xla's
  runtime queries, the multiprocessing launcher, the other NKI kernels): anything not stood in above is a
  `Closed` placeholder that fails the test if it is ever called.

neuronx-distributed itself comes from its source (NXD_SOURCE, tests/model/nxd_cpu.py): its package
`__init__` imports NKI kernels, so the package is a bare module whose path is that source folder.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import os
import pickle
import re
import sys
import types
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List

import torch

from model.components import graph_weights, weights_layout

# What the DLC of SDK 2.31.1 has installed (neuron-flux-apis.md): ModelBuilder checks the major version.
TORCH_NEURONX_VERSION = "2.9.0.2.15.32035"


class HloGenerationReached(Exception):
    """A compile through NxD Inference reached torch-xla's HLO generation, the furthest it goes here: past it
    come HLO rewrites and neuronx-cc. Carries the layout of the weights the traced module takes."""

    def __init__(self, layout: dict):
        super().__init__("the compile reached torch-xla's HLO generation; neuronx-cc, past it, cannot run here")
        self.layout = layout


class ClosedCodeCalled(AssertionError):
    """A value of closed Neuron code that has no CPU stand-in was called."""


# Every use of closed code without a stand-in, by name: modules build some of it at import time (kernel
# tables, dataclass defaults), which is harmless; a test asserts that the work it checks adds none.
CLOSED_CODE_USED: list[str] = []


class _ClosedType(type):
    """Closed classes' own attributes (enum members, constants) are placeholders too."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _closed(f"{cls.__qualname__}.{name}")


def _closed(qualified_name: str) -> type:
    """A placeholder for a closed symbol: building it (as some modules do at import) gives an inert value
    and is recorded in CLOSED_CODE_USED; calling such a value fails."""

    def record(self: Any, *args: Any, **kwargs: Any) -> None:
        CLOSED_CODE_USED.append(qualified_name)

    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise ClosedCodeCalled(f"{qualified_name} is closed Neuron code with no CPU stand-in: it was called")

    def member(self: Any, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _closed(f"{qualified_name}().{name}")

    return _ClosedType(qualified_name.rsplit(".", 1)[-1], (), {
        "__qualname__": qualified_name, "__init__": record, "__call__": refuse, "__getattr__": member})


class ClosedModule(types.ModuleType):
    """A closed module: the attributes it is given, and a failing placeholder for any other."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        placeholder = _closed(f"{self.__name__}.{name}")
        setattr(self, name, placeholder)
        return placeholder


CLOSED_PACKAGES = ("torch_xla", "torch_neuronx", "libneuronxla", "neuronxcc", "nki", "nkilib")


class _ClosedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports of the closed packages, at any depth, give ClosedModules (packages, so submodules import)."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name.split(".")[0] not in CLOSED_PACKAGES:
            return None
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ClosedModule:
        return ClosedModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__path__ = []


def _kernel_decorator(name: str) -> Any:
    """An NKI kernel decorator (`nki.jit`, `nki_jit()`, `jit(platform_target=...)`), applied at import time
    to kernels inference on CPU never calls: the decorated kernel is a placeholder that fails if called."""

    def decorate(*args: Any, **kwargs: Any) -> Any:
        if args:
            return _closed(f"{name}({getattr(args[0], '__name__', args[0])})")
        return decorate

    return decorate


def _install(name: str, **attributes: Any) -> types.ModuleType:
    module = importlib.import_module(name)
    module.__dict__.update(attributes)
    return module


# --- what the HLO generation and the compiler produce, as NxD reads them --------------------------------


class MetaTensorType:
    USER_INPUT = 0
    INPUT_WEIGHT = 1
    INPUT_STATE = 2


@dataclass
class MetaTensor:
    type: int
    shape: list
    data_type: torch.dtype
    user_input_key: bytes = b""
    checkpoint_key: bytes = b""


@dataclass
class MetaNeff:
    """The metaneff NxD reads: input tensors (user inputs first, then weights), output tensors, aliases."""

    input_tensors: list = field(default_factory=list)
    output_tensors: list = field(default_factory=list)
    output_aliases_to: list = field(default_factory=list)
    serialized_graph_def: bytes = b""

    def SerializeToString(self) -> bytes:  # noqa: N802 - protobuf's name
        return pickle.dumps(self)

    def ParseFromString(self, data: bytes) -> None:  # noqa: N802 - protobuf's name
        self.__dict__.update(pickle.loads(data).__dict__)


@dataclass
class HloInstruction:
    id: int
    opcode: str
    parameter_number: int
    operand_ids: list = field(default_factory=list)
    called_computation_ids: list = field(default_factory=list)


@dataclass
class HloComputation:
    id: int
    instructions: list


@dataclass
class HloModule:
    """An entry computation whose parameters are the inputs and weights (no kernel calls)."""

    name: str
    computations: list
    entry_computation_id: int = 0

    def SerializeToString(self) -> bytes:  # noqa: N802 - protobuf's name
        return pickle.dumps(self)


class Flattener(torch.nn.Module):
    """torch_neuronx.xla_impl.structure.Flattener as NxDModel uses it: inputs (a list) in layout order."""

    def __init__(self, layout: tuple | list, exclude: list | None = None):
        super().__init__()
        self.layout = layout
        self.exclude = exclude

    def forward(self, inputs: List[torch.Tensor]) -> List[torch.Tensor]:
        excluded = set(self.exclude or ())
        return [inputs[index] for index in self.layout if index not in excluded]


class Packer(torch.nn.Module):
    """torch_neuronx.xla_impl.structure.Packer: the graph's outputs back in the traced structure."""

    def __init__(self, layout: Any, identifiers: list, constants: list):
        super().__init__()
        self.layout = layout
        self.identifiers = identifiers
        self.constants = constants

    def forward(self, outputs: List[torch.Tensor]) -> Any:
        return outputs[0] if self.layout == 0 else tuple(outputs[index] for index in self.layout)


@dataclass
class HloArtifacts:
    hlo_module: HloModule
    metaneff: MetaNeff
    flattener: Flattener
    packer: Packer
    weight_name_to_idx: dict


@dataclass
class NeuronSdk:
    """What the stood-in closed calls were asked to do, in order."""

    hlo_generations: list = field(default_factory=list)
    # The collectives the traced graphs hold, as (name, shape) per call, in the order they were traced.
    collectives: list = field(default_factory=list)
    compilations: list = field(default_factory=list)
    parallel_loads: list = field(default_factory=list)
    initialized: list = field(default_factory=list)

    def generate_hlo(self, model, example_inputs, *args, **options) -> HloArtifacts:
        if options.get("treat_inputs_as_kwargs"):
            return self._generate_hlo_of_named_inputs(model, example_inputs, **options)
        return self._stop_at_hlo_generation(model, example_inputs, *args, **options)

    def _stop_at_hlo_generation(self, model, example_inputs: tuple, input_output_aliases: dict,
                                **options) -> HloArtifacts:
        """NxD Inference's ModelBuilder (v1): the call is recorded, the compile ends here. ModelBuilder tears NxD's
        parallel state down once its HLOs are generated; ending its trace, the stand-in does that for it."""
        from neuronx_distributed.parallel_layers import parallel_state

        parallel_state.destroy_model_parallel()
        weights = graph_weights(model)
        self.hlo_generations.append({
            "model": model, "inputs": [(tuple(t.shape), t.dtype) for t in example_inputs],
            "weights": {name: (tuple(t.shape), t.dtype) for name, t in weights.items()},
            "input_output_aliases": input_output_aliases, **options,
        })
        raise HloGenerationReached(weights_layout(weights))

    def _generate_hlo_of_named_inputs(self, model, example_inputs, inline_weights_to_neff=True, return_weights=False,
                                      output_aliased_tensor=True, cpu_backend=False, preserve_parameters=False,
                                      enable_aliasing=False, treat_inputs_as_kwargs=False) -> HloArtifacts:  # fmt: skip
        if not isinstance(example_inputs, OrderedDict):
            raise TypeError("ModelBuilder passes its example inputs by name")
        with torch.no_grad():
            outputs = model(**example_inputs)
        packed = outputs if isinstance(outputs, tuple) else (outputs,)
        # The module's weights, each tensor once (NxD's AOT `master_weight` aliases are not weights of their own).
        weights = graph_weights(model)
        self.hlo_generations.append({
            "model": model, "inputs": {name: (tuple(t.shape), t.dtype) for name, t in example_inputs.items()},
            "weights": {name: (tuple(t.shape), t.dtype) for name, t in weights.items()},
            "cpu_backend": cpu_backend, "inline_weights_to_neff": inline_weights_to_neff,
            "outputs": [tuple(output.shape) for output in packed],
        })
        inputs = [MetaTensor(MetaTensorType.USER_INPUT, list(t.shape), t.dtype) for t in example_inputs.values()]
        inputs += [MetaTensor(MetaTensorType.INPUT_WEIGHT, list(t.shape), t.dtype, checkpoint_key=name.encode())
                   for name, t in weights.items()]
        parameters = [HloInstruction(index, "parameter", index) for index in range(len(inputs))]
        return HloArtifacts(
            hlo_module=HloModule(type(model).__name__, [HloComputation(0, parameters)]),
            metaneff=MetaNeff(input_tensors=inputs,
                              output_tensors=[MetaTensor(MetaTensorType.USER_INPUT, list(o.shape), o.dtype)
                                              for o in packed]),
            flattener=Flattener(tuple(range(len(example_inputs)))),
            packer=Packer(0 if not isinstance(outputs, tuple) else tuple(range(len(packed))), [], []),
            weight_name_to_idx={name: len(example_inputs) + index for index, name in enumerate(weights)},
        )

    # torch-xla's collectives while a graph is traced: each becomes an HLO op whose value nothing reads at
    # trace time, so the stand-ins only record it and give a tensor of the shape it would have.
    def all_reduce(self, reduce_type, inputs, scale=1.0, groups=None, pin_layout=True):
        self.collectives += [("all_reduce", tuple(tensor.shape)) for tensor in inputs]
        return inputs

    def all_gather(self, value, dim=0, groups=None, output=None, pin_layout=True):
        self.collectives.append(("all_gather", tuple(value.shape)))
        return torch.cat([value] * len(groups[0]), dim=dim)

    def reduce_scatter(self, reduce_type, input, scale, scatter_dim, shard_count, groups=None, output=None,
                       pin_layout=True):  # fmt: skip
        self.collectives.append(("reduce_scatter", tuple(input.shape)))
        return input.narrow(scatter_dim, 0, input.shape[scatter_dim] // shard_count)

    def neuron_xla_compile(self, module_bytes, compiler_flags, input_format="hlo", platform_target=None,
                           cache_key=None, retry_failed_compilation=False, lazy=False, use_cache=True,
                           cache_dir=None, work_dir=None) -> bytes:  # fmt: skip
        call = {"flags": compiler_flags, "platform_target": platform_target, "input_format": input_format,
                "work_dir": Path(work_dir) if work_dir is not None else None}
        self.compilations.append(call)
        return pickle.dumps({"neff_for": pickle.loads(module_bytes).name, **call})


# --- the kernels NxD Inference's Flux forward executes, in CPU code of the same meaning -----------------------


class RmsNorm(torch.autograd.Function):
    """torch_neuronx.xla_impl.ops.RmsNorm, the AwsNeuronRmsNorm custom call: x / sqrt(mean(x^2) + eps) * weight
    over `dim`, as diffusers' RMSNorm computes it."""

    @staticmethod
    def forward(ctx, hidden_states: torch.Tensor, weight: torch.Tensor, eps: float, dim: int) -> torch.Tensor:
        return hidden_states * torch.rsqrt(hidden_states.pow(2).mean(dim, keepdim=True) + eps) * weight


class AttentionCte:
    """nkilib's attention_cte (NKI attention for context encoding) as NxD Inference's Flux calls it: query, key and
    value as (batch x heads, tokens, head dim), no mask, scores scaled by `scale`, output in the query's layout.
    `attention_cte[2]` launches it on the two physical cores of an LNC 2 logical core; on CPU that is one call.
    The shapes of every call's query and key are recorded."""

    def __init__(self):
        self.shapes: list[tuple[tuple, tuple]] = []

    def __getitem__(self, grid: int) -> AttentionCte:
        return self

    def __call__(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float,
                 causal_mask: bool = True, tp_q: bool = False, tp_k: bool = False, tp_out: bool = False) -> torch.Tensor:
        if (causal_mask, tp_q, tp_k, tp_out) != (False, True, True, False):
            raise ClosedCodeCalled("attention_cte stands in for Flux's call only: no mask, every operand as "
                                   "(batch, tokens, head dim)")
        self.shapes.append((tuple(query.shape), tuple(key.shape)))
        return torch.nn.functional.scaled_dot_product_attention(query, key, value, scale=scale)


# NxD Inference's layer-boundary markers: custom calls that hand their operands through unchanged (they only tell
# the compiler where a layer starts and ends).
MODULE_MARKERS = ("AwsNeuronModuleMarkerStartForward", "AwsNeuronModuleMarkerEndForward")


class _HloOperand:
    """An operand of a function `xla_hlo_call` turns into an op, as far as the module markers use one."""

    def __init__(self, tensors: tuple):
        self.tensors = tensors

    @property
    def scribe(self) -> _HloOperand:
        return self

    def tuple(self, *operands: _HloOperand) -> _HloOperand:
        return _HloOperand(tuple(tensor for operand in operands for tensor in operand.tensors))

    def CustomCall(self, *operands: _HloOperand, custom_call_target: str) -> _HloOperand:  # noqa: N802 - HLO's name
        if custom_call_target not in MODULE_MARKERS:
            raise ClosedCodeCalled(f"custom call {custom_call_target} has no CPU stand-in")
        return self


def xla_hlo_call(emit_hlo: Any) -> Any:
    """torch_neuronx's decorator making an op of a function that emits HLO: here the op those functions mean."""

    def run(*tensors: torch.Tensor) -> Any:
        results = emit_hlo(*(_HloOperand((tensor,)) for tensor in tensors)).tensors
        return results[0] if len(results) == 1 else results

    return run


# torch-neuronx's documented override for compiling where no Neuron device is (vLLM Neuron's CPU compilation).
PLATFORM_TARGET_OVERRIDE = "NEURON_PLATFORM_TARGET_OVERRIDE"


def get_platform_target(compiler_args: str | list | None = None) -> str:
    """The target of `--target X` / `--target=X` in the compiler arguments, else the override; without
    either torch-neuronx asks the instance, and this is no Neuron host."""
    text = " ".join(compiler_args) if isinstance(compiler_args, list) else compiler_args or ""
    match = re.search(r"--target[= ](\S+)", text)
    if match is not None:
        return match.group(1)
    if PLATFORM_TARGET_OVERRIDE in os.environ:
        return os.environ[PLATFORM_TARGET_OVERRIDE]
    raise ClosedCodeCalled(f"get_platform_target() without --target or {PLATFORM_TARGET_OVERRIDE} asks the instance")


def get_torch_dtype(data_type: torch.dtype) -> torch.dtype:
    return data_type


@torch.jit.script
class SPMDModelStandIn:
    """torch.classes.neuron.SPMDModel: one NEFF for every rank. Records what would be loaded; runs nothing."""

    def __init__(self, neff: torch.Tensor, metaneff: torch.Tensor, local_ranks_size: int, world_size: int):
        self.neff = neff
        self.metaneff = metaneff
        self.local_ranks_size = local_ranks_size
        self.world_size = world_size
        self.start_rank = -1
        self.weights: List[Dict[str, torch.Tensor]] = []

    def initialize(self, states: List[Dict[str, torch.Tensor]], weights: List[Dict[str, torch.Tensor]],
                   start_rank: int) -> None:
        self.weights = weights
        self.start_rank = start_rank

    def forward(self, inputs: List[torch.Tensor]) -> List[torch.Tensor]:
        raise RuntimeError("a NEFF runs only on a NeuronCore")

    def forward_ranked(self, inputs: List[List[torch.Tensor]]) -> List[List[torch.Tensor]]:
        raise RuntimeError("a NEFF runs only on a NeuronCore")

    def forward_async(self, inputs: List[List[torch.Tensor]]) -> List[List[torch.Tensor]]:
        raise RuntimeError("a NEFF runs only on a NeuronCore")


@torch.jit.script
class LayoutTransformationStandIn:
    """torch.classes.neuron.LayoutTransformation: never built, as no priority model is compiled."""

    def __init__(self) -> None:
        pass

    def forward(self, weights: List[Dict[str, torch.Tensor]], on_device: bool) -> List[Dict[str, torch.Tensor]]:
        return weights


def spmd_model(neff: bytes, metaneff: bytes, local_ranks_size: int, world_size: int) -> SPMDModelStandIn:
    # TorchScript has no bytes type: the stand-in keeps them as uint8 tensors.
    return SPMDModelStandIn(torch.frombuffer(bytearray(neff), dtype=torch.uint8),
                            torch.frombuffer(bytearray(metaneff), dtype=torch.uint8), local_ranks_size, world_size)


_NEURON_OPS = None


def _register_neuron_ops(sdk: NeuronSdk) -> None:
    """torch.ops.neuron._parallel_load as TorchScript calls it from NxDModel.set_weights (registered once
    per process; it records into the current NeuronSdk)."""
    global _NEURON_OPS
    if _NEURON_OPS is None:
        _NEURON_OPS = torch.library.Library("neuron", "DEF")
        _NEURON_OPS.define("_parallel_load(Dict(str, Tensor)[] checkpoint) -> Dict(str, Tensor)[]")

        def parallel_load(checkpoint: list) -> list:
            _NEURON_OPS.sdk.parallel_loads.append(checkpoint)
            return checkpoint

        _NEURON_OPS.impl("_parallel_load", parallel_load, "CompositeExplicitAutograd")
    _NEURON_OPS.sdk = sdk


@contextlib.contextmanager
def installed(nxd_source: Path) -> Iterator[NeuronSdk]:
    """install() for the length of a block in this process: what it adds to the interpreter goes at the end,
    so later tests see no Neuron package, as on this machine."""
    modules, meta_path = set(sys.modules), list(sys.meta_path)
    override = os.environ.get(PLATFORM_TARGET_OVERRIDE)
    try:
        yield install(nxd_source)
    finally:
        for name in set(sys.modules) - modules:
            del sys.modules[name]
        sys.meta_path[:] = meta_path
        vars(torch.classes).pop("neuron", None)
        if override is None:
            os.environ.pop(PLATFORM_TARGET_OVERRIDE, None)
        else:
            os.environ[PLATFORM_TARGET_OVERRIDE] = override


def install(nxd_source: Path, world_size: int = 1) -> NeuronSdk:
    """Make the closed modules importable as stand-ins and neuronx_distributed importable from its source.

    Import diffusers and transformers first: transformers probes for torch_xla and must not see these.
    """
    import diffusers  # noqa: F401
    import transformers  # noqa: F401

    sdk = NeuronSdk()
    if not any(isinstance(finder, _ClosedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ClosedFinder())
    _install("torch_xla.core.xla_model", REDUCE_SUM="sum", REDUCE_MAX="max", REDUCE_MIN="min",
             xla_device=lambda: torch.device("cpu"), mark_step=lambda: None, all_reduce=sdk.all_reduce,
             all_gather=sdk.all_gather, reduce_scatter=sdk.reduce_scatter)
    _install("torch_xla.core.xla_env_vars", HOST_WORLD_SIZE="HOST_WORLD_SIZE")
    _install("torch_xla.runtime", global_ordinal=lambda: torch.distributed.get_rank(),
             world_size=lambda: world_size, local_process_count=lambda: world_size)
    _install("torch_xla.utils.serialization")
    _install("torch_xla.utils.utils")
    _install("torch_xla.distributed.xla_multiprocessing")
    _install("torch_neuronx", __version__=TORCH_NEURONX_VERSION)
    _install("torch_neuronx.utils", get_platform_target=get_platform_target)
    _install("torch_neuronx.utils.utils", get_platform_target=get_platform_target,
             SUPPORTED_TYPES=("trn1", "trn1n", "trn2", "inf2"))
    _install("torch_neuronx.xla_impl.trace", generate_hlo=sdk.generate_hlo, get_torch_dtype=get_torch_dtype,
             HloArtifacts=HloArtifacts)
    _install("torch_neuronx.xla_impl.structure", Flattener=Flattener, Packer=Packer)
    _install("torch_neuronx.proto.metaneff_pb2", MetaNeff=MetaNeff,
             MetaTensor=types.SimpleNamespace(Type=MetaTensorType))
    _install("torch_neuronx.pyhlo.hlo_pb2", HloModuleProto=HloModule)
    _install("torch_neuronx.pyhlo.xla_data_pb2")
    _install("torch_neuronx.contexts", disable_nrt_load=contextlib.nullcontext)
    _install("libneuronxla", neuron_xla_compile=sdk.neuron_xla_compile)
    for kernels in ("_pre_prod_kernels", "_private_kernels"):  # parallel_state tries the first, then the second
        _install(f"neuronxcc.nki.{kernels}.collectives", CollectivesConfig=_ContextParallelPairs)
    _install("neuronxcc.nki", jit=_kernel_decorator("neuronxcc.nki.jit"))
    _install("nki", jit=_kernel_decorator("nki.jit"))
    _install("torch_neuronx.xla_impl.ops", nki_jit=_kernel_decorator("torch_neuronx.xla_impl.ops.nki_jit"),
             RmsNorm=RmsNorm)
    _install("torch_neuronx.xla_impl.base", xla_hlo_call=xla_hlo_call)
    _install("torch_neuronx.xla_impl.custom_call_targets", **{marker: marker for marker in MODULE_MARKERS})
    _install("nkilib.core.attention.attention_cte", attention_cte=AttentionCte())
    # NxD Inference's ModelBuilder names the HLO's ops after the modules (metadata only) while it generates it,
    # saving and restoring torch-xla's IR debug flag around that.
    _install("torch_neuronx.experimental.profiler.v2_x.custom_op_name",
             hlo_debug=lambda add_var_names, monitor_modules_list: contextlib.nullcontext())
    ir_debug = [False]
    _install("torch_xla._XLAC", _get_ir_debug=lambda: ir_debug[0], _set_ir_debug=lambda on: ir_debug.__setitem__(0, on))
    torch.classes.neuron = types.SimpleNamespace(SPMDModel=spmd_model, LayoutTransformation=LayoutTransformationStandIn)
    _register_neuron_ops(sdk)
    if "neuronx_distributed" not in sys.modules:
        package = types.ModuleType("neuronx_distributed")
        package.__path__ = [str(nxd_source / "neuronx_distributed")]
        sys.modules["neuronx_distributed"] = package
    return sdk


class _ContextParallelPairs:
    """neuronxcc's CollectivesConfig as parallel_state uses it: ring-attention partners, read but unused at CP 1."""

    def __init__(self, replica_groups: list[list[int]]):
        self.rank_src_tgt_pairs = {rank: [] for group in replica_groups for rank in group}
