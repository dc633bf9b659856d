"""The finetune-recipes command: `list` shows every shipped config, `cp` copies a recipe or a config and never
overwrites."""

from __future__ import annotations

import pytest

from common import cli


def test_list_and_cp(tmp_path, capsys):
    cli.main(["list"])
    listed = capsys.readouterr().out
    assert "sentiment/sst2_minilm" in listed and "text_classification/trec_coarse" in listed

    cli.main(["cp", "sentiment", str(tmp_path)])
    cli.main(["cp", "text_classification/trec_coarse", str(tmp_path / "mine.yaml")])
    assert (tmp_path / "sentiment.py").read_text().startswith('"""Sentiment')
    assert "coarse_label" in (tmp_path / "mine.yaml").read_text()
    with pytest.raises(SystemExit):  # never overwrites
        cli.main(["cp", "sentiment", str(tmp_path)])
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["cp", "sentimnt", str(tmp_path / "x.py")])
    assert "did you mean 'sentiment'" in capsys.readouterr().err
