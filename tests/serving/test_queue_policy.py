"""[queue] in model.toml and the `timeout`/`priority` request parameters, decoded and applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shipyard.codecs.errors import ProtocolError
from shipyard.codecs.grpc import decode_infer_request
from shipyard.codecs.proto import grpc_service_pb2 as pb
from shipyard.codecs.v2 import decode_request, encode_request
from shipyard.errors import UsageError
from shipyard.serving.errors import ModelConfigError
from shipyard.serving.model_config import read_model_config
from shipyard.serving.queue_policy import QueuePolicy, Schedule


def v2_body(**parameters: Any) -> bytes:
    body, _ = encode_request({"x": np.ones((1, 4), np.float32)}, parameters=parameters)
    return body


def test_v2_json_and_grpc_decode_timeout_and_priority() -> None:
    decoded = decode_request(v2_body(timeout=20_000, priority=1))
    assert (decoded.timeout_us, decoded.priority) == (20_000, 1)
    plain = decode_request(v2_body())
    assert (plain.timeout_us, plain.priority) == (None, 0)
    assert decode_request(v2_body(timeout=0)).timeout_us is None  # 0: none, as in Triton
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    message.parameters["timeout"].int64_param = 5_000
    message.parameters["priority"].uint64_param = 2  # what tritonclient sends
    decoded = decode_infer_request(message)
    assert (decoded.timeout_us, decoded.priority) == (5_000, 2)


@pytest.mark.parametrize(
    "parameters",
    [{"timeout": -1}, {"timeout": 1.5}, {"timeout": "10"}, {"priority": True}, {"priority": -2}],
)
def test_invalid_schedule_parameters_are_one_line_400s(parameters: dict[str, object]) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_request(v2_body(**parameters))
    assert info.value.status == 400 and "\n" not in info.value.message
    assert "non-negative integer" in info.value.message


def test_the_policy_defaults_clamps_and_refuses() -> None:
    plain = QueuePolicy()
    assert plain.schedule("m", timeout_us=None, priority=0) == Schedule(1, None)
    assert plain.schedule("m", timeout_us=700, priority=0) == Schedule(1, 700)
    with pytest.raises(UsageError, match="no priority levels"):
        plain.schedule("m", timeout_us=None, priority=1)
    policy = QueuePolicy(default_timeout_us=1000, priority_levels=3, default_priority=2)
    assert policy.schedule("m", timeout_us=None, priority=0) == Schedule(2, 1000)
    assert policy.schedule("m", timeout_us=400, priority=1) == Schedule(1, 400)
    assert policy.schedule("m", timeout_us=9000, priority=3) == Schedule(3, 1000)  # never longer
    with pytest.raises(UsageError, match="levels 1 \\(highest\\) to 3"):
        policy.schedule("m", timeout_us=None, priority=4)
    assert QueuePolicy(priority_levels=2).schedule("m", timeout_us=None, priority=0).priority == 2
    fixed = QueuePolicy(default_timeout_us=1000, allow_timeout_override=False)
    with pytest.raises(UsageError, match="allow_timeout_override = false"):
        fixed.schedule("m", timeout_us=10, priority=0)


def test_model_toml_queue_table(tmp_path: Path) -> None:
    (tmp_path / "model.toml").write_text(
        "[queue]\ndefault_timeout_us = 50_000\npriority_levels = 2\ndefault_priority = 2\n"
    )
    queue = read_model_config(tmp_path).queue
    assert (queue.default_timeout_us, queue.priority_levels, queue.default_priority) == (
        50_000,
        2,
        2,
    )
    (tmp_path / "model.toml").write_text("[queue]\npriority_levels = 2\ndefault_priority = 3\n")
    with pytest.raises(ModelConfigError, match="default_priority"):
        read_model_config(tmp_path)
