"""The S3-compatible server the checkpoint tests start: e2e/s3server (gofakes3 with its bolt
backend, objects in a file under ``data``), built by its build.sh (a no-op when cached).

A real server speaking S3 over HTTP, not a mock: s3fs, DCP's fsspec writer and the rank
pods talk to it as to any S3 endpoint. It accepts any key pair (it checks no signatures),
so the tests' keys only show that credentials travel as they would to a real store.
Missing Go or a failed build is an error, never a skip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from e2e.cluster.buildscript import built
from tests.support.cluster import wait_for

HERE = Path(__file__).resolve().parents[2] / "e2e" / "s3server"
#: The keys the tests hand out; any pair works against this server.
KEYS = {"AWS_ACCESS_KEY_ID": "shardwright-test", "AWS_SECRET_ACCESS_KEY": "not-a-real-secret-0123456789"}
REGION = "us-east-1"


def binary() -> Path:
    return built(HERE / "build.sh", "the S3 server", timeout=900)


@dataclasses.dataclass
class S3Server:
    endpoint: str
    bucket: str
    process: subprocess.Popen

    def env(self) -> dict[str, str]:
        """What a client needs in its environment: keys, endpoint, region."""
        return {**KEYS, "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": REGION}

    def uri(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` in the bucket, through the S3 API (ListObjectsV2)."""
        import s3fs

        fs = s3fs.S3FileSystem(key=KEYS["AWS_ACCESS_KEY_ID"], secret=KEYS["AWS_SECRET_ACCESS_KEY"],
                               endpoint_url=self.endpoint, client_kwargs={"region_name": REGION},
                               skip_instance_cache=True, use_listings_cache=False)
        try:
            found = fs.find(f"{self.bucket}/{prefix}")
        except FileNotFoundError:
            return []
        return sorted(k.removeprefix(f"{self.bucket}/") for k in found)


def _answers(url: str, method: str) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5):
            return True
    except urllib.error.HTTPError as e:
        return e.code == 409  # CreateBucket of one that exists: it answers
    except OSError:
        return False


@contextlib.contextmanager
def s3_server(data: Path, *, host: str = "127.0.0.1", bucket: str = "checkpoints") -> Iterator[S3Server]:
    """The server on ``host`` (a free port), its objects under ``data``, with ``bucket`` made
    through the S3 API (CreateBucket); stopped by its PID on exit."""
    data.mkdir(parents=True, exist_ok=True)
    log = (data / "s3server.log").open("w")
    process = subprocess.Popen([str(binary()), "-listen", f"{host}:0", "-data", str(data)],
                               stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = process.stdout.readline()  # "listening HOST:PORT", or "" if it died
        if not line.startswith("listening "):
            process.wait(timeout=10)
            raise RuntimeError(f"the S3 server did not start (exit {process.returncode}): {(data / 's3server.log').read_text()[-2000:]}")
        server = S3Server(f"http://{line.split()[1]}", bucket, process)
        wait_for(lambda: _answers(f"{server.endpoint}/{bucket}", "PUT"), 30, "the S3 server to create the bucket")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
