"""Make a one-image ONNX graph batch-dynamic by running it in an ONNX `Loop` over the batch dimension.

torchvision's detectors (and Mask R-CNN) loop over images in Python, so a traced graph bakes in the batch
size it was traced with. Exporting the model for one image and wrapping that graph in a Loop gives a graph
that takes any N and is batch-invariant by construction: image i goes through exactly the nodes it would
go through alone.

    images [N, ...] --Loop(i < N): Gather(images, [i]) -> one-image nodes -> Squeeze(0)--> outputs [N, ...]

Mask R-CNN (or any model exported for one image) can reuse `batch_loop` as is.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

_PREFIX = "one_image/"  # names inside the loop body, so none can shadow an outer-scope name


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a value everywhere in `graph`, nested subgraphs (If/Loop bodies) included."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _rename(attribute.g, old, new)
            for subgraph in attribute.graphs:
                _rename(subgraph, old, new)
    for value in list(graph.output) + list(graph.input):
        if value.name == old:
            value.name = new


def set_output_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """Write known static output shapes (the exporter leaves sliced dimensions symbolic)."""
    for value in model.graph.output:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            del dims[:]
            for size in shapes[value.name]:
                dims.add().dim_value = int(size)


def batch_loop(single: onnx.ModelProto, batch_dim: str = "N") -> onnx.ModelProto:
    """The model `single` (one input [1, ...], outputs [1, ...]) applied to every item of an [N, ...] input.

    Outputs keep their names, element types and per-item shapes, with the leading 1 replaced by `batch_dim`.
    Initializers move to the outer graph (the body reads them from the enclosing scope), so the file holds
    each weight once.
    """
    graph = single.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"batch_loop needs a graph with one input, got {[v.name for v in inputs]}")
    image_input = inputs[0]
    input_name = image_input.name
    output_names = [value.name for value in graph.output]
    for value in graph.output:
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].dim_value != 1:
            raise ValueError(f"output {value.name!r} must have a leading dimension of 1 (one image)")

    body = onnx.GraphProto()
    body.CopyFrom(graph)
    del body.initializer[:]
    del body.input[:]
    del body.output[:]
    del body.value_info[:]
    _rename(body, input_name, _PREFIX + input_name)
    for name in output_names:
        _rename(body, name, _PREFIX + name)

    iteration, cond_in, cond_out = _PREFIX + "iteration", _PREFIX + "cond_in", _PREFIX + "cond_out"
    index = _PREFIX + "index"
    head = [
        helper.make_node(
            "Constant", [], [_PREFIX + "axis0"], value=helper.make_tensor("axis0", TensorProto.INT64, [1], [0])
        ),
        helper.make_node("Unsqueeze", [iteration, _PREFIX + "axis0"], [index]),
        # Gather with a [1]-shaped index keeps the batch axis: [1, ...], what the one-image graph expects.
        helper.make_node("Gather", [input_name, index], [_PREFIX + input_name], axis=0),
    ]
    tail = [helper.make_node("Identity", [cond_in], [cond_out])]
    tail += [
        helper.make_node("Squeeze", [_PREFIX + name, _PREFIX + "axis0"], [_PREFIX + name + "/item"])
        for name in output_names
    ]
    nodes = [*head, *body.node, *tail]
    del body.node[:]
    body.node.extend(nodes)
    body.name = "one_image"
    body.input.extend(
        [
            helper.make_tensor_value_info(iteration, TensorProto.INT64, []),
            helper.make_tensor_value_info(cond_in, TensorProto.BOOL, []),
        ]
    )
    body.output.append(helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []))
    item_types = {}
    for value in graph.output:
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim[1:]]
        item_types[value.name] = (tensor.elem_type, shape)
        body.output.append(helper.make_tensor_value_info(_PREFIX + value.name + "/item", tensor.elem_type, shape))

    batch_input = onnx.ValueInfoProto()
    batch_input.CopyFrom(image_input)
    batch_input.type.tensor_type.shape.dim[0].Clear()
    batch_input.type.tensor_type.shape.dim[0].dim_param = batch_dim
    outer_nodes = [
        helper.make_node("Shape", [input_name], ["loop/shape"]),
        helper.make_node("Constant", [], ["loop/zero"], value=helper.make_tensor("zero", TensorProto.INT64, [], [0])),
        helper.make_node("Gather", ["loop/shape", "loop/zero"], ["loop/trip_count"], axis=0),
        helper.make_node("Constant", [], ["loop/cond"], value=helper.make_tensor("cond", TensorProto.BOOL, [], [1])),
        helper.make_node("Loop", ["loop/trip_count", "loop/cond"], output_names, name="batch_loop", body=body),
    ]
    outputs = [
        helper.make_tensor_value_info(name, elem, [batch_dim, *shape]) for name, (elem, shape) in item_types.items()
    ]
    outer = helper.make_graph(
        outer_nodes, graph.name or "batched", [batch_input], outputs, initializer=list(graph.initializer)
    )
    model = helper.make_model(
        outer,
        opset_imports=list(single.opset_import),
        producer_name=single.producer_name,
        producer_version=single.producer_version,
    )
    model.ir_version = single.ir_version
    return model
