"""`ray job submit` against the session's Ray head, through the real CLI."""

import subprocess
import sys
from pathlib import Path

from ray.job_submission import JobStatus, JobSubmissionClient

RAY = str(Path(sys.executable).parent / "ray")


def test_trivial_job_submit_succeeds_and_logs_are_retrievable(ray_head, tmp_path):
    (tmp_path / "hello.py").write_text(
        "import os\nprint('hello from a ray job; bucket =', os.environ['SEEDSTORY_BUCKET'])\n"
    )
    address = ["--address", ray_head.ray_dashboard_url]
    submitted = subprocess.run(
        [RAY, "job", "submit", *address, "--submission-id", "trivial-job", "--working-dir", str(tmp_path),
         "--", "python", "hello.py"],
        capture_output=True, text=True, timeout=180,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    client = JobSubmissionClient(ray_head.ray_dashboard_url)
    assert client.get_job_status("trivial-job") == JobStatus.SUCCEEDED
    logs = subprocess.run([RAY, "job", "logs", *address, "trivial-job"], capture_output=True, text=True, timeout=60)
    assert f"hello from a ray job; bucket = {ray_head.bucket}" in logs.stdout


def test_failing_job_reports_failure(ray_head, tmp_path):
    (tmp_path / "boom.py").write_text("raise SystemExit('deliberate failure')\n")
    submitted = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head.ray_dashboard_url, "--working-dir", str(tmp_path),
         "--", "python", "boom.py"],
        capture_output=True, text=True, timeout=180,
    )
    assert submitted.returncode != 0
    assert "deliberate failure" in submitted.stdout + submitted.stderr
