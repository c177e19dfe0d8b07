"""Review round trip: recover / predict output out to Label Studio as tasks, least certain image
first; a Label Studio JSON export back into the label CSV, changing exactly the reviewed entries.

The round-trip test starts a real Label Studio server (from ``.venv-review``, which ``make test``
creates; it pins numpy and pyarrow below mlrkit's, so it has a venv of its own) on 127.0.0.1.
"""

import csv
import io
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlrkit.cli import main
from mlrkit.data import DataFormatError, create_dataset, csv_edit
from mlrkit.data.csv_edit import read_label_file
from mlrkit.engine.recover import recover, write_long_table
from mlrkit.engine.thresholds import Thresholds
from mlrkit.review import (
    Proposal,
    export_tasks,
    margins,
    merge_reviewed,
    read_proposal,
    reviewed_labels,
)
from mlrkit.review.label_studio import local_files_url, prefixed_url

REPO = Path(__file__).resolve().parents[1]
LABEL_STUDIO = Path(os.environ.get("MLRKIT_LABEL_STUDIO", REPO / ".venv-review/bin/label-studio"))
START_TIMEOUT_S = 300  # the first start runs the database migrations: 25-35 s on 2 busy cores

CLASSES = ["cat", "dog", "person"]
# Six images, known labels 1 / 0 / unknown (empty or -1), and probabilities that are binary
# fractions, so that the margins |p - 0.5| are exact and their ties real.
LABELS_CSV = ("image,cat,dog,person\n"
              "a.png,1,,0\n"
              "b.png,,,1\n"
              "c.png,0,1,\n"
              "d.png,1,0,0\n"
              "e.png,,,\n"
              "f.png,0,-1,1\n")
PROBS = np.array([[0.9, 0.625, 0.1],      # a: dog unknown        -> margin 0.125
                  [0.25, 0.0625, 0.8],    # b: cat, dog unknown   -> 0.25
                  [0.2, 0.7, 0.53125],    # c: person unknown     -> 0.03125
                  [0.5, 0.5, 0.5],        # d: nothing unknown    -> 0.5
                  [0.75, 0.375, 0.875],   # e: all unknown        -> 0.125 (tie with a)
                  [0.1, 0.3125, 0.95]])   # f: dog unknown        -> 0.1875
# LABELS_CSV after the reviews of EXPORT (and of the server test): a's dog, c's person, f's dog
REVIEWED_CSV = (LABELS_CSV.replace("a.png,1,,0", "a.png,1,1,0")
                .replace("c.png,0,1,\n", "c.png,0,1,0\n").replace("f.png,0,-1,1", "f.png,0,0,1"))
ORDER = ["c.png", "a.png", "e.png", "f.png", "b.png", "d.png"]
MARGINS = {"c.png": 0.03125, "a.png": 0.125, "e.png": 0.125, "f.png": 0.1875, "b.png": 0.25,
           "d.png": 0.5}
PROPOSED = {"a.png": ["cat", "dog"], "b.png": ["person"], "c.png": ["dog", "person"],
            "d.png": ["cat"], "e.png": ["cat", "person"], "f.png": ["person"]}


