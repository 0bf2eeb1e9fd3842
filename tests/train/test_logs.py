import json
import struct

import jax.numpy as jnp
import numpy as np
import pytest
import tqdm.auto
from tensorboardX.proto import event_pb2

from qajax.errors import DataError
from qajax.train.logs import METRICS_FILE, MetricLogger, read_metrics


def _log(workdir, steps, **kwargs):
    with MetricLogger(workdir, tensorboard=False, progress=False, **kwargs) as logger:
        for step in steps:
            logger.write(step, {"loss": 1.0 / step})


def _steps(workdir):
    return [record["step"] for record in read_metrics(workdir / METRICS_FILE)]


def _events(event_dir):
    """Events from TFRecord framing (u64 length, u32 crc, data, u32 crc): tensorboard itself is not installed."""
    events = []
    for path in sorted(event_dir.iterdir()):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            events.append(event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length]))
            offset += 12 + length + 4
    return events


def test_values_round_trip_as_python_numbers(tmp_path):
    metrics = {
        "loss": jnp.asarray(0.25, jnp.float32),
        "train/grad_norm": np.float32(1.5),
        "eval/f1": np.float64(88.125),
        "train/nonfinite_steps": jnp.asarray(2, jnp.int32),
        "examples_per_sec": 12.5,
    }
    with MetricLogger(tmp_path, tensorboard=False, progress=False) as logger:
        returned = logger.write(3, metrics)
    expected = {
        "step": 3,
        "loss": 0.25,
        "train/grad_norm": 1.5,
        "eval/f1": 88.125,
        "train/nonfinite_steps": 2,
        "examples_per_sec": 12.5,
    }
    (record,) = read_metrics(tmp_path / METRICS_FILE)
    assert record == returned == expected
    assert {key: type(value) for key, value in record.items()} == {key: type(v) for key, v in expected.items()}
    assert {key: type(value) for key, value in returned.items()} == {key: type(v) for key, v in expected.items()}


def test_keys_are_sorted_after_step(tmp_path):
    with MetricLogger(tmp_path, tensorboard=False, progress=False) as logger:
        logger.write(1, {"train/loss": 1.0, "eval/f1": 2.0, "loss": 3.0, "learning_rate": 4.0})
    line = (tmp_path / METRICS_FILE).read_text().splitlines()[0]
    keys = [key for key, _ in json.loads(line, object_pairs_hook=list)]
    assert keys == ["step", "eval/f1", "learning_rate", "loss", "train/loss"]


def test_resume_drops_lines_after_the_checkpoint_step(tmp_path):
    _log(tmp_path, range(1, 11))
    _log(tmp_path, [7, 8], resume_step=6)
    assert _steps(tmp_path) == [1, 2, 3, 4, 5, 6, 7, 8]
    uninterrupted = tmp_path / "uninterrupted"
    _log(uninterrupted, range(1, 9))
    assert (tmp_path / METRICS_FILE).read_text() == (uninterrupted / METRICS_FILE).read_text()


@pytest.mark.parametrize("resume_step", [None, 2, 3])
def test_torn_final_line_is_dropped(tmp_path, resume_step):
    _log(tmp_path, [1, 2, 3])
    with open(tmp_path / METRICS_FILE, "a") as f:
        f.write('{"step": 4, "lo')  # killed in the middle of a write
    assert _steps(tmp_path) == [1, 2, 3]
    _log(tmp_path, [4], resume_step=resume_step)
    assert _steps(tmp_path) == [step for step in (1, 2, 3) if resume_step is None or step <= resume_step] + [4]


def test_malformed_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo\n{"step": 3, "loss": 0.5}\n')
    with pytest.raises(DataError, match=rf"{path}.*line 2"):
        read_metrics(path)
    path.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match="line 2"):
        read_metrics(path)


def test_nonfinite_value_raises_naming_key_and_step(tmp_path):
    with MetricLogger(tmp_path, tensorboard=False, progress=False, allow_nonfinite=("eval/ratio",)) as logger:
        logger.write(1, {"loss": 1.0, "eval/ratio": float("inf")})
        with pytest.raises(FloatingPointError, match=r"'train/grad_norm'.*step 7"):
            logger.write(7, {"loss": 1.0, "train/grad_norm": jnp.asarray(jnp.nan)})
    records = read_metrics(tmp_path / METRICS_FILE)
    assert [record["step"] for record in records] == [1]  # nothing written for the failed step
    assert records[0]["eval/ratio"] == float("inf")


def test_rejects_non_scalars_and_a_step_key(tmp_path):
    with MetricLogger(tmp_path, tensorboard=False, progress=False) as logger:
        with pytest.raises(ValueError, match=r"'loss'.*shape \(2,\)"):
            logger.write(1, {"loss": np.ones(2)})
        with pytest.raises(ValueError, match="reserved"):
            logger.write(1, {"step": 1})


def test_non_main_process_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(tqdm.auto, "tqdm", None)  # any progress bar would fail
    workdir = tmp_path / "run"
    with MetricLogger(workdir, is_main_process=False, total_steps=10) as logger:
        assert logger.write(1, {"loss": jnp.float32(0.5)}) == {"step": 1, "loss": 0.5}
        logger.advance(2)
        with pytest.raises(FloatingPointError):  # every process checks, so all raise together
            logger.write(2, {"loss": np.nan})
    assert not workdir.exists()


def test_tensorboard_scalars_and_purge_on_resume(tmp_path):
    with MetricLogger(tmp_path, progress=False) as logger:
        logger.write(5, {"train/loss": jnp.float32(0.75), "eval/f1": 80.0})
        logger.write(10, {"train/loss": 0.5})
    scalars = {(e.step, v.tag): v.simple_value for e in _events(tmp_path / "tensorboard") for v in e.summary.value}
    assert scalars == {(5, "train/loss"): 0.75, (5, "eval/f1"): 80.0, (10, "train/loss"): 0.5}

    with MetricLogger(tmp_path, progress=False, resume_step=6) as logger:
        logger.write(7, {"train/loss": 0.25})
    purges = [e.step for e in _events(tmp_path / "tensorboard") if e.session_log.status == event_pb2.SessionLog.START]
    assert purges == [7]  # TensorBoard hides the first run's events from step 7 on


class _FakeBar:
    instances: list = []

    def __init__(self, **kwargs):
        self.kwargs, self.n, self.postfix, self.closed = kwargs, kwargs.get("initial", 0), None, False
        _FakeBar.instances.append(self)

    def update(self, n):
        self.n += n

    def set_postfix(self, postfix, refresh=True):
        self.postfix = postfix

    def close(self):
        self.closed = True


def test_progress_bar(tmp_path, monkeypatch):
    monkeypatch.setattr(tqdm.auto, "tqdm", _FakeBar)
    monkeypatch.setattr(_FakeBar, "instances", [])
    with MetricLogger(tmp_path, tensorboard=False, progress=False, total_steps=100):
        pass
    assert _FakeBar.instances == []  # progress=False creates no bar at all

    with MetricLogger(tmp_path, tensorboard=False, total_steps=100, resume_step=20) as logger:
        (bar,) = _FakeBar.instances
        assert (bar.kwargs["total"], bar.n) == (100, 20)
        logger.advance(21)
        logger.advance(25)
        logger.write(25, {"loss": 0.125, "examples_per_sec": 300.0, "eval/f1": 1.0})
    assert bar.n == 25 and bar.closed
    assert bar.postfix == {"loss": "0.125", "ex/s": "300"}
