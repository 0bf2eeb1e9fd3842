"""Hugging Face hub names where a folder is expected (`model.pretrained`, `import-hf`, `--bertscore`, eval's
CKPT), and `export-hf --push-to-hub`, through `huggingface_hub`: its cache (`HF_HUB_CACHE`, shared with
transformers), `HF_HUB_OFFLINE`, `HF_ENDPOINT` and `HF_TOKEN` mean what they mean there.

A name is looked up in the cache first, so a filled cache works without network. Without one, the hub is
probed once with a short timeout: a machine with no network gets one line at once (what to fill, where)
instead of `huggingface_hub`'s retries.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from qajax.errors import CheckpointError

# `bert-base-uncased`, `org/name`, optionally `@revision` (a branch, tag or commit of the repository).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?(@[\w./-]+)?")
PROBE_TIMEOUT_S = 3.0


def is_hub_id(name: str) -> bool:
    return HUB_ID.fullmatch(name) is not None and ".." not in name


def resolve(name: str | os.PathLike, *, what: str = "model") -> Path:
    """`name` as a local folder: itself if it exists, else the snapshot of hub repository `name`
    (`org/name[@revision]`), from the cache or downloaded. Raises CheckpointError with one clear line."""
    path = Path(name)
    if path.exists() or not is_hub_id(str(name)):
        if not path.exists():
            raise CheckpointError(f"{what} {name}: not a folder (no such path), nor a hub id (org/name)")
        return path
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, _, revision = str(name).partition("@")
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    cache = constants.HF_HUB_CACHE
    fill = (
        f"fill the cache ({cache}, set by HF_HUB_CACHE) on a machine with network, e.g. `hf download {repo_id}`, "
        "or give a local folder"
    )
    if constants.HF_HUB_OFFLINE:
        raise CheckpointError(
            f"{what} {name}: no such folder, and not in the hub cache (HF_HUB_OFFLINE is set); {fill}"
        )
    reachable, reason = _hub_reachable()
    if not reachable:
        raise CheckpointError(f"{what} {name}: no such folder, not in the hub cache, and {reason}; {fill}")
    try:
        return Path(snapshot_download(repo_id, revision=revision or None))
    except (OSError, ValueError) as error:  # huggingface_hub's HTTP and not-found errors derive from these
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{what} {name}: no such folder, and the hub has no such model ({first})") from None


def push(folder: str | os.PathLike, repo_id: str, *, private: bool = False, message: str | None = None) -> str:
    """Uploads `folder` to model repository `repo_id` (created if absent); returns the repository's URL."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise CheckpointError(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set; {folder} is written, push it later")
    reachable, reason = _hub_reachable()
    if not reachable:
        raise CheckpointError(
            f"--push-to-hub {repo_id}: {reason}; {folder} is written: push it later with "
            f"`hf upload {repo_id} {folder}` or `qajax export-hf ... --push-to-hub` on a machine with network"
        )
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=message or "qajax export-hf")
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"--push-to-hub {repo_id}: {first} ({folder} is written)") from None
    return str(url)


def _hub_reachable() -> tuple[bool, str]:
    """(whether the hub endpoint accepts a TCP connection within PROBE_TIMEOUT_S, why not)."""
    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True, ""  # through a proxy: a direct connection says nothing; let huggingface_hub try
    endpoint = urlparse(constants.ENDPOINT)
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True, ""
    except OSError as error:
        return False, f"the hub ({constants.ENDPOINT}) cannot be reached ({error.strerror or error})"
