"""Hub ids where a folder is expected, resolved through a pre-filled huggingface_hub cache (the layout
`models--ORG--NAME/snapshots/REV/` + `refs/main`, in a temporary HF_HUB_CACHE), with no network: a cached
name loads, a missing one fails at once naming the cache to fill, and a push says it cannot reach the hub.
`HF_ENDPOINT` points at a closed local port, so no test can reach a real server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REPO_ID = "qajax-test/tiny-bert"
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """A cache holding REPO_ID: a tiny random BERT base model (no QA head), PyTorch weights."""
    import qajax.hf
    from qajax import config as config_lib
    from qajax.checkpoints.factory import load_or_init

    cache = tmp_path_factory.mktemp("hf_cache")
    repo = cache / f"models--{REPO_ID.replace('/', '--')}"
    config = config_lib.load("configs/tiny.py")
    spec, params = load_or_init(config.model, "encoder")
    qajax.hf.save_pretrained(spec.build(), params, spec, repo / "snapshots" / REVISION, formats=("pt",))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return cache


def qajax(*args, cache: Path, offline: bool = False, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_CACHE": str(cache), "HF_ENDPOINT": "http://127.0.0.1:9"}
    env.pop("HF_HUB_OFFLINE", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    command = [sys.executable, "-m", "qajax", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("offline", [False, True])
def test_import_hf_takes_a_cached_hub_id_and_names_the_fresh_head(hub_cache, tmp_path, offline):
    result = qajax("import-hf", REPO_ID, str(tmp_path / "ckpt"), cache=hub_cache, offline=offline)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"from {REPO_ID} into" in result.stdout
    assert "freshly initialised" in result.stderr and "qa_outputs/kernel" in result.stderr, result.stderr

    from qajax.checkpoints.saved import load_model

    _, params, spec = load_model(tmp_path / "ckpt")
    assert spec.head == "qa" and spec.encoder.hidden_size == 32


def test_model_pretrained_takes_a_hub_id(hub_cache):
    code = (
        "from qajax.checkpoints.factory import load_or_init, pretrained_section\n"
        f"spec, params = load_or_init(pretrained_section({REPO_ID!r}), 'qa')\n"
        "print(spec.encoder.num_layers, sorted(params))"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_CACHE": str(hub_cache), "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "2 ['bert', 'qa_outputs']"


@pytest.mark.parametrize("offline", [False, True])
def test_a_name_missing_from_the_cache_fails_at_once_naming_the_cache(hub_cache, tmp_path, offline):
    started = time.monotonic()
    result = qajax("import-hf", "qajax-test/not-there", str(tmp_path / "out"), cache=hub_cache, offline=offline)
    seconds = time.monotonic() - started
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert str(hub_cache) in line and "not in the hub cache" in line, line
    assert ("HF_HUB_OFFLINE" in line) if offline else ("cannot be reached" in line), line
    assert seconds < 15, seconds  # no retries: the probe gives up after a few seconds at most


def test_import_hf_of_a_training_workdir_says_what_it_is(tmp_path, hub_cache):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "spec.json").write_text("{}")
    (workdir / "config.json").write_text("{}")
    (workdir / "checkpoints").mkdir()
    result = qajax("import-hf", str(workdir), str(tmp_path / "out"), cache=hub_cache)
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "is a training workdir, not a Hugging Face folder" in line and "export-hf" in line, line


@pytest.mark.parametrize("offline", [False, True])
def test_push_to_hub_without_network_says_so_and_keeps_the_export(hub_cache, tmp_path, offline):
    ckpt = tmp_path / "ckpt"
    assert qajax("import-hf", REPO_ID, str(ckpt), cache=hub_cache).returncode == 0
    out = tmp_path / "hf"
    result = qajax("export-hf", str(ckpt), str(out), "--push-to-hub", "me/model", cache=hub_cache, offline=offline)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "--push-to-hub me/model" in line and str(out) in line, line
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