def make_dataset(folder: Path) -> Path:
    """``folder/labels.csv`` with ``LABELS_CSV``, a 4x4 PNG per image, and recover's long table
    of ``PROBS`` (written by recover's own writer, 0.5 thresholds) in ``folder/recovered``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.csv").write_text(LABELS_CSV, encoding="utf-8")
    for k, name in enumerate("abcdef"):
        Image.new("RGB", (4, 4), (40 * k, 0, 0)).save(folder / f"{name}.png")
    data = create_dataset("csv", folder)
    nan = np.full(3, np.nan)
    thresholds = Thresholds(np.full(3, 0.5), np.full(3, 0.5), "f1", np.ones(3, bool),
                            np.full(3, 5), nan, nan, nan)
    recovered = recover(data.labels, PROBS, thresholds)
    write_long_table(folder / "recovered" / "recovered_long.csv", data, data.labels, recovered,
                     PROBS)
    return folder / "recovered"


def choices(*names: str) -> list[dict]:
    """A Label Studio ``choices`` result choosing ``names``."""
    return [{"from_name": "labels", "to_name": "image", "type": "choices",
             "value": {"choices": list(names)}}]


def annotation(ident: int, names: list[str], when: str, cancelled: bool = False) -> dict:
    return {"id": ident, "result": choices(*names), "was_cancelled": cancelled,
            "created_at": when, "updated_at": when}


def task(ident: int, image: str, *annotations: dict) -> dict:
    return {"id": ident, "data": {"image": f"/data/local-files/?d=photos/{image}",
                                  "image_id": image}, "annotations": list(annotations)}


def rows(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def cell_diff(before: str, path: Path) -> list[tuple[str, str, str, str]]:
    """``(image, class, old cell, new cell)`` of each cell of the CSV ``path`` that differs from
    the CSV text ``before`` (same header and images)."""
    old, new = (list(csv.reader(io.StringIO(text))) for text in (before, path.read_text("utf-8")))
    assert old[0] == new[0] and [r[0] for r in old] == [r[0] for r in new]
    return [(o[0], old[0][j], o[j], n[j]) for o, n in zip(old[1:], new[1:], strict=True)
            for j in range(1, len(o)) if o[j] != n[j]]


# --- export ------------------------------------------------------------------------------------

def test_export_orders_by_margin_exactly_and_writes_the_matching_config(tmp_path, capsys):
    recovered = make_dataset(tmp_path / "photos")
    out = tmp_path / "review" / "tasks.json"
    assert main(["export", "--format", "label-studio", str(recovered), "--out", str(out),
                 "--image-root", "photos"]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: 6 tasks of 6 images, least certain first "
                                              f"(margin 0.031 to 0.500)")
    tasks = json.loads(out.read_text(encoding="utf-8"))
    assert [t["data"]["image_id"] for t in tasks] == ORDER
    for t in tasks:
        image = t["data"]["image_id"]
        assert t["data"]["image"] == f"/data/local-files/?d=photos/{image}"
        assert t["meta"]["margin"] == MARGINS[image]
        assert t["predictions"][0]["score"] == 2 * MARGINS[image]
        assert t["predictions"][0]["result"] == choices(*PROPOSED[image])
        assert t["meta"]["scores"] == dict(zip(CLASSES, PROBS["abcdef".index(image[0])]))
    assert tasks[2]["data"]["known_positive"] == [] and tasks[3]["data"] == {
        "image": "/data/local-files/?d=photos/f.png", "image_id": "f.png",
        "known_positive": ["person"], "known_negative": ["cat"]}
    assert out.with_suffix(".xml").read_text(encoding="utf-8") == (
        '<View>\n  <Image name="image" value="$image"/>\n'
        '  <Choices name="labels" toName="image" choice="multiple">\n'
        '    <Choice value="cat"/>\n    <Choice value="dog"/>\n    <Choice value="person"/>\n'
        '  </Choices>\n</View>\n')

    assert main(["export", "--format", "label-studio", str(recovered), "--out", str(out),
                 "--url-prefix", "https://host/my photos/"]) == 2
    assert "already exist; pass --overwrite" in capsys.readouterr().err
    assert main(["export", "--format", "label-studio", str(recovered / "recovered_long.csv"),
                 "--out", str(out), "--url-prefix", "https://host/my photos/", "--limit", "2",
                 "--overwrite"]) == 0
    tasks = json.loads(out.read_text(encoding="utf-8"))
    assert [t["data"]["image"] for t in tasks] == ["https://host/my photos/c.png",
                                                   "https://host/my photos/a.png"]


def test_margin_is_the_smallest_distance_to_one_half_over_unknown_scored_entries(tmp_path):
    proposal = read_proposal(make_dataset(tmp_path))
    assert margins(proposal).tolist() == [0.125, 0.25, 0.03125, 0.5, 0.125, 0.1875]
    proposal.scores[2, 2] = np.nan  # c's only unknown entry unscored: nothing left to doubt
    assert margins(proposal)[2] == 0.5
    names = [t["data"]["image_id"] for t in export_tasks(proposal, local_files_url("."))]
    assert names == ["a.png", "e.png", "f.png", "b.png", "c.png", "d.png"]
    assert export_tasks(proposal, local_files_url("."))[0]["data"]["image"] == \
        "/data/local-files/?d=a.png"
    near = Proposal(["x", "y"], ["cat"], np.array([[-1], [-1]], np.int8),
                    np.array([[1], [0]], np.int8), np.array([[0.55], [0.45]]))
    assert margins(near).tolist() == [0.05, 0.05]  # a tie, as printed: file order
    assert prefixed_url("https://h/get?f=")("x y.png") == "https://h/get?f=x%20y.png"
    with pytest.raises(ValueError, match="end it with '/'"):
        prefixed_url("https://h/photos")
    with pytest.raises(ValueError, match="relative to Label Studio"):
        local_files_url("/abs/photos")


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_predict_output_is_matched_to_the_label_file_rows(tmp_path, monkeypatch, fmt):
    make_dataset(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)  # predict was run here: relative and absolute image paths
    top2 = {"photos/e.png": [("person", 0.875), ("cat", 0.75)],
            str(tmp_path / "photos" / "a.png"): [("cat", 0.9), ("dog", 0.375)]}
    if fmt == "json":
        predicted = tmp_path / "pred.json"
        predicted.write_text(json.dumps([{"image": image, "labels": [
            {"label": label, "score": score} for label, score in entries]}
            for image, entries in top2.items()]), encoding="utf-8")
    else:
        predicted = tmp_path / "pred.csv"
        predicted.write_text("image,rank,label,score\n" + "".join(
            f"{image},{rank},{label},{score}\n" for image, entries in top2.items()
            for rank, (label, score) in enumerate(entries, start=1)), encoding="utf-8")
    labels = read_label_file(tmp_path / "photos" / "labels.csv")
    proposal = read_proposal(predicted, labels)
    assert proposal.ids == ["e.png", "a.png"] and proposal.class_names == CLASSES
    assert proposal.observed.tolist() == [[-1, -1, -1], [1, -1, 0]]
    # unknown and scored: score >= 0.5; unknown and unscored (e's dog): no proposal
    assert proposal.proposed.tolist() == [[1, -1, 1], [1, 0, 0]]
    assert np.array_equal(np.isnan(proposal.scores), [[False, True, False], [False, False, True]])
    assert margins(proposal).tolist() == [0.25, 0.125]
    with pytest.raises(ValueError, match="give --labels"):
        read_proposal(predicted)
    (tmp_path / "photos" / "labels.csv").write_text("image,cat,dog,person\nb.png,,,\n",
                                                    encoding="utf-8")
    with pytest.raises(ValueError, match="'photos/e.png' is not in"):
        read_proposal(predicted, read_label_file(tmp_path / "photos" / "labels.csv"))


# --- import ------------------------------------------------------------------------------------

EXPORT = [
    task(11, "c.png", annotation(1, ["dog"], "2026-05-01T10:00:00.000001Z")),
    task(12, "a.png", annotation(2, ["cat"], "2026-05-01T10:00:00Z"),
         annotation(3, ["cat", "dog"], "2026-05-01T10:05:00Z"),  # the latest submitted one
         annotation(4, ["person"], "2026-05-01T10:09:00Z", cancelled=True)),
    task(13, "e.png", annotation(5, [], "2026-05-01T10:10:00Z", cancelled=True)),
    task(14, "f.png", annotation(6, ["cat", "person"], "2026-05-01T10:11:00Z")),
    task(15, "b.png"),
]


KEPT = "kept the known value; --overwrite-conflicts takes the reviewed one"


def write_export(path: Path, tasks: list[dict]) -> Path:
    path.write_text(json.dumps(tasks), encoding="utf-8")
    return path


def test_reviewed_images_become_known_untouched_ones_stay_and_counts_are_per_class(
        tmp_path, capsys):
    make_dataset(tmp_path)
    labels, export = tmp_path / "labels.csv", write_export(tmp_path / "export.json", EXPORT)
    before = labels.read_bytes()
    assert main(["import-labels", str(export), "--into", str(labels)]) == 0
    out = capsys.readouterr().out.splitlines()
    backup = next((tmp_path / ".mlrkit-backups").glob("labels.csv.bak-*"))
    assert backup.read_bytes() == before
    assert out == [
        f"{labels}: 3 reviewed images, 3 entries changed; previous file kept as {backup}",
        "class   changed  unknown->1  unknown->0  overwritten  conflicts kept",
        "cat           0           0           0            0               1",
        "dog           2           1           1            0               0",
        "person        1           0           1            0               0",
        f"conflict: f.png, cat: known 0, reviewed 1 ({KEPT})",
    ]
    assert cell_diff(LABELS_CSV, labels) == [("a.png", "dog", "", "1"),
                                             ("c.png", "person", "", "0"),
                                             ("f.png", "dog", "-1", "0")]
    assert labels.read_bytes() == REVIEWED_CSV.encode("utf-8")  # nothing else changed


def test_a_conflict_keeps_the_known_label_unless_overwrite_conflicts(tmp_path, capsys):
    make_dataset(tmp_path)
    labels = tmp_path / "labels.csv"
    export = write_export(tmp_path / "export.json", [
        task(1, "d.png", annotation(1, ["dog"], "2026-05-01T10:00:00Z"))])  # d: cat 1, dog 0
    assert main(["import-labels", str(export), "--into", str(labels)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{labels}: 1 reviewed image, no entry changed; the file is as it was"
    assert out[-2:] == [f"conflict: d.png, cat: known 1, reviewed 0 ({KEPT})",
                        f"conflict: d.png, dog: known 0, reviewed 1 ({KEPT})"]
    assert labels.read_text(encoding="utf-8") == LABELS_CSV
    assert not list(tmp_path.rglob("labels.csv.bak-*"))  # nothing written, nothing to back up

    assert main(["import-labels", str(export), "--into", str(labels),
                 "--overwrite-conflicts"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2:5] == ["cat           1           0           0            1               0",
                        "dog           1           0           0            1               0",
                        "person        0           0           0            0               0"]
    assert out[-1] == "conflict: d.png, dog: known 0, reviewed 1 (overwritten)"
    assert rows(labels) == LABELS_CSV.replace("d.png,1,0,0", "d.png,0,1,0").splitlines()


def test_merge_rule_on_matrices():
    labels = np.array([[1, -1, 0], [-1, -1, -1], [0, 1, -1]], dtype=np.int8)
    reviewed = {0: np.array([0, 1, 0], np.int8), 2: np.array([0, 1, 1], np.int8)}
    kept = merge_reviewed(labels, reviewed)
    assert kept.labels.tolist() == [[1, 1, 0], [-1, -1, -1], [0, 1, 1]]
    assert kept.changes == {(0, 1): 1, (2, 2): 1} and kept.conflicts == [(0, 0, 1, 0)]
    assert merge_reviewed(labels, reviewed, True).labels.tolist() == [[0, 1, 0], [-1, -1, -1],
                                                                      [0, 1, 1]]
    assert labels[0, 0] == 1  # the input is not modified


def test_latest_submitted_annotation_counts_and_other_controls_are_ignored():
    ids = ["x.png", "y.png"]
    first = annotation(8, ["dog"], "2026-05-01T12:00:00+02:00")  # 10:00 UTC
    second = annotation(9, ["cat", "person"], "2026-05-01T10:30:00Z")
    second["result"].append({"from_name": "note", "type": "textarea", "value": {"text": ["?"]}})
    skipped = annotation(10, ["person"], "2026-05-01T11:00:00Z", cancelled=True)
    reviewed = reviewed_labels([task(1, "y.png", second, first, skipped), task(2, "x.png")],
                               CLASSES, ids)
    assert {row: labels.tolist() for row, labels in reviewed.items()} == {1: [1, 0, 1]}
    same_time = annotation(11, ["dog"], "2026-05-01T10:30:00Z")  # tie: the higher id
    reviewed = reviewed_labels([task(1, "y.png", same_time, second)], CLASSES, ids)
    assert reviewed[1].tolist() == [0, 1, 0]
    assert reviewed_labels([task(1, "x.png", annotation(1, [], "2026-05-01T10:00:00Z"))],
                           CLASSES, ids)[0].tolist() == [0, 0, 0]  # nothing chosen: all 0


def test_unknown_image_or_class_is_one_error_naming_file_task_and_value(tmp_path, capsys):
    make_dataset(tmp_path)
    labels = tmp_path / "labels.csv"
    cases = {
        "unknown class": ([task(7, "a.png", annotation(1, ["cta"], "2026-05-01T10:00:00Z"))],
                          f"task 7: class 'cta' is not a column of {labels} (cat, dog, person)"),
        "unknown image": ([task(8, "zz.png", annotation(1, ["cat"], "2026-05-01T10:00:00Z"))],
                          f"task 8: image_id 'zz.png' is not an image of {labels}"),
        "JSON_MIN": ([{"id": 9, "image": "x.jpg", "labels": ["cat"]}], "task 9: no data.image_id"),
        "not a list": ({"tasks": []}, "not a Label Studio JSON export (a list of tasks)"),
    }
    for name, (content, message) in cases.items():
        export = write_export(tmp_path / f"{name}.json", content)
        assert main(["import-labels", str(export), "--into", str(labels)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith(f"mlrkit: error: {export}: {message}; "), (name, err)
        assert err.count("\n") == 1, name
    assert labels.read_text(encoding="utf-8") == LABELS_CSV
    listed = tmp_path / "list.csv"
    listed.write_text("image,labels\na.png,cat\n", encoding="utf-8")
    assert main(["import-labels", str(export), "--into", str(listed)]) == 2
    assert "in the 'image,labels' format" in capsys.readouterr().err


def test_records_without_a_change_keep_every_byte(tmp_path):
    text = ('\ufeffimage, cat ,dog\r\n'
            '"a,1.png",1,\r\n'
            '\r\n'
            '"b.png", -1 ,"0"\r\n'
            'c.png,,1')  # BOM, CRLF, quoted cells, a blank line, -1 and spaces, no last newline
    labels = tmp_path / "labels.csv"
    labels.write_bytes(text.encode("utf-8"))
    labels.chmod(0o640)
    export = write_export(tmp_path / "export.json", [
        task(1, "b.png", annotation(1, ["cat"], "2026-05-01T10:00:00Z")),
        task(2, "c.png", annotation(2, ["dog"], "2026-05-01T10:00:00Z"))])
    assert main(["import-labels", str(export), "--into", str(labels)]) == 0
    assert labels.read_bytes() == ('\ufeffimage, cat ,dog\r\n"a,1.png",1,\r\n\r\nb.png,1,0\r\n'
                                   'c.png,0,1').encode("utf-8")
    assert read_label_file(labels).labels.tolist() == [[1, -1], [1, 0], [0, 1]]
    assert labels.stat().st_mode & 0o777 == 0o640


def test_a_backup_never_overwrites_an_older_one(tmp_path, monkeypatch, capsys):
    make_dataset(tmp_path)
    labels = tmp_path / "labels.csv"
    monkeypatch.setattr(csv_edit.time, "strftime", lambda fmt: "20260501T100000")
    (tmp_path / ".mlrkit-backups").mkdir()
    older = tmp_path / ".mlrkit-backups" / "labels.csv.bak-20260501T100000"
    older.write_text("an older backup", encoding="utf-8")
    first = write_export(tmp_path / "1.json", [task(1, "e.png", annotation(
        1, ["cat"], "2026-05-01T10:00:00Z"))])
    second = write_export(tmp_path / "2.json", [task(1, "b.png", annotation(
        1, ["dog", "person"], "2026-05-01T10:00:00Z"))])
    assert main(["import-labels", str(first), "--into", str(labels)]) == 0
    assert main(["import-labels", str(second), "--into", str(labels)]) == 0
    capsys.readouterr()
    assert older.read_text(encoding="utf-8") == "an older backup"
    backups = tmp_path / ".mlrkit-backups"  # all in one place, none beside the data
    assert (backups / "labels.csv.bak-20260501T100000-2").read_text(encoding="utf-8") == LABELS_CSV
    assert rows(backups / "labels.csv.bak-20260501T100000-3")[5] == "e.png,1,0,0"
    assert not list(tmp_path.glob("labels.csv.bak-*"))
    assert rows(labels)[2] == "b.png,0,1,1" and rows(labels)[5] == "e.png,1,0,0"


# --- a real Label Studio server ----------------------------------------------------------------

@dataclass(frozen=True)
class Server:
    url: str
    token: str
    documents: Path

    def call(self, method: str, path: str, body: object = None) -> object:
        """A JSON API call authenticated with the user's token."""
        return json.loads(self.get(path, method, body) or b"null")

    def get(self, path: str, method: str = "GET", body: object = None) -> bytes:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Token {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.read()
        except urllib.error.HTTPError as err:
            raise AssertionError(f"{method} {path}: {err.code} {err.read()[:2000]!r}") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(base: Path, port: int, token: str) -> dict[str, str]:
    """Label Studio's settings for a throwaway server: its data under ``base``, one user with a
    known API token, no signup, local files under ``base/documents``, nothing sent anywhere."""
    return {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(base / "data"),
        "LABEL_STUDIO_DJANGO_DB": "sqlite",
        "LABEL_STUDIO_DATABASE_NAME": str(base / "data" / "label_studio.sqlite3"),
        "LABEL_STUDIO_HOST": f"http://127.0.0.1:{port}",
        "LABEL_STUDIO_USERNAME": "reviewer@example.com",
        "LABEL_STUDIO_PASSWORD": secrets.token_hex(8),
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(base / "documents"),
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",  # else it asks pypi.org at start-up
        "LABEL_STUDIO_SENTRY_DSN": "",
        "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "GIT_DIR": str(base / "no-git"),  # it runs 'git describe' in its package folder
    }


def wait_until_up(server: Server, process: subprocess.Popen, log: Path) -> None:
    """Until the server answers this user's token (not another process on the port)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"label-studio exited with {process.returncode}:\n"
                                 f"{log.read_text(errors='replace')[-3000:]}")
        try:
            if server.call("GET", "/api/current-user/whoami")["email"] == "reviewer@example.com":
                return
        except (OSError, AssertionError):
            time.sleep(1)
    raise AssertionError(f"label-studio did not answer within {START_TIMEOUT_S} s:\n"
                         f"{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A Label Studio server on 127.0.0.1, stopped (its whole process group) at the end."""
    if not LABEL_STUDIO.is_file():
        message = f"Label Studio not installed at {LABEL_STUDIO}; 'make test' installs it"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    base = tmp_path_factory.mktemp("label-studio")
    (base / "documents").mkdir()
    port, token = free_port(), secrets.token_hex(20)
    log = base / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(LABEL_STUDIO), "start", "--no-browser", "--internal-host", "127.0.0.1",
             "--port", str(port), "--enable-legacy-api-token"],
            cwd=base, env=server_env(base, port, token), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        server = Server(f"http://127.0.0.1:{port}", token, base / "documents")
        wait_until_up(server, process, log)
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL after 30 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=30)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def test_round_trip_through_a_real_label_studio_server(label_studio, tmp_path, capsys):
    server = label_studio
    photos = server.documents / f"photos-{tmp_path.name}"
    recovered = make_dataset(photos)
    labels, tasks_file = photos / "labels.csv", tmp_path / "tasks.json"
    assert main(["export", "--format", "label-studio", str(recovered), "--out", str(tasks_file),
                 "--image-root", photos.name]) == 0

    config = tasks_file.with_suffix(".xml").read_text(encoding="utf-8")
    project = server.call("POST", "/api/projects/", {"title": "mlrkit review",
                                                     "label_config": config})["id"]
    server.call("POST", "/api/storages/localfiles", {  # lets the server serve the images
        "project": project, "path": str(photos), "title": "photos", "use_blob_urls": True})
    imported = server.call("POST", f"/api/projects/{project}/import",
                           json.loads(tasks_file.read_text(encoding="utf-8")))
    assert (imported["task_count"], imported["prediction_count"]) == (6, 6)
    listed = server.call("GET", f"/api/tasks?project={project}&page_size=100")["tasks"]
    listed.sort(key=lambda t: t["id"])
    assert [t["data"]["image_id"] for t in listed] == ORDER  # least certain is the first task
    ids = {t["data"]["image_id"]: t["id"] for t in listed}
    assert server.get(listed[0]["data"]["image"]) == (photos / "c.png").read_bytes()

    def review(image: str, names: list[str], cancelled: bool = False) -> None:
        server.call("POST", f"/api/tasks/{ids[image]}/annotations/",
                    {"result": choices(*names), "was_cancelled": cancelled})

    review("c.png", ["dog"])
    review("a.png", ["cat"])
    review("a.png", ["cat", "dog"])  # a second, later annotation: this one counts
    review("e.png", [], cancelled=True)
    review("f.png", ["cat", "person"])  # cat is a known negative: a conflict
    export = tmp_path / "export.json"
    export.write_bytes(server.get(f"/api/projects/{project}/export?exportType=JSON"))
    assert len(json.loads(export.read_text(encoding="utf-8"))) == 4  # the annotated tasks

    capsys.readouterr()
    assert main(["import-labels", str(export), "--into", str(labels)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{labels}: 3 reviewed images, 3 entries changed; previous file "
                             f"kept as {labels.parent / '.mlrkit-backups' / labels.name}.bak-")
    assert out[-1] == f"conflict: f.png, cat: known 0, reviewed 1 ({KEPT})"
    assert cell_diff(LABELS_CSV, labels) == [("a.png", "dog", "", "1"),
                                             ("c.png", "person", "", "0"),
                                             ("f.png", "dog", "-1", "0")]
    assert labels.read_bytes() == REVIEWED_CSV.encode("utf-8")  # nothing else changed

    assert main(["import-labels", str(export), "--into", str(labels),
                 "--overwrite-conflicts"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        "conflict: f.png, cat: known 0, reviewed 1 (overwritten)"
    assert cell_diff(REVIEWED_CSV, labels) == [("f.png", "cat", "0", "1")]
    assert len(list((photos / ".mlrkit-backups").glob("labels.csv.bak-*"))) == 2


def test_audit_export_review_import_through_a_real_label_studio_server(label_studio, tmp_path,
                                                                       capsys):
    import yaml
    from test_recipe_run import make_dataset as make_squares

    server = label_studio
    photos = server.documents / f"audit-{tmp_path.name}"
    make_squares(photos, n=48)
    labels = photos / "labels.csv"
    recipe = {"name": "audit", "data": {"dataset": "csv", "root": str(photos)},
              "features": {"encoder": "resnet18", "weights": None, "image_size": 32, "seed": 0,
                           "cache": str(tmp_path / "cache"), "num_workers": 0, "spatial": False},
              "method": {"name": "linear"},
              "train": {"epochs": 8, "batch_size": 8, "lr": 0.05, "progress": False,
                        "device": "cpu"}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    audit, tasks_file = tmp_path / "audit", tmp_path / "tasks.json"
    assert main(["audit", "--config", str(tmp_path / "r.yaml"), "--out", str(audit),
                 "--folds", "3"]) == 0
    assert main(["export", "--format", "label-studio", str(audit), "--out", str(tasks_file),
                 "--image-root", f"{photos.name}/images"]) == 0
    assert "images with questioned labels, most suspect first" in capsys.readouterr().out
    issues = list(csv.DictReader((audit / "label_issues.csv").open(encoding="utf-8")))
    flagged = [r for r in issues if r["flagged"] == "1"]
    tasks = json.loads(tasks_file.read_text(encoding="utf-8"))
    assert [t["data"]["image_id"] for t in tasks] == list(dict.fromkeys(r["image"] for r in flagged))
    first = tasks[0]
    suspects = [r for r in flagged if r["image"] == first["data"]["image_id"]]
    assert first["data"]["suspect_labels"].startswith(
        f"{suspects[0]['class']}: {suspects[0]['given']} -> {1 - int(suspects[0]['given'])} ")
    config = tasks_file.with_suffix(".xml").read_text(encoding="utf-8")
    assert '<Text name="suspect_labels" value="$suspect_labels"/>' in config

    project = server.call("POST", "/api/projects/", {"title": "mlrkit audit",
                                                     "label_config": config})["id"]
    server.call("POST", "/api/storages/localfiles", {
        "project": project, "path": str(photos / "images"), "title": "photos",
        "use_blob_urls": True})
    imported = server.call("POST", f"/api/projects/{project}/import", tasks)
    assert imported["task_count"] == len(tasks)
    listed = server.call("GET", f"/api/tasks?project={project}&page_size=100")["tasks"]
    task_id = next(t["id"] for t in listed if t["data"]["image_id"] == first["data"]["image_id"])
    proposed = first["predictions"][0]["result"][0]["value"]["choices"] if \
        first["predictions"][0]["result"] else []
    server.call("POST", f"/api/tasks/{task_id}/annotations/",  # the reviewer agrees with audit
                {"result": choices(*proposed), "was_cancelled": False})
    export = tmp_path / "export.json"
    export.write_bytes(server.get(f"/api/projects/{project}/export?exportType=JSON"))

    before = labels.read_text(encoding="utf-8")
    capsys.readouterr()
    assert main(["import-labels", str(export), "--into", str(labels),
                 "--overwrite-conflicts"]) == 0
    expected = {(first["data"]["image_id"], r["class"], r["given"], str(1 - int(r["given"])))
                for r in suspects}
    assert set(cell_diff(before, labels)) == expected  # the questioned labels turned, no other
    assert "(overwritten)" in capsys.readouterr().out


def _import_in_a_process(args: tuple[str, str]) -> str:
    from mlrkit.review import import_labels

    return import_labels(args[0], args[1]).summary()


def test_two_imports_at_once_into_one_file_both_land_every_time(tmp_path):
    """Two processes import at the same moment (forked, started together), 20 times: the second
    waits for the first's lock and merges into its result, so every change of both is there."""
    import multiprocessing

    first = tmp_path / "first.json"   # a: dog -> 1, c: person -> 0
    second = tmp_path / "second.json"  # b: cat and dog -> 0, e: cat -> 1, dog and person -> 0
    first.write_text(json.dumps([task(1, "a.png", annotation(1, ["cat", "dog"], "2026-05-01")),
                                 task(2, "c.png", annotation(2, ["dog"], "2026-05-01"))]))
    second.write_text(json.dumps([task(3, "b.png", annotation(3, ["person"], "2026-05-01")),
                                  task(4, "e.png", annotation(4, ["cat"], "2026-05-01"))]))
    expected = (LABELS_CSV.replace("a.png,1,,0", "a.png,1,1,0")
                .replace("c.png,0,1,\n", "c.png,0,1,0\n").replace("b.png,,,1", "b.png,0,0,1")
                .replace("e.png,,,", "e.png,1,0,0"))
    with multiprocessing.get_context("fork").Pool(2) as pool:
        for round_ in range(20):
            labels = tmp_path / f"labels-{round_}.csv"
            labels.write_text(LABELS_CSV, encoding="utf-8")
            pool.map(_import_in_a_process, [(str(first), str(labels)), (str(second), str(labels))])
            assert labels.read_text(encoding="utf-8") == expected, round_
            assert not labels.with_name(f".{labels.name}.lock").exists()


@pytest.mark.parametrize(("annotations", "message"), [
    ([{"id": 1, "was_cancelled": False, "created_at": "2026-05-01"}],
     "annotation 1 has no result"),
    ([{"id": 2, "result": [{"from_name": "labels", "value": {"choices": ["cat"]}}],
       "created_at": "2026-05-01"}], "a result of type None"),
    ([{"id": 3, "result": [{"from_name": "labels", "type": "Choices",
                            "value": {"choices": ["cat"]}}], "created_at": "2026-05-01"}],
     "a result of type 'Choices'"),
    ([{**annotation(4, ["cat"], "2026-05-01"), "was_cancelled": "false"}],
     "was_cancelled is 'false', not true or false"),
])
def test_an_annotation_that_cannot_be_read_is_an_error_naming_the_task(annotations, message):
    with pytest.raises(DataFormatError, match=re.escape(message)) as error:
        reviewed_labels([task(5, "a.png", *annotations)], CLASSES, ["a.png"], "export.json")
    assert "export.json: task 5" in str(error.value)


def test_two_tasks_reviewing_one_image_differently_are_an_error_naming_both():
    tasks = [task(1, "a.png", annotation(1, ["cat"], "2026-05-01")),
             task(2, "a.png", annotation(2, ["dog"], "2026-05-02"))]
    with pytest.raises(DataFormatError, match="task 2 and export.json: task 1 review the same"):
        reviewed_labels(tasks, CLASSES, ["a.png"], "export.json")
    tasks[1] = task(2, "a.png", annotation(2, ["cat"], "2026-05-02"))  # the same review: fine
    assert reviewed_labels(tasks, CLASSES, ["a.png"])[0].tolist() == [1, 0, 0]


def test_skip_unreadable_imports_the_others_and_lists_the_skipped_task(tmp_path, capsys):
    make_dataset(tmp_path)
    labels = tmp_path / "labels.csv"
    export = tmp_path / "export.json"
    export.write_text(json.dumps([
        task(1, "a.png", annotation(1, ["cat", "dog"], "2026-05-01")),          # a: dog -> 1
        task(2, "c.png", {"id": 2, "was_cancelled": False, "created_at": "2026-05-01"}),
    ]))
    assert main(["import-labels", str(export), "--into", str(labels)]) == 2
    assert labels.read_text(encoding="utf-8") == LABELS_CSV  # stopped: nothing written
    capsys.readouterr()
    assert main(["import-labels", str(export), "--into", str(labels), "--skip-unreadable"]) == 0
    said = capsys.readouterr().out
    assert "skipped (unreadable, its image untouched): " in said and "task 2" in said
    assert labels.read_text(encoding="utf-8") == LABELS_CSV.replace("a.png,1,,0", "a.png,1,1,0")
