"""The part of Triton Inference Server's `ModelConfig` schema that endofuse writes, for parsing config.pbtxt.

Field names, numbers and enum values are transcribed from Triton's public
`model_config.proto` (package `inference`). Parsing a config.pbtxt against
this schema with `google.protobuf.text_format` rejects what Triton rejects at
this level: unknown fields, misspelt enum values, wrong value types. Fields
endofuse never writes are left out, so a config using them fails here too.
"""
from __future__ import annotations

from functools import lru_cache

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from endofuse.errors import InvalidInputError

F = descriptor_pb2.FieldDescriptorProto
STRING, BOOL, INT32, INT64, UINT32, UINT64, ENUM, MESSAGE = (
    F.TYPE_STRING, F.TYPE_BOOL, F.TYPE_INT32, F.TYPE_INT64, F.TYPE_UINT32, F.TYPE_UINT64, F.TYPE_ENUM, F.TYPE_MESSAGE)
OPTIONAL, REPEATED = F.LABEL_OPTIONAL, F.LABEL_REPEATED

DATA_TYPES = ["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
              "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING",
              "TYPE_BF16"]
INSTANCE_KINDS = ["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]
INPUT_FORMATS = ["FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW"]

# message -> [(field name, number, type, label, type name for enums/messages)]
MESSAGES: dict[str, list[tuple]] = {
    "ModelTensorReshape": [("shape", 1, INT64, REPEATED, None)],
    "ModelInput": [("name", 1, STRING, OPTIONAL, None), ("data_type", 2, ENUM, OPTIONAL, "DataType"),
                   ("format", 3, ENUM, OPTIONAL, "ModelInput.Format"), ("dims", 4, INT64, REPEATED, None),
                   ("reshape", 5, MESSAGE, OPTIONAL, "ModelTensorReshape"), ("optional", 8, BOOL, OPTIONAL, None)],
    "ModelOutput": [("name", 1, STRING, OPTIONAL, None), ("data_type", 2, ENUM, OPTIONAL, "DataType"),
                    ("dims", 3, INT64, REPEATED, None), ("label_filename", 4, STRING, OPTIONAL, None),
                    ("reshape", 5, MESSAGE, OPTIONAL, "ModelTensorReshape")],
    "ModelInstanceGroup": [("name", 1, STRING, OPTIONAL, None), ("count", 2, INT32, OPTIONAL, None),
                           ("gpus", 3, INT32, REPEATED, None), ("kind", 4, ENUM, OPTIONAL, "ModelInstanceGroup.Kind"),
                           ("profile", 5, STRING, REPEATED, None)],
    "ModelDynamicBatching": [("preferred_batch_size", 1, INT32, REPEATED, None),
                             ("max_queue_delay_microseconds", 2, UINT64, OPTIONAL, None),
                             ("preserve_ordering", 3, BOOL, OPTIONAL, None)],
    "Accelerator": [("name", 1, STRING, OPTIONAL, None),
                    ("parameters", 2, MESSAGE, REPEATED, "Accelerator.ParametersEntry")],
    "ExecutionAccelerators": [("gpu_execution_accelerator", 1, MESSAGE, REPEATED, "Accelerator"),
                              ("cpu_execution_accelerator", 2, MESSAGE, REPEATED, "Accelerator")],
    "Graph": [("level", 1, INT32, OPTIONAL, None)],
    "Cuda": [("graphs", 1, BOOL, OPTIONAL, None), ("busy_wait_events", 2, BOOL, OPTIONAL, None)],
    "ModelOptimizationPolicy": [("graph", 1, MESSAGE, OPTIONAL, "Graph"), ("cuda", 3, MESSAGE, OPTIONAL, "Cuda"),
                                ("execution_accelerators", 4, MESSAGE, OPTIONAL, "ExecutionAccelerators")],
    "WarmupInput": [("data_type", 1, ENUM, OPTIONAL, "DataType"), ("dims", 2, INT64, REPEATED, None),
                    ("zero_data", 3, BOOL, OPTIONAL, None), ("random_data", 4, BOOL, OPTIONAL, None),
                    ("input_data_file", 5, STRING, OPTIONAL, None)],
    "ModelWarmup": [("name", 1, STRING, OPTIONAL, None), ("batch_size", 2, UINT32, OPTIONAL, None),
                    ("inputs", 3, MESSAGE, REPEATED, "ModelWarmup.InputsEntry"), ("count", 4, UINT32, OPTIONAL, None)],
    "ModelParameter": [("string_value", 1, STRING, OPTIONAL, None)],
    # ModelVersionPolicy's nested Latest/Specific messages, declared flat (text format names fields, not types)
    "ModelVersionPolicyLatest": [("num_versions", 1, UINT32, OPTIONAL, None)],
    "ModelVersionPolicySpecific": [("versions", 1, INT64, REPEATED, None)],
    "ModelVersionPolicy": [("latest", 1, MESSAGE, OPTIONAL, "ModelVersionPolicyLatest"),
                           ("specific", 3, MESSAGE, OPTIONAL, "ModelVersionPolicySpecific")],
    "ModelConfig": [("name", 1, STRING, OPTIONAL, None), ("platform", 2, STRING, OPTIONAL, None),
                    ("version_policy", 3, MESSAGE, OPTIONAL, "ModelVersionPolicy"),
                    ("max_batch_size", 4, INT32, OPTIONAL, None), ("input", 5, MESSAGE, REPEATED, "ModelInput"),
                    ("output", 6, MESSAGE, REPEATED, "ModelOutput"),
                    ("instance_group", 7, MESSAGE, REPEATED, "ModelInstanceGroup"),
                    ("default_model_filename", 8, STRING, OPTIONAL, None),
                    ("dynamic_batching", 11, MESSAGE, OPTIONAL, "ModelDynamicBatching"),
                    ("optimization", 12, MESSAGE, OPTIONAL, "ModelOptimizationPolicy"),
                    ("parameters", 14, MESSAGE, REPEATED, "ModelConfig.ParametersEntry"),
                    ("model_warmup", 16, MESSAGE, REPEATED, "ModelWarmup"), ("backend", 17, STRING, OPTIONAL, None)],
}
# map<key, value> fields are repeated nested *Entry messages with map_entry set
MAP_ENTRIES = {"Accelerator.ParametersEntry": (STRING, None), "ModelWarmup.InputsEntry": (MESSAGE, "WarmupInput"),
               "ModelConfig.ParametersEntry": (MESSAGE, "ModelParameter")}
NESTED_ENUMS = {"ModelInput.Format": INPUT_FORMATS, "ModelInstanceGroup.Kind": INSTANCE_KINDS}


def _type_name(name: str | None) -> str | None:
    return None if name is None else f".inference.{name}"


def _add_fields(message: descriptor_pb2.DescriptorProto, fields: list[tuple]) -> None:
    for name, number, kind, label, type_name in fields:
        field = message.field.add(name=name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = _type_name(type_name)


@lru_cache(maxsize=1)
def model_config_class():
    """The generated `inference.ModelConfig` message class for this schema subset."""
    proto = descriptor_pb2.FileDescriptorProto(name="endofuse_triton_model_config.proto", package="inference",
                                               syntax="proto3")
    data_type = proto.enum_type.add(name="DataType")
    for number, value in enumerate(DATA_TYPES):
        data_type.value.add(name=value, number=number)
    messages = {}
    for name, fields in MESSAGES.items():
        messages[name] = proto.message_type.add(name=name)
        _add_fields(messages[name], fields)
    for dotted, values in NESTED_ENUMS.items():
        owner, enum_name = dotted.split(".")
        enum = messages[owner].enum_type.add(name=enum_name)
        for number, value in enumerate(values):
            enum.value.add(name=value, number=number)
    for dotted, (value_type, value_type_name) in MAP_ENTRIES.items():
        owner, entry_name = dotted.split(".")
        entry = messages[owner].nested_type.add(name=entry_name)
        entry.options.map_entry = True
        _add_fields(entry, [("key", 1, STRING, OPTIONAL, None), ("value", 2, value_type, OPTIONAL, value_type_name)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def parse_model_config(text: str, source: str = "config.pbtxt"):
    """Parses config.pbtxt text; ValueError naming `source` and the line on any schema violation."""
    message = model_config_class()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise InvalidInputError(f"{source}: not a valid Triton ModelConfig: {exc}") from exc
    return message
