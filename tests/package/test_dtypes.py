"""The one dtype table, checked row by row against the libraries that define each name."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tritonclient.grpc.model_config_pb2 as triton_config
import tritonclient.grpc.service_pb2 as triton_pb
import tritonclient.utils as triton_utils
from google.protobuf.descriptor import FieldDescriptor
from onnx import helper

from shipyard.codecs.proto import grpc_service_pb2 as pb
from shipyard.codecs.proto import model_config_pb2 as our_config
from shipyard.errors import InputError, UsageError
from shipyard.package.dtypes import BY_NAME, BY_ONNX, BY_V2, DTYPES, Dtype, coerce
from shipyard.package.tensorspec import TensorSpec
from shipyard.serving.openapi_schemas import SCHEMAS

ROWS = pytest.mark.parametrize("row", DTYPES, ids=[d.name for d in DTYPES])

# What each protobuf scalar type holds: the oracle for the contents column.
_PROTO_NUMPY = {
    FieldDescriptor.CPPTYPE_BOOL: np.dtype(np.bool_),
    FieldDescriptor.CPPTYPE_INT32: np.dtype(np.int32),
    FieldDescriptor.CPPTYPE_INT64: np.dtype(np.int64),
    FieldDescriptor.CPPTYPE_UINT32: np.dtype(np.uint32),
    FieldDescriptor.CPPTYPE_UINT64: np.dtype(np.uint64),
    FieldDescriptor.CPPTYPE_FLOAT: np.dtype(np.float32),
    FieldDescriptor.CPPTYPE_DOUBLE: np.dtype(np.float64),
    FieldDescriptor.CPPTYPE_STRING: np.dtype(object),
}


def test_every_onnx_type_numpy_holds_is_a_row() -> None:
    plain = set()
    for value in onnx.TensorProto.DataType.values():
        if value == onnx.TensorProto.UNDEFINED:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(value)
        if dtype.type.__module__ == "numpy" and dtype.kind != "c":  # not ml_dtypes, not complex
            plain.add(value)
    assert set(BY_ONNX) == plain


def test_each_name_is_one_row() -> None:
    assert len(BY_NAME) == len(BY_V2) == len(BY_ONNX) == len({d.tf for d in DTYPES}) == 13
    assert len({d.triton for d in DTYPES}) == len(DTYPES)


@ROWS
def test_onnx_and_numpy_agree(row: Dtype) -> None:
    assert helper.tensor_dtype_to_np_dtype(row.onnx) == row.numpy
    assert helper.np_dtype_to_tensor_dtype(row.numpy) == row.onnx
    assert row.name == ("str" if row.numpy.kind == "O" else row.numpy.name)
    assert TensorSpec(name="x", dtype=row.name, shape=(-1,)).v2_datatype == row.v2


@ROWS
def test_tritonclient_agrees(row: Dtype) -> None:
    assert triton_utils.np_to_triton_dtype(row.numpy) == row.v2
    assert np.dtype(triton_utils.triton_to_np_dtype(row.v2)) == row.numpy
    for config in (triton_config, our_config):
        assert config.DataType.Name(config.DataType.Value(row.triton)) == row.triton


@ROWS
def test_binary_layout_is_little_endian_native_width(row: Dtype) -> None:
    if row.v2 == "BYTES":
        assert row.wire is None
        return
    assert row.wire is not None
    assert row.wire.itemsize == row.numpy.itemsize and row.wire.byteorder in "<|"
    assert row.wire == (np.dtype("u1") if row.v2 == "BOOL" else row.numpy.newbyteorder("<"))


@ROWS
def test_grpc_contents_field_holds_every_value(row: Dtype) -> None:
    for message in (pb.InferTensorContents, triton_pb.InferTensorContents):
        fields = message.DESCRIPTOR.fields_by_name
        if row.contents is None:
            assert row.v2 == "FP16" and not any(f.startswith("fp16") for f in fields)
            continue
        field = fields[row.contents]
        # protobuf 7 dropped FieldDescriptor.label for is_repeated (6.x has both or only label)
        repeated = getattr(field, "is_repeated", None)
        if repeated is None:
            repeated = field.label == FieldDescriptor.LABEL_REPEATED
        assert repeated
        assert _PROTO_NUMPY[field.cpp_type] == row.contents_numpy
    if row.contents_numpy is not None:
        assert np.can_cast(row.numpy, row.contents_numpy, casting="safe")


def test_openapi_enums_come_from_the_table() -> None:
    assert SCHEMAS["Datatype"]["enum"] == sorted(BY_V2)
    assert SCHEMAS["ConfigDataType"]["enum"] == sorted(d.triton for d in DTYPES)
    tf = SCHEMAS["TfTensorInfo"]["properties"]["dtype"]["enum"]
    assert sorted(tf) == sorted(d.tf for d in DTYPES) and "DT_HALF" in tf


@pytest.mark.parametrize(
    ("given", "dtype"),
    [
        (np.array([1, 2], np.int8), "int32"),
        (np.array([1, 2], np.int64), "float32"),  # small ints are exact in float32
        (np.array([1, 0], np.int64), "bool"),
        (np.array([1.5], np.float16), "float32"),
        (np.array([300], np.int64), "int16"),
    ],
)
def test_coerce_casts_where_no_value_changes(given: np.ndarray, dtype: str) -> None:
    cast = coerce(given, dtype, what="input 'x'")
    assert cast.dtype == BY_NAME[dtype].numpy
    np.testing.assert_array_equal(cast, given)


@pytest.mark.parametrize(
    ("given", "dtype"),
    [
        (np.array([0.5], np.float64), "float32"),
        (np.array([2**40 + 1], np.int64), "float32"),
        (np.array([300], np.int64), "int8"),
        (np.array([1.0], np.float32), "int64"),
        (np.array(["a"]), "float32"),
    ],
)
def test_coerce_refuses_what_would_change(given: np.ndarray, dtype: str) -> None:
    with pytest.raises(InputError) as info:
        coerce(given, dtype, what="input 'x'")
    message = str(info.value)
    assert message.startswith("input 'x' has dtype ") and f"the model expects {dtype}" in message
    assert "\n" not in message


def test_coerce_takes_text_and_names_its_error() -> None:
    text = coerce(np.array([b"caf\xc3\xa9", "plain"], dtype=object), "str", what="input 's'")
    assert text.tolist() == ["café", "plain"]
    with pytest.raises(UsageError, match=r"^e.npz: array 's' must hold strings") as info:
        coerce(np.zeros(2), "str", what="e.npz: array 's'", error=UsageError)
    assert type(info.value) is UsageError
    with pytest.raises(InputError, match="not valid UTF-8"):
        coerce(np.array([b"\xff"], dtype=object), "str", what="input 's'")
