"""Chapter 07: the run log (append, load, skip corrupt lines, compare) and the Hugging Face model card."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import threading
import warnings
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from course_utils import config, report, tracking

SHA = "ab" * 32


def lines(directory: Path) -> list[str]:
    """The run log's lines."""
    return tracking.runs_path(directory).read_text(encoding="utf-8").splitlines()


# ---------------------------------------------------------------------------------------------------- run log


def test_runs_path_default_and_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_RESULTS", str(tmp_path / "elsewhere"))
    assert tracking.runs_path() == tmp_path / "elsewhere" / "runs.jsonl"
    assert tracking.runs_path(tmp_path) == tmp_path / "runs.jsonl"


def test_log_two_runs_and_load_them_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_FAST", "1")
    first = tracking.log_run("07_a", {"accuracy": 0.81, "model": "minilm"}, {"lr": 5e-5}, directory=tmp_path)
    second = tracking.log_run("07_a", {"accuracy": 0.83, "model": "minilm"}, {"lr": 1e-4}, directory=tmp_path)
    tracking.log_run("07_b", {"loss": 0.4}, directory=tmp_path)
    assert len(lines(tmp_path)) == 3 and json.loads(lines(tmp_path)[1]) == second
    assert re.fullmatch(r"[0-9a-f]{12}", first["run_id"]) and first["run_id"] != second["run_id"]
    assert first["mode"] == "fast" and first["threads"] == config.thread_count()
    assert first["device"] == str(config.device()) and first["versions"] == config.versions()
    when = datetime.fromisoformat(first["time"])
    assert when.utcoffset() == timedelta(0) and when.microsecond == 0
    assert abs((datetime.now(when.tzinfo) - when).total_seconds()) < 60

    runs = tracking.load_runs("07_a", tmp_path)
    assert list(runs.columns) == [*tracking.RUN_COLUMNS, "accuracy", "model", "param.lr"]
    assert runs["accuracy"].tolist() == [0.81, 0.83] and runs["param.lr"].tolist() == [5e-5, 1e-4]
    assert runs["run_id"].tolist() == [first["run_id"], second["run_id"]]
    everything = tracking.load_runs(directory=tmp_path)
    assert everything["chapter"].tolist() == ["07_a", "07_a", "07_b"]
    assert everything["loss"].isna().tolist() == [True, True, False]


def test_full_mode_is_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_FAST", "0")
    assert tracking.log_run("07_a", {"x": 1}, directory=tmp_path)["mode"] == "full"


def test_no_log_gives_an_empty_table_with_the_run_columns(tmp_path: Path) -> None:
    runs = tracking.load_runs("07_a", tmp_path)
    assert runs.empty and list(runs.columns) == tracking.RUN_COLUMNS
    tracking.log_run("07_b", {"x": 1}, directory=tmp_path)
    runs = tracking.load_runs("07_a", tmp_path)  # a file, but no run of this chapter
    assert runs.empty and list(runs.columns) == tracking.RUN_COLUMNS


