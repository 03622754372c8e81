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


def _npm_tarball(tmp_path, monkeypatch, name: str, members: dict[str, bytes], filename: str) -> assets.Asset:
    """Put an npm-style tarball of `members` behind a file:// URL and register it as asset `name` (no network)."""
    import dataclasses
    import io
    import tarfile

    archive = tmp_path / "registry" / filename
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        for path, raw in members.items():
            member = tarfile.TarInfo(path)
            member.size = len(raw)
            tar.addfile(member, io.BytesIO(raw))
    fake = dataclasses.replace(assets.ASSETS[name], url=archive.as_uri(), sha256=assets.sha256_of(archive))
    monkeypatch.setitem(assets.ASSETS, name, fake)
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    return fake


def _npm_asset(tmp_path, monkeypatch, content: bytes = b"/* d3 */ var d3 = {};") -> assets.Asset:
    """A tiny tarball registered as the d3 asset."""
    return _npm_tarball(tmp_path, monkeypatch, "d3", {"package/dist/d3.min.js": content}, "d3-5.7.0.tgz")


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


# ---------------------------------------------------------------- SpamAssassin e-mails (npm, converted to a CSV)

LEAKY_HEADER_LINE = r"(?im)^[\s>|*^)]*(?:x-spam[\w-]*|received):"


def test_spam_assassin_csv_is_a_learners_text_label_file():
    import pandas as pd

    from course_utils import data

    path = assets.spam_assassin_csv()
    raw = path.read_bytes()
    raw.decode("utf-8")  # strict: the file is UTF-8
    assert raw.startswith(b"text,label,group\n") and b"\r" not in raw
    frame = pd.read_csv(path, keep_default_na=False)
    assert list(frame.columns) == ["text", "label", "group"]
    # 6,046 e-mails in the package; 12 spam with an empty body (HTML that only shows images) and 125 exact duplicate
    # texts (41 ham, 84 spam; the first copy in folder order stays) are dropped
    assert frame["label"].value_counts().to_dict() == {"ham": 4109, "spam": 1800}
    assert frame.groupby("group")["label"].agg(set).to_dict() == {
        group: {label} for group, label in assets.SPAM_ASSASSIN_GROUPS.items()
    }
    stats = assets.spam_assassin_stats()
    assert sum(s["messages"] for s in stats.values()) == 6046
    assert sum(s["empty_dropped"] for s in stats.values()) == 12
    assert sum(s["duplicates_dropped"] for s in stats.values()) == 125
    assert {group: s["rows"] for group, s in stats.items()} == frame["group"].value_counts().to_dict()
    texts = frame["text"]
    assert texts.str.match(r"Subject: [^\n]*\n\n\S").all(), "Subject line, one blank line, a non-empty body"
    assert not texts.str.contains(LEAKY_HEADER_LINE).any(), "no X-Spam-* or Received: header line, even quoted"
    assert not texts.duplicated().any() and not texts.str.contains("\r").any()
    assert (texts == texts.str.strip()).all()
    learner = data.load_text_file(path)  # what chapter 00 does with COURSE_DATA=.../spam_assassin.csv
    assert len(learner) == len(frame) and sorted(learner["label_name"].unique()) == ["ham", "spam"]


SPAM_MAIL = (
    b"From bounce@example.com  Thu Aug 22 13:17:22 2002\n"
    b"Received: from mail.example.com (mail [10.0.0.1])\n\tby localhost with SMTP\n"
    b"X-Spam-Status: Yes, hits=9.9 required=5.0\n"
    b"From: Deals <deals@example.com>\n"
    b"Subject: =?iso-8859-1?q?Caf=E9_deals?=\n"
    b"MIME-Version: 1.0\n"
    b'Content-Type: multipart/alternative; boundary="b1"\n\n'
    b"--b1\n"
    b'Content-Type: text/plain; charset="iso-8859-1"\n'
    b"Content-Transfer-Encoding: quoted-printable\n\n"
    b"Caf=E9 prices   \r\n\r\n\r\n\r\nas quoted:\n"
    b"> X-Spam-Status: Yes, hits=7.1\n"
    b">\ttests=RAZOR_CHECK\n"
    b"> Received: from relay\n"
    b"the end\n"
    b"--b1\n"
    b"Content-Type: text/html\n\n"
    b"<p>not used</p>\n"
    b"--b1--\n"
)


