"""Offline assets: registry, sha256 verification, re-fetch of corrupted files, clear errors."""

from __future__ import annotations

import os
import shutil

import pytest

from course_utils import assets, config


def test_unknown_asset_lists_valid_names():
    with pytest.raises(ValueError, match="choose one of"):
        assets.get_asset("imdb")


def test_prepared_assets_are_complete():
    for name in assets.ASSETS:
        folder = assets.extract(name)
        assert (folder / ".complete").exists()
    assert (assets.model_dir() / "model.safetensors").stat().st_size > 80e6
    assert len(list(assets.data_dir().glob("*_GroundTruth.txt"))) == 4


def _fake_download(source_dir):
    def download(asset, dest):
        shutil.copy(source_dir / asset.filename, dest / asset.filename)

    return download


def test_corrupted_cache_file_is_detected_and_refetched(tmp_path, monkeypatch):
    real = config.cache_dir() / "downloads"
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    (tmp_path / "downloads").mkdir()
    bad = tmp_path / "downloads" / assets.ASSETS["vader"].filename
    bad.write_bytes(b"not the archive")
    calls = []
    monkeypatch.setattr(assets, "_pip_download", lambda a, d: (calls.append(a.name), _fake_download(real)(a, d)))
    path = assets.fetch("vader")
    assert calls == ["vader"] and assets.sha256_of(path) == assets.ASSETS["vader"].sha256
    assert assets.fetch("vader") == path and calls == ["vader"], "a verified file is not downloaded again"


def test_tampered_download_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    monkeypatch.setattr(assets, "_pip_download", lambda a, d: (d / a.filename).write_bytes(b"evil"))
    with pytest.raises(assets.AssetError, match="sha256"):
        assets.fetch("vader")
    assert not (tmp_path / "downloads" / assets.ASSETS["vader"].filename).exists()


def test_no_network_and_no_cache_names_the_prepare_command(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))

    def offline(cmd, **kwargs):
        import subprocess

        return subprocess.CompletedProcess(cmd, 1, "", "network unreachable")

    monkeypatch.setattr(assets.subprocess, "run", offline)
    with pytest.raises(assets.AssetError, match="course prepare"):
        assets.fetch("minilm")


def test_offline_mode_sets_hugging_face_switches(monkeypatch):
    monkeypatch.delenv("COURSE_MODE", raising=False)
    for name in config.OFFLINE_SWITCHES:
        monkeypatch.delenv(name, raising=False)
    assert config.apply_mode() == "offline"
    assert all(os.environ[name] == "1" for name in config.OFFLINE_SWITCHES)
    monkeypatch.setenv("COURSE_MODE", "online")
    assert config.apply_mode() == "online"
    assert not any(os.environ.get(name) == "1" for name in config.OFFLINE_SWITCHES)
    monkeypatch.setenv("COURSE_MODE", "offline")
    config.apply_mode()


def test_bad_settings_get_clear_errors(monkeypatch):
    monkeypatch.setenv("COURSE_MODE", "cloud")
    with pytest.raises(ValueError, match="COURSE_MODE='cloud' is not valid: allowed offline, online"):
        config.mode()
    monkeypatch.setenv("COURSE_FAST", "maybe")
    with pytest.raises(ValueError, match="COURSE_FAST='maybe' is not valid: allowed 1, 0, true"):
        config.is_fast()


def test_online_mode_uses_hub_ids(monkeypatch):
    from course_utils import modeling

    monkeypatch.setenv("COURSE_MODE", "online")
    assert modeling.model_source() == assets.ONLINE_MODEL_ID
