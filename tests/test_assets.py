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


def _npm_asset(tmp_path, monkeypatch, content: bytes = b"/* d3 */ var d3 = {};") -> assets.Asset:
    """Put a tiny npm-style tarball behind a file:// URL and register it as the d3 asset (no network)."""
    import dataclasses
    import io
    import tarfile

    archive = tmp_path / "registry" / "d3-5.7.0.tgz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        member = tarfile.TarInfo("package/dist/d3.min.js")
        member.size = len(content)
        tar.addfile(member, io.BytesIO(content))
    fake = dataclasses.replace(assets.ASSETS["d3"], url=archive.as_uri(), sha256=assets.sha256_of(archive))
    monkeypatch.setitem(assets.ASSETS, "d3", fake)
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    return fake


def test_npm_tarball_is_downloaded_checked_and_its_script_extracted(tmp_path, monkeypatch):
    fake = _npm_asset(tmp_path, monkeypatch)
    calls = []
    real = assets._url_download
    monkeypatch.setattr(assets, "_url_download", lambda a, d: (calls.append(a.name), real(a, d)))
    monkeypatch.setattr(assets, "_pip_download", lambda a, d: pytest.fail("an npm asset must not go through pip"))
    bad = tmp_path / "cache" / "downloads" / fake.filename
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"a truncated download")
    assert assets.sha256_of(assets.fetch("d3")) == fake.sha256 and calls == ["d3"], "a corrupt copy is fetched again"
    assert assets.script_file("d3").read_text() == "/* d3 */ var d3 = {};"
    assert assets.fetch("d3") == bad and calls == ["d3"], "a verified file is not downloaded again"
    assert assets.prepare(["d3"], verbose=False)["d3"] == assets.script_file("d3").parent


def test_tampered_npm_tarball_is_refused(tmp_path, monkeypatch):
    fake = _npm_asset(tmp_path, monkeypatch)
    (tmp_path / "registry" / "d3-5.7.0.tgz").write_bytes(b"evil")
    with pytest.raises(assets.AssetError, match="d3-5.7.0.tgz from URL failed its sha256 check"):
        assets.fetch("d3")
    assert not (tmp_path / "cache" / "downloads" / fake.filename).exists()


def test_npm_download_without_network_names_the_prepare_command(tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    closed = dataclasses.replace(assets.ASSETS["jquery"], url="http://127.0.0.1:9/jquery-2.2.4.tgz")  # nothing there
    monkeypatch.setitem(assets.ASSETS, "jquery", closed)
    with pytest.raises(assets.AssetError, match=r"could not download http://127.0.0.1:9/.*bash course prepare") as err:
        assets.fetch("jquery")
    assert "\n" not in str(err.value)


def test_javascript_assets_are_the_pinned_npm_releases():
    pinned = {"requirejs": "RequireJS 2.3.6", "d3": "d3js.org v5.7.0", "jquery": "jQuery v2.2.4"}
    for name, marker in pinned.items():
        asset = assets.ASSETS[name]
        assert asset.registry == "npm" and asset.url.endswith("/" + asset.filename) and asset.licence
        assert marker in assets.script_file(name).read_text(encoding="utf-8")[:3000], name
    with pytest.raises(ValueError, match="not a JavaScript asset"):
        assets.script_file("vader")