def test_a_half_written_line_is_skipped_with_one_warning(tmp_path: Path) -> None:
    tracking.log_run("07_a", {"accuracy": 0.8}, directory=tmp_path)
    tracking.log_run("07_a", {"accuracy": 0.9}, directory=tmp_path)
    path = tracking.runs_path(tmp_path)
    whole = json.dumps(tracking.log_run("07_a", {"accuracy": 0.7}, directory=tmp_path))
    path.write_text("\n".join(lines(tmp_path)[:2]) + "\n" + whole[: len(whole) // 2], encoding="utf-8")  # a crash
    with pytest.warns(UserWarning) as caught:
        runs = tracking.load_runs("07_a", tmp_path)
    assert len(caught) == 1 and str(caught[0].message).startswith(f"skipped 1 corrupt line(s) of {path}")
    assert runs["accuracy"].tolist() == [0.8, 0.9]

    tracking.log_run("07_a", {"accuracy": 0.6}, directory=tmp_path)  # appends after the half line, not onto it
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('["edited", "by hand"]\n{"run_id": "x"}\n\n')  # JSON, but not a run; the blank line is fine
    with pytest.warns(UserWarning, match="skipped 3 corrupt line"):
        assert tracking.load_runs("07_a", tmp_path)["accuracy"].tolist() == [0.8, 0.9, 0.6]


def test_a_line_that_is_not_utf8_is_skipped(tmp_path: Path) -> None:
    tracking.log_run("07_a", {"name": "café"}, directory=tmp_path)
    path = tracking.runs_path(tmp_path)
    assert path.read_bytes().isascii()  # json escapes non-ASCII, so no crash can cut a line inside a character
    with open(path, "ab") as handle:
        handle.write('{"run_id": "café"}\n'.encode("latin-1"))  # edited by hand in another encoding
    with pytest.warns(UserWarning, match="skipped 1 corrupt line"):
        assert tracking.load_runs(directory=tmp_path)["name"].tolist() == ["café"]


def test_a_clean_log_loads_without_warnings(tmp_path: Path) -> None:
    tracking.log_run("07_a", {"accuracy": 0.8}, directory=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(tracking.load_runs("07_a", tmp_path)) == 1


def test_concurrent_appends_keep_every_line_whole(tmp_path: Path) -> None:
    def work(worker: int) -> None:
        for step in range(20):
            tracking.log_run("07_a", {"worker": worker, "step": step, "pad": "x" * 5000}, directory=tmp_path)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(lines(tmp_path)) == 80 and all(json.loads(line)["chapter"] == "07_a" for line in lines(tmp_path))
    runs = tracking.load_runs("07_a", tmp_path)
    assert sorted(zip(runs["worker"], runs["step"], strict=True)) == [(w, s) for w in range(4) for s in range(20)]


@pytest.mark.parametrize(
    "figures, params, message",
    [
        ({"x": [1, 2]}, None, "figure 'x' must be a number"),
        ({"x": float("nan")}, None, "figure 'x' must be finite"),
        ([("x", 1)], None, "figures must be a dict"),
        ({"": 1}, None, "figure names must be non-empty"),
        ({"x": 1}, {"lr": {"a": 1}}, "figure 'lr' must be a number"),
        ({"x": 1}, ["lr"], "params must be a dict"),
    ],
)
def test_non_scalar_figures_and_params_are_refused(tmp_path: Path, figures, params, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tracking.log_run("07_a", figures, params, directory=tmp_path)
    assert not tracking.runs_path(tmp_path).exists()


def test_numpy_scalars_are_unwrapped(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    run = tracking.log_run("07_a", {"a": np.float32(0.25), "n": np.int64(3)}, directory=tmp_path)
    assert run["figures"] == {"a": 0.25, "n": 3} and json.loads(lines(tmp_path)[0])["figures"] == {"a": 0.25, "n": 3}


def test_bad_chapter_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="chapter must be a file-name-safe name"):
        tracking.log_run("../escape", {"x": 1}, directory=tmp_path)
    with pytest.raises(ValueError, match="chapter must be a file-name-safe name"):
        tracking.load_runs("a/b", tmp_path)


def test_compare_runs_gives_mean_and_std_per_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_FAST", "1")
    for accuracy, loss in [(0.80, 0.5), (0.82, 0.4), (0.84, 0.3)]:
        tracking.log_run("07_a", {"accuracy": accuracy, "loss": loss, "data": "movie"}, directory=tmp_path)
    tracking.log_run("07_b", {"accuracy": 0.1}, directory=tmp_path)  # another chapter: left out
    monkeypatch.setenv("COURSE_FAST", "0")
    for accuracy in (0.90, 0.92):
        tracking.log_run("07_a", {"accuracy": accuracy, "loss": 0.2, "data": "movie"}, directory=tmp_path)
    table = tracking.compare_runs("07_a", ["accuracy", "loss"], tmp_path)
    assert list(table.columns) == ["run", "mode", "time", "accuracy", "loss"] and len(table) == 5 + 4
    assert table["accuracy"].iloc[:5].tolist() == [0.80, 0.82, 0.84, 0.90, 0.92]

    def summary(kind: str, mode: str) -> tuple[float, float]:
        row = table[(table["run"] == kind) & (table["mode"] == mode)]
        return row["accuracy"].item(), row["loss"].item()

    assert summary("mean", "fast") == pytest.approx((0.82, 0.4))
    assert summary("std", "fast") == pytest.approx((0.02, 0.1))  # sample standard deviation (ddof=1)
    assert summary("mean", "full") == pytest.approx((0.91, 0.2))
    assert summary("std", "full") == pytest.approx((0.01 * 2**0.5, 0.0))


def test_compare_runs_refuses_unknown_non_numeric_and_missing(tmp_path: Path) -> None:
    tracking.log_run("07_a", {"accuracy": 0.8, "data": "movie"}, {"lr": 0.1}, directory=tmp_path)
    with pytest.raises(ValueError, match=r"figure 'acc' was not logged for chapter '07_a'; available: accuracy, data$"):
        tracking.compare_runs("07_a", ["acc"], tmp_path)
    with pytest.raises(ValueError, match="figure 'data' of chapter '07_a' is not a number"):
        tracking.compare_runs("07_a", ["data"], tmp_path)
    with pytest.raises(ValueError, match="figures must be a non-empty list"):
        tracking.compare_runs("07_a", [], tmp_path)
    with pytest.raises(ValueError, match="no runs of chapter '07_z'"):
        tracking.compare_runs("07_z", ["accuracy"], tmp_path)


def test_a_figure_named_like_a_run_column_keeps_both(tmp_path: Path) -> None:
    tracking.log_run("04_compression", {"threads": 1, "accuracy": 0.8}, directory=tmp_path)  # chapter 04 does this
    runs = tracking.load_runs("04_compression", tmp_path)
    assert runs["threads"].item() == config.thread_count() and runs["figure.threads"].item() == 1
    assert tracking.compare_runs("04_compression", ["threads"], tmp_path)["threads"].iloc[0] == 1


def test_record_logs_a_run_unless_told_not_to(tmp_path: Path) -> None:
    report.record("07_x", {"accuracy": 0.83, "epochs": 2}, tmp_path)
    runs = tracking.load_runs("07_x", tmp_path)
    assert len(runs) == 1 and runs["accuracy"].item() == 0.83 and runs["epochs"].item() == 2
    assert report.load("07_x", tmp_path) == {"accuracy": 0.83, "epochs": 2}
    report.record("07_x", {"accuracy": 0.9}, tmp_path, track=False)
    assert len(tracking.load_runs("07_x", tmp_path)) == 1 and report.load("07_x", tmp_path) == {"accuracy": 0.9}
    with pytest.raises(ValueError, match="figure 'x' must be"):
        report.record("07_x", {"x": [1]}, tmp_path)
    assert len(lines(tmp_path)) == 1


@pytest.mark.parametrize("first", ["report", "tracking"])
def test_report_and_tracking_import_in_either_order(first: str) -> None:
    code = f"import course_utils.{first}; from course_utils import report, tracking; print(report.tracking is tracking)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]


# ------------------------------------------------------------------------------------------------- model card


@pytest.fixture()
def facts() -> tracking.CardFacts:
    """The facts of a private model with two variants."""
    return tracking.CardFacts(
        model_name="minilm-sentiment",
        base_model="sentence-transformers/all-MiniLM-L6-v2",
        dataset="movie-review-snippets",
        train_size=8000,
        test_size=1000,
        metrics={"accuracy": 0.85, "f1_macro": 0.84},
        variants=[
            {"variant": "fp32", "accuracy": 0.85, "size_mb": 90.9, "latency_ms": 13.4},
            {"variant": "int8 | onnx", "accuracy": 0.8475, "size_mb": 23.5},
        ],
        privacy_epsilon=7.934,
        privacy_delta=1e-5,
        robustness=None,
        intended_use="Sorting English movie-review sentences into positive and negative.",
        limitations=["Tested on English only.", "Accuracy drops on tweets."],
        sha256=SHA,
    )


def test_model_card_metadata_round_trips(facts: tracking.CardFacts) -> None:
    card = tracking.model_card(facts)
    assert card.data.eval_results[0].metric_value == 0.85
    again = ModelCard(str(card)).data
    meta = again.to_dict()
    assert {k: meta[k] for k in ("language", "license", "library_name", "pipeline_tag", "base_model")} == {
        "language": "en",
        "license": "mit",
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
        "base_model": "sentence-transformers/all-MiniLM-L6-v2",
    }
    assert meta["datasets"] == ["movie-review-snippets"] and meta["metrics"] == ["accuracy", "f1_macro"]
    assert meta["tags"] == ["sentiment", "trustworthy-llm-course"]
    index = meta["model-index"]
    assert index[0]["name"] == "minilm-sentiment"
    assert [(r["task"]["type"], r["dataset"]["type"], r["metrics"]) for r in index[0]["results"]] == [
        (
            "text-classification",
            "movie-review-snippets",
            [{"type": "accuracy", "value": 0.85}, {"type": "f1_macro", "value": 0.84}],
        )
    ]  # the hub groups the metrics of one task and dataset into one result
    assert [(r.metric_type, r.metric_value) for r in again.eval_results] == [("accuracy", 0.85), ("f1_macro", 0.84)]


def test_model_card_body_has_every_section_and_fact(facts: tracking.CardFacts) -> None:
    text = tracking.model_card(facts).text
    sections = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert sections == [
        "Model details",
        "Intended use",
        "Training data",
        "Evaluation",
        "Privacy",
        "Robustness",
        "Limitations",
        "How to use",
    ]
    assert text.lstrip().startswith("# minilm-sentiment\n")
    assert f"`{SHA}`" in text and "`model.safetensors`" in text and "sentence-transformers/all-MiniLM-L6-v2" in text
    assert "8000 training sentences, 1000 test sentences" in text
    assert "| accuracy | 0.850 |" in text and "| f1_macro | 0.840 |" in text
    assert "| variant | accuracy | size_mb | latency_ms |" in text
    assert "| fp32 | 0.850 | 90.9 | 13.4 |" in text and "| int8 \\| onnx | 0.848 | 23.5 |  |" in text
    assert "epsilon = 7.93, delta = 1e-05" in text and "Renyi-DP (RDP) accountant" in text
    assert "no formal guarantee" not in text
    assert tracking.NO_ROBUSTNESS in text
    assert "- Tested on English only.\n- Accuracy drops on tweets." in text
    assert "bash course serve" in text and "POST /predict" in text


def test_model_card_without_privacy_variants_or_robustness_gaps(facts: tracking.CardFacts) -> None:
    plain = dataclasses.replace(
        facts, privacy_epsilon=None, privacy_delta=None, variants=[], robustness="Accuracy 0.71 under typos."
    )
    text = tracking.model_card(plain).text
    assert "Trained without differential privacy: no formal guarantee" in text and "epsilon =" not in text
    assert "Variants of the same model" not in text and "| variant |" not in text
    assert "Accuracy 0.71 under typos." in text and tracking.NO_ROBUSTNESS not in text
    infinite = dataclasses.replace(facts, privacy_epsilon=float("inf"), privacy_delta=None)  # train(...) w/o DP
    assert "no formal guarantee" in tracking.model_card(infinite).text
    prv = dataclasses.replace(facts, accountant="prv")
    assert "PRV accountant" in tracking.model_card(prv).text


def test_model_card_names_your_classes_and_drops_the_sentiment_tag(facts: tracking.CardFacts) -> None:
    assert "A sentiment classifier (negative / positive)" in tracking.model_card(facts).text
    assert "sentiment" in tracking.model_card(facts).data.tags
    yours = tracking.model_card(dataclasses.replace(facts, classes=("billing", "outage", "other")))
    assert "A text classifier (billing / outage / other)" in yours.text and "sentiment classifier" not in yours.text
    assert yours.data.tags == ["trustworthy-llm-course"]


def test_save_card_writes_atomically(facts: tracking.CardFacts, tmp_path: Path) -> None:
    card = tracking.model_card(facts)
    target = tracking.save_card(card, tmp_path / "model" / "README.md")
    assert target == tmp_path / "model" / "README.md"
    assert [p.name for p in target.parent.iterdir()] == ["README.md"]  # no temporary left behind
    again = ModelCard(target.read_text(encoding="utf-8"))
    assert again.data.to_dict() == card.data.to_dict() and again.text == card.text


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_name": ""}, "model_name must be a non-empty string, got ''"),
        ({"metrics": {"accuracy": 85.0}}, r"metric 'accuracy' must be a number in \[0, 1\], got 85.0; pass a fraction"),
        ({"metrics": {"accuracy": -0.1}}, r"metric 'accuracy' must be a number in \[0, 1\]"),
        ({"metrics": {}}, "metrics must be a non-empty dict"),
        ({"privacy_epsilon": -1.0}, "privacy_epsilon must be > 0, got -1.0; pass the epsilon"),
        ({"privacy_epsilon": 0}, "privacy_epsilon must be > 0, got 0"),
        ({"privacy_epsilon": float("nan")}, "privacy_epsilon must be > 0, got nan"),
        ({"privacy_delta": None}, r"privacy_delta must be in \(0, 1\) with a finite epsilon, got None"),
        ({"sha256": "abc"}, "sha256 must be 64 hex characters, got 'abc'"),
        ({"sha256": "g" * 64}, "sha256 must be 64 hex characters"),
        ({"sha256": SHA + "0"}, "sha256 must be 64 hex characters"),
        ({"train_size": 0}, "train_size must be a whole number >= 1, got 0"),
        ({"limitations": []}, "limitations must list at least one"),
        ({"variants": [{"variant": "x", "speed": 2}]}, "a variant row must be a dict with keys among"),
        ({"variants": [{"variant": "x", "accuracy": 2}]}, r"variant 'x' accuracy must be a number in \[0, 1\]"),
        ({"accountant": "gdp"}, "accountant must be one of rdp, prv, got 'gdp'"),
        ({"classes": ("spam",)}, r"classes must name at least two classes, got \('spam',\)"),
    ],
)
def test_bad_facts_get_one_line(facts: tracking.CardFacts, change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        dataclasses.replace(facts, **change)
    assert "\n" not in str(caught.value)
