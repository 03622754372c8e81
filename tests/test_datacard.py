"""The committed data card matches what the data says today."""

from __future__ import annotations

from course_harness import datacard
from course_utils import assets, config


def test_data_card_is_current():
    committed = (config.repo_root() / "data" / "README.md").read_text()
    assert committed == datacard.render(), "run `python -m course_harness datacard` and commit data/README.md"


def test_label_rule_agrees_with_other_labels_mostly():
    agree = datacard.label_agreement()
    assert 0.93 < agree["pang_lee"] < 0.99 and agree["pang_lee_n"] == 10568
    assert 0.9 < agree["fresh"] <= 1.0 and agree["fresh_n"] > 9000


def test_data_card_separates_the_code_licence_from_the_data_and_weights_licences():
    card = datacard.render()
    assert "under the MIT licence (`LICENSE` at the repository root)" in card
    for asset in assets.ASSETS.values():
        assert f"| {asset.licence} |" in card, asset.name
    assert "Apache-2.0" in assets.ASSETS["minilm"].licence and "MIT (package)" in assets.ASSETS["minilm"].licence
