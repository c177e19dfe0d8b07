"""The `mlrkit` command: data summary numbers, mask files, errors as messages."""

from pathlib import Path

import numpy as np
import pytest
from conftest import real_data

from mlrkit.cli import main
from mlrkit.data.protocols import ProtocolMask


@pytest.fixture
def coco() -> Path:
    return real_data("coco2014-6k")


def test_data_summary_prints_counts_and_mask_stats(capsys, tmp_path, coco):
    mask_file = tmp_path / "mask.npz"
    code = main(["data", "summary", "--dataset", "csv", "--root", str(coco),
                 "--protocol", "partial", "--known", "0.1", "--seed", "0",
                 "--save-mask", str(mask_file)])
    out = capsys.readouterr().out
    assert code == 0
    assert "images            6,168" in out
    assert "classes           80" in out
    assert "splits            train 4,948, test 1,220" in out
    assert "person            3,400" in out
    assert "mask on split 'train'" in out
    mask = ProtocolMask.load(mask_file)
    assert mask.shape == (4948, 80)
    assert f"known entries      {mask.known.mean():.2%}" in out


def test_single_positive_summary_uses_cole_seed(capsys, coco):
    assert main(["data", "summary", "--dataset", "csv", "--root", str(coco),
                 "--protocol", "single_positive", "--mode", "cole"]) == 0
    out = capsys.readouterr().out
    assert "seed=1200" in out
    assert "known positives    4,948" in out


def test_errors_are_messages_not_tracebacks(capsys, tmp_path, coco):
    assert main(["data", "summary", "--dataset", "csv", "--root", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["data", "summary", "--dataset", "voc9", "--root", str(coco)]) == 2
    assert "unknown dataset 'voc9'" in capsys.readouterr().err
    assert main(["data", "summary", "--dataset", "csv", "--root", str(coco),
                 "--protocol", "partial", "--mode", "cole"]) == 2
    assert "mode" in capsys.readouterr().err


def test_known_share_matches_requested_proportion(capsys, coco):
    main(["data", "summary", "--dataset", "csv", "--root", str(coco), "--protocol", "partial",
          "--known", "0.5", "--seed", "3"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("  known entries"))
    share = float(line.split()[2].rstrip("%")) / 100
    assert np.isclose(share, 0.5, atol=0.01)
