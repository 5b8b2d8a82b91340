"""``shardwright run`` with checkpoints on ``s3://``: the embedded default writes to and
resumes from a real S3-compatible server (tests/support/s3.py), reached with the AWS
environment of the shell it runs in."""

from __future__ import annotations

import pytest
import yaml

from shardwright.workers.manifest import committed
from tests.support.s3 import s3_server

from .test_faults import events, fault_job
from .test_local_run import curve, shardwright_run, status

pytestmark = pytest.mark.slow


def test_a_killed_rank_resumes_from_the_bucket_bit_identical(tmp_path, monkeypatch):
    with s3_server(tmp_path / "s3") as s3:
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        runs = {}
        for name, faults in (("clean", ()), ("killed", ("--inject", "kill:rank=1:step=25"))):
            (tmp_path / name).mkdir()
            job = fault_job(tmp_path / name)
            doc = yaml.safe_load(job.read_text())
            doc["spec"]["checkpoint"]["uri"] = s3.uri(name)
            job.write_text(yaml.safe_dump(doc))
            run = shardwright_run(job, tmp_path / name / "wd", *faults)
            assert run.returncode == 0, run.stdout
            runs[name] = tmp_path / name / "wd"
        st = status(runs["killed"])
        assert st["phase"] == "Complete" and st["restarts"] == 1 and st["generation"] == 2
        assert st["lastCheckpoint"]["uri"] == f"{s3.uri('killed')}/step-00000040"
        assert any("resumes from step 20" in e["message"] for e in events(runs["killed"]))
        assert curve(runs["killed"]) == curve(runs["clean"])  # resumed from the bucket, bit for bit
        assert [m["step"] for m in committed(s3.uri("killed"))] == [20, 30, 40]  # keep: 3
