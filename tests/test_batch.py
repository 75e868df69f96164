"""``ctnode batch`` (the real command, in a subprocess) against a running node: a folder of
archives becomes a spreadsheet that openpyxl reads back with one right row per archive; a
second run skips what is already there."""

from __future__ import annotations

import csv
import io
import subprocess
import zipfile
from pathlib import Path

from openpyxl import load_workbook

from tests.conftest import ctnode_command, subprocess_env, testdata
from tests.factory import ct_series, write_series
from tests.http_node import TOKEN, make_node


def _zip(files: list[Path], target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w") as archive:
        for i, path in enumerate(files):
            archive.write(path, f"{i:04d}.dcm")
    return target


def batch(folder: Path, url: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ctnode_command("batch", str(folder), "--url", url, "--out", str(out), *extra),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_batch_writes_one_row_per_archive_and_resumes(tmp_path: Path) -> None:
    folder = tmp_path / "archives"
    _zip(sorted(testdata("chest-ct-100-lung").glob("*.dcm")), folder / "a" / "chest.zip")
    few = write_series(ct_series(10, 16, 16, seed="batch-few"), tmp_path / "few")
    _zip(few, folder / "few.zip")
    (folder / "broken.zip").write_bytes(b"not a zip at all")
    (folder / "notes.txt").write_text("ignored: not a ZIP")
    node = make_node(tmp_path / "node")
    try:
        assert node.api is not None
        url = f"http://127.0.0.1:{node.api.port}"
        out = tmp_path / "results.xlsx"
        first = batch(folder, url, out, "--token", TOKEN)
        assert first.returncode == 1, first.stderr  # not every archive succeeded
        assert "3 archives: 1 succeeded, 2 failed" in first.stdout
        sheet = load_workbook(out).active
        assert sheet is not None
        header, *rows = [list(r) for r in sheet.iter_rows(values_only=True)]
        by_archive = {r[header.index("archive")]: dict(zip(header, r, strict=True)) for r in rows}
        assert sorted(by_archive) == ["a/chest.zip", "broken.zip", "few.zip"]
        chest = by_archive["a/chest.zip"]
        assert chest["processing_status"] == "Success" and chest["http_status"] == 200
        assert 0.0 <= float(chest["probability_of_pathology"]) <= 1.0
        assert chest["pathology"] in (0, 1) and chest["study_uid"]
        assert by_archive["broken.zip"]["http_status"] == 400
        assert "not_zip" in by_archive["broken.zip"]["error"]
        assert by_archive["few.zip"]["http_status"] == 422
        assert "too_few_slices" in by_archive["few.zip"]["error"]

        again = batch(folder, url, out, "--token", TOKEN)
        assert "3 archives already in the output: skipped" in again.stderr
        assert node.index.query("SELECT COUNT(*) AS n FROM jobs")[0]["n"] == 2  # no new job

        unauthorised = batch(folder, url, tmp_path / "denied.csv")
        assert unauthorised.returncode == 2 and "refused the token" in unauthorised.stderr

        # Resuming: a row that failed in transport (no answer) is tried again, the rest not.
        earlier = [dict(zip(header, r, strict=True)) for r in rows]
        for row in earlier:
            if row["archive"] == "broken.zip":
                row.update(http_status=0, error="no answer")
        with open(tmp_path / "results.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, header)
            writer.writeheader()
            writer.writerows(earlier)
        retried = batch(folder, url, tmp_path / "results.csv", "--token", TOKEN)
        assert "2 archives already in the output: skipped" in retried.stderr
        again_rows = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
        broken = next(r for r in again_rows if r["archive"] == "broken.zip")
        assert broken["http_status"] == "400" and len(again_rows) == 3
    finally:
        node.stop()
