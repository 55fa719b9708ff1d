"""What TensorRT's ONNX parser accepts, checked statically on CPU, and the int32 codes boundary.

TensorRT (10.x) runs the graphs under these constraints, which `tensorrt_problems` checks without
TensorRT or a GPU:
- every op is in TENSORRT_ONNX_OPS (the ops of TensorRT's ONNX operator support list that these
  graphs can contain, written down here from onnx-tensorrt's operators table for TensorRT 10);
- no float64, string or complex tensors; float tensors fp32 / fp16 / bf16;
- graph inputs and outputs use no int64: token ids cross the boundary as int32 (prepare_for_tensorrt
  casts them; runtimes.trt converts int32 <-> int64 on the host, the codebook has < 2**31 codes);
- int64 inside the graph only in shape arithmetic and ops TensorRT 10 runs in int64
  (INT64_OPS), and int64 constants that fit in int32;
- ArgMax / ArgMin with select_last_index = 0 (TensorRT has no "last index" mode);
- inputs with a known rank, every dimension fixed or symbolic (optimization profiles cover them);
- opset 9..20.
"""

from __future__ import annotations

from typing import Any

TENSORRT_ONNX_OPS: frozenset[str] = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil
    Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
    DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
    GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual
    GridSample GroupNormalization HardSigmoid HardSwish Identity If InstanceNormalization IsInf IsNaN
    LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN MatMul Max MaxPool Mean Min
    Mod Mul Neg NonZero Not OneHot Or Pad Pow PRelu QuantizeLinear RandomNormal RandomNormalLike
    RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
    ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
    ReverseSequence RoiAlign Round ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh
    Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu
    Tile TopK Transpose Trilu Unsqueeze Where Xor
    """.split()
)

# Ops that TensorRT 10 runs with int64 data (shape arithmetic, index bookkeeping, casts), or whose
# int64 inputs are shape / axes / size parameters (Split sizes, Pad pads, Resize sizes, Reduce axes).
INT64_OPS: frozenset[str] = frozenset(
    """
    ArgMax ArgMin Cast Concat Constant ConstantOfShape Equal Expand Gather Greater Less Max Min Add Sub
    Mul Div Range ReduceProd Reshape Shape Slice Squeeze Unsqueeze Where Identity Tile
    Split Pad Resize TopK ReduceMean ReduceSum ReduceMax ReduceMin ReduceL2 ReduceSumSquare CumSum OneHot
    """.split()
)

MIN_OPSET, MAX_OPSET = 9, 20
FLOAT_TYPES = {1, 10, 16}  # float32, float16, bfloat16
INT64, INT32 = 7, 6
FORBIDDEN_TYPES = {11: "float64", 8: "string", 14: "complex64", 15: "complex128"}
INT32_MAX = 2**31 - 1
CODES_NAME = "codes"


def tensorrt_problems(proto: Any) -> list[str]:
    """Why TensorRT's ONNX parser would reject or mis-run this model (empty: compatible)."""
    import onnx
    from onnx import numpy_helper

    problems: list[str] = []
    opset = next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), None)
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        problems.append(f"opset {opset} is outside TensorRT's {MIN_OPSET}..{MAX_OPSET}")
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    types: dict[str, int] = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        types[value.name] = value.type.tensor_type.elem_type
    for tensor in inferred.graph.initializer:
        types[tensor.name] = tensor.data_type
        if tensor.data_type == INT64 and tensor.name:
            values = numpy_helper.to_array(tensor)
            if values.size and (values.max() > INT32_MAX or values.min() < -INT32_MAX - 1):
                problems.append(f"int64 constant {tensor.name} holds values outside int32")
    for value in list(proto.graph.input) + list(proto.graph.output):
        elem_type = value.type.tensor_type.elem_type
        if elem_type == INT64:
            problems.append(f"graph I/O {value.name} is int64; cast it to int32 at the boundary (prepare_for_tensorrt)")
        dims = value.type.tensor_type.shape.dim
        if not value.type.tensor_type.HasField("shape"):
            problems.append(f"graph I/O {value.name} has unknown rank; TensorRT needs the rank for profiles")
        for axis, dim in enumerate(dims):
            if not dim.HasField("dim_param") and not (dim.HasField("dim_value") and dim.dim_value > 0):
                problems.append(f"graph I/O {value.name} axis {axis} is neither fixed nor named")
    for name, elem_type in types.items():
        if elem_type in FORBIDDEN_TYPES:
            problems.append(f"tensor {name} is {FORBIDDEN_TYPES[elem_type]}, which TensorRT does not support")
    for node in inferred.graph.node:
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"node {node.name}: custom domain {node.domain!r} needs a TensorRT plugin")
            continue
        if node.op_type not in TENSORRT_ONNX_OPS:
            problems.append(f"node {node.name}: op {node.op_type} is not in TensorRT's ONNX op support list")
        int64_tensors = [name for name in list(node.input) + list(node.output) if name and types.get(name) == INT64]
        if int64_tensors and node.op_type not in INT64_OPS:
            problems.append(f"node {node.name}: {node.op_type} on int64 tensors ({', '.join(int64_tensors)})")
        if node.op_type in ("ArgMax", "ArgMin"):
            attributes = {a.name: a for a in node.attribute}
            if "select_last_index" in attributes and attributes["select_last_index"].i != 0:
                problems.append(f"node {node.name}: {node.op_type} select_last_index=1 is not supported by TensorRT")
    return problems


def prepare_for_tensorrt(proto: Any) -> Any:
    """A copy whose int64 `codes` input / output are int32 at the graph boundary (Casts inside)."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    for value in graph.input:
        if value.name == CODES_NAME and value.type.tensor_type.elem_type == INT64:
            value.type.tensor_type.elem_type = INT32
            wide = f"{CODES_NAME}_int64"
            for node in graph.node:
                node.input[:] = [wide if name == CODES_NAME else name for name in node.input]
            graph.node.insert(
                0, helper.make_node("Cast", [CODES_NAME], [wide], name="/boundary/codes_to_int64", to=INT64)
            )
    for value in graph.output:
        if value.name == CODES_NAME and value.type.tensor_type.elem_type == INT64:
            value.type.tensor_type.elem_type = INT32
            wide = f"{CODES_NAME}_int64"
            for node in graph.node:
                node.output[:] = [wide if name == CODES_NAME else name for name in node.output]
            graph.node.append(helper.make_node("Cast", [wide], [CODES_NAME], name="/boundary/codes_to_int32", to=INT32))
    onnx.checker.check_model(model)
    return model