def test_spam_assassin_mail_keeps_subject_and_body_only():
    text, scrubbed, x_spam = assets.spam_assassin_row(SPAM_MAIL)
    assert text == "Subject: Café deals\n\nCafé prices\n\nas quoted:\nthe end"
    assert scrubbed == 3 and x_spam
    html_only = (
        b"Subject: Win \xa3100\nContent-Type: text/html; charset=iso-8859-1\n\n"
        b"<html><head><style>p {color: red}</style></head><body><script>x()</script>"
        b"<p>Click&nbsp;<b>here</b> &amp; win</p><!-- hidden --></body></html>\n"
    )
    assert assets.spam_assassin_row(html_only) == ("Subject: Win £100\n\nClick\xa0 here  & win", 0, False)
    image_only = (
        b'Subject: look\nContent-Type: multipart/related; boundary="b"\n\n'
        b"--b\nContent-Type: image/gif\nContent-Transfer-Encoding: base64\n\nR0lGODlh\n--b--\n"
    )
    assert assets.spam_assassin_row(image_only) == ("", 0, False), "an empty body: the extraction drops the e-mail"


def _spam_asset(tmp_path, monkeypatch, mails: dict[str, bytes]) -> assets.Asset:
    """A tarball of raw e-mails registered as the spamassassin asset."""
    members = {f"package/data/{name}": raw for name, raw in mails.items()}
    return _npm_tarball(tmp_path, monkeypatch, "spamassassin", members, assets.ASSETS["spamassassin"].filename)


HAM_MAIL = b"Received: from list\nSubject: Re: [SAtalk] rules\n\nSee the docs.\n"
MD5 = "0123456789abcdef0123456789abcdef"


def test_spam_assassin_tarball_is_converted_once_then_read_offline(tmp_path, monkeypatch):
    import csv

    mails = {f"easy-ham-1/00001.{MD5}.txt": HAM_MAIL, f"spam-2/00001.{MD5}.txt": SPAM_MAIL}
    mails |= {f"spam-2/00002.{MD5}.txt": SPAM_MAIL, f"spam-1/00001.{MD5}.json": b'{"text": "ignored"}'}
    _spam_asset(tmp_path, monkeypatch, mails)
    calls = []
    real = assets._url_download
    monkeypatch.setattr(assets, "_url_download", lambda a, d: (calls.append(a.name), real(a, d)))
    path = assets.spam_assassin_csv()
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [
        {"text": "Subject: Re: [SAtalk] rules\n\nSee the docs.", "label": "ham", "group": "easy-ham-1"},
        {"text": "Subject: Café deals\n\nCafé prices\n\nas quoted:\nthe end", "label": "spam", "group": "spam-2"},
    ]
    assert assets.spam_assassin_stats()["spam-2"] == {
        "messages": 2,
        "x_spam_headers_dropped": 2,
        "header_lines_scrubbed": 6,
        "empty_dropped": 0,
        "duplicates_dropped": 1,
        "rows": 1,
    }
    (tmp_path / "registry" / assets.ASSETS["spamassassin"].filename).unlink()  # the registry is gone: offline
    assert assets.spam_assassin_csv() == path and calls == ["spamassassin"], "converted once, then read offline"


def test_tampered_spam_assassin_tarball_is_refused(tmp_path, monkeypatch):
    fake = _spam_asset(tmp_path, monkeypatch, {f"spam-1/00001.{MD5}.txt": SPAM_MAIL})
    tampered = tmp_path / "registry" / fake.filename
    with open(tampered, "ab") as handle:
        handle.write(b"\0")  # one byte appended: still a readable gzip tarball, no longer the pinned one
    with pytest.raises(assets.AssetError, match=f"{fake.filename} from URL failed its sha256 check"):
        assets.spam_assassin_csv()
    assert not (tmp_path / "cache" / "downloads" / fake.filename).exists()
    assert not (tmp_path / "cache" / "assets").exists() or not any((tmp_path / "cache" / "assets").iterdir())


def test_spam_assassin_tarball_with_an_unknown_folder_is_refused(tmp_path, monkeypatch):
    _spam_asset(tmp_path, monkeypatch, {f"spam-3/00001.{MD5}.txt": SPAM_MAIL})
    with pytest.raises(assets.AssetError, match="unknown folder 'spam-3'"):
        assets.spam_assassin_csv()


def test_spam_assassin_is_the_pinned_npm_release_and_prepared_with_the_rest():
    asset = assets.ASSETS["spamassassin"]
    assert asset.registry == "npm" and asset.url.endswith("/-/" + asset.filename)
    assert asset.sha256 == "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb"
    assert "PDDL-1.0" in asset.licence and "CC0-1.0" in asset.licence and "Apache-2.0" in asset.licence
    assert "spamassassin" in assets.prepare(verbose=False)
