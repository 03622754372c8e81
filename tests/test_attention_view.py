"""Chapter 05's attention views: self-contained HTML, drawn by headless Chromium with networking off."""

from __future__ import annotations

import functools
import html.parser
import http.server
import importlib.util
import os
import secrets
import sys
import threading
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import psutil
import pytest
import torch
from bertviz import head_view
from nbformat.sign import NotebookNotary
from transformers import BertConfig, BertModel

from course_utils import attention_view as av
from course_utils import processes

TOKENS = ["[CLS]", "the", "film", "</script>", "great", "[SEP]"]  # a token that would close an unescaped script
PLAIN = ["[CLS]", "the", "film", "was", "great", "[SEP]"]  # bertviz's own page breaks on the one above
needs_chromium = pytest.mark.skipif(
    av.chromium_path() is None, reason="no Chromium here (Debian: apt-get install chromium); .ci/run installs it"
)


@pytest.fixture(scope="module")
def attentions() -> tuple[torch.Tensor, ...]:
    """What a 2-layer, 4-head BERT with eager attention returns for one 6-token sentence (random weights)."""
    config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = BertModel(config).eval()
    with torch.no_grad():
        out = model(torch.tensor([[1, 5, 7, 9, 11, 2]]), output_attentions=True)
    return out.attentions


class Loads(html.parser.HTMLParser):
    """Every src/href attribute, and how many <script> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        self.scripts += tag == "script"
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def loads(page: str) -> Loads:
    parser = Loads()
    parser.feed(page)
    return parser


def no_chromium_left(path: Path) -> bool:
    """True when no running process was started on `path` (the browser and its helpers all stopped)."""
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(path) in part for part in proc.info["cmdline"] or []):
            return False
    return True


def test_views_load_nothing_from_the_network(attentions):
    raw = head_view(attentions, TOKENS, html_action="return").data
    assert any(url.startswith("https://") for url in loads(raw).urls) and av.CDN_PATHS.search(raw)  # replaced
    for page in (av.head_view_html(attentions, TOKENS), av.model_view_html(attentions, TOKENS)):
        found = loads(page)
        assert found.urls == [], found.urls  # no <script src>, <link href>, ... at all: everything is inline
        assert found.scripts == 3  # require.js, the d3 + jQuery loader, bertviz's view (none ends early)
        assert "cdnjs" not in page and not av.CDN_PATHS.search(page) and not av.CDN_SCRIPT.search(page)
        assert page.count("</script>") == 3


def test_show_and_save_give_the_same_self_contained_page(attentions, tmp_path):
    view = av.show_head_view(attentions, TOKENS, layer=1, heads=[0, 2])
    assert view._repr_html_() == view.data and "2 layers, 4 heads, 6 tokens" in repr(view)
    path = av.save_view(view, tmp_path / "head.html")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in text and view.data in text
    av.save_view("<p>second</p>", path)  # replaced in place, no temporary left beside it
    assert "second" in path.read_text() and [p.name for p in tmp_path.iterdir()] == ["head.html"]


@needs_chromium
def test_offline_head_view_draws_every_line_in_chromium_without_network(attentions, tmp_path):
    path = av.save_view(av.head_view_html(attentions, TOKENS), tmp_path / "head.html")
    got = av.render_in_chromium(path, screenshot=tmp_path / "head.png")
    n_heads, n_tokens = attentions[0].shape[1], len(TOKENS)
    assert got["js_errors"] == [] and "d3 version 5.7.0" in got["console"], got["console"]
    assert got["views"] == 1 and got["svg"] == 1 and got["text"] == 2 * n_tokens  # the tokens on both sides
    assert got["line"] == n_heads * n_tokens * n_tokens  # one line per head and token pair
    assert got["network_off"] in ("unshare --net", "flags")
    assert (tmp_path / "head.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert no_chromium_left(path)


@needs_chromium
def test_model_view_beside_a_head_view_draws_every_head_of_every_layer(attentions, tmp_path):
    both = av.head_view_html(attentions, TOKENS) + av.model_view_html(attentions, TOKENS)  # two cells' outputs
    got = av.render_in_chromium(av.save_view(both, tmp_path / "both.html"))
    n_layers, n_heads, n_tokens = len(attentions), attentions[0].shape[1], len(TOKENS)
    assert got["js_errors"] == [] and got["views"] == 2 and got["svg"] == 2
    assert got["line"] == n_heads * n_tokens**2 + n_layers * n_heads * n_tokens**2  # head view + model view


@needs_chromium
def test_bertviz_cdn_page_draws_nothing_offline(attentions, tmp_path):
    path = tmp_path / "cdn.html"
    av.save_view(head_view(attentions, PLAIN, html_action="return").data, path)
    got = av.render_in_chromium(path)
    assert got["views"] == 1 and got["svg"] == got["line"] == got["text"] == 0  # the view's <div>, left empty
    assert any("require is not defined" in line for line in got["js_errors"]), got["console"]
    assert no_chromium_left(path)


@needs_chromium
def test_blocking_flags_cut_off_a_real_server_and_leave_the_offline_view_working(attentions, tmp_path):
    (tmp_path / "probe.js").write_text("document.getElementById('bertviz-probe').innerHTML = '<svg></svg>';")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path))
    )  # stands in for the CDN: a server the flags must keep the page from
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/probe.js"
        probe = av.save_view(f'<div id="bertviz-probe"></div><script src="{url}"></script>', tmp_path / "probe.html")
        assert av.render_in_chromium(probe, isolation="flags")["svg"] == 0
        assert av.render_url(probe.as_uri(), loopback=True)["svg"] == 1  # the probe works where it may connect
    finally:
        server.shutdown()
        server.server_close()
    offline = av.save_view(av.head_view_html(attentions, TOKENS), tmp_path / "offline.html")
    got = av.render_in_chromium(offline, isolation="flags")
    assert got["network_off"] == "flags" and got["svg"] == 1 and got["js_errors"] == []


class Quiet(http.server.SimpleHTTPRequestHandler):
    """Serves files without logging each request."""

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("heads, shown", [(None, 4), ([3, 1, 0], 3)])
def test_static_fallback_has_one_heat_map_per_head(attentions, heads, shown):
    fig = av.plot_heads(attentions, TOKENS, layer=1, heads=heads)
    maps = [ax for ax in fig.axes if ax.images]
    assert len(maps) == shown and len(fig.axes) == shown + 1  # plus the colour bar
    first = (heads or [0])[0]
    assert torch.equal(torch.as_tensor(maps[0].images[0].get_array()), attentions[1][0, first])
    assert [t.get_text() for t in maps[0].get_xticklabels()] == TOKENS
    assert maps[0].get_title() == f"layer 1, head {first}"
    plt.close(fig)


def bad_inputs(attentions):
    """(callable, message) pairs: each bad input and the start of its error."""
    layer = attentions[0]
    return [
        (lambda: av.head_view_html(attentions, []), "tokens is empty"),
        (lambda: av.head_view_html(attentions, [*TOKENS[:-1], 7]), r"tokens\[5\] is a int"),
        (lambda: av.head_view_html((), TOKENS), "attentions is empty; load the model with attn_implementation"),
        (lambda: av.head_view_html((layer, None), TOKENS), r"attentions\[1\] is None"),
        (lambda: av.head_view_html((layer.numpy(),), TOKENS), r"attentions\[0\] is a ndarray"),
        (lambda: av.head_view_html((layer[0],), TOKENS), r"shape \(4, 6, 6\), expected \(1, heads, T, T\)"),
        (lambda: av.head_view_html((layer.repeat(2, 1, 1, 1),), TOKENS), r"shape \(2, 4, 6, 6\)"),
        (lambda: av.head_view_html(attentions, TOKENS[:5]), "there are 5 tokens"),
        (lambda: av.head_view_html((layer, layer[:, :2]), TOKENS), r"attentions\[1\] has 2 heads"),
        (lambda: av.head_view_html((layer * float("nan"),), TOKENS), "NaN or infinite"),
        (lambda: av.head_view_html(attentions, TOKENS, layer=2), r"layer must be .* in 0\.\.1, got \[2\]"),
        (lambda: av.head_view_html(attentions, TOKENS, heads=[4]), r"heads must be .* in 0\.\.3"),
        (lambda: av.head_view_html(attentions, TOKENS, sentence_b_start=6), r"sentence_b_start must be in 1\.\.5"),
        (lambda: av.model_view_html(attentions, TOKENS, display_mode="blue"), "display_mode must be"),
        (lambda: av.model_view_html(attentions, TOKENS, include_layers=[]), "include_layers must be a non-empty"),
        (lambda: av.plot_heads(attentions, TOKENS, layer=-1), "layer must be"),
        (lambda: av.save_view("<p>x</p>", "view.txt"), "give the path an .html suffix"),
        (lambda: av.render_in_chromium("missing.html"), "is not a file; save the view first"),
    ]


def test_bad_inputs_raise_one_line_errors(attentions):
    for call, message in bad_inputs(attentions):
        with pytest.raises(ValueError, match=message) as err:
            call()
        assert "\n" not in str(err.value), str(err.value)


def signed_notebook(path: Path, view_html: str, data_dir: Path) -> None:
    """A notebook whose saved output is a view, signed (trusted) with the secret of the JupyterLab that opens it."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell("attention_view.show_head_view(attentions, tokens)")
    output = {"text/html": view_html, "text/plain": "<attention head view>"}
    cell.outputs = [nbformat.v4.new_output("display_data", data=output)]
    notebook.cells = [cell]
    NotebookNotary(data_dir=str(data_dir)).sign(notebook)
    nbformat.write(notebook, path)


@needs_chromium
@pytest.mark.skipif(importlib.util.find_spec("jupyterlab") is None, reason="JupyterLab is not installed (lab extra)")
def test_jupyterlab_draws_the_offline_view_and_shows_bertviz_cdn_error(attentions):
    pages = {
        "offline": av.head_view_html(attentions, PLAIN),
        "cdn": head_view(attentions, PLAIN, html_action="return").data,
    }
    with processes.session(prefix="course-lab-test-") as (folder, tag):
        dirs = {name: folder / name.lower() for name in ("JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR", "IPYTHONDIR")}
        for directory in [*dirs.values(), folder / "root"]:
            directory.mkdir()
        for name, view_html in pages.items():
            signed_notebook(folder / "root" / f"{name}.ipynb", view_html, dirs["JUPYTER_DATA_DIR"])
        port, token = processes.free_port(), secrets.token_hex(16)
        env = {**os.environ, processes.TAG: tag, **{name: str(path) for name, path in dirs.items()}}
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--allow-root"]
        cmd += [f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder / 'root'}"]
        processes.start(cmd, env, folder / "lab.log")
        processes.wait_for_port(port, timeout=90, what=f"jupyter lab ({folder / 'lab.log'})")
        got = {
            name: av.render_url(
                f"http://127.0.0.1:{port}/lab/workspaces/{name}/tree/{name}.ipynb?token={token}",
                timeout=150,
                loopback=True,
            )
            for name in pages
        }
    assert processes.tagged_processes(tag) == []  # JupyterLab, its kernels and Chromium all stopped
    offline, cdn = got["offline"], got["cdn"]
    assert offline["network_off"] == "flags (127.0.0.1 allowed)" and offline["page_svg"] > 10  # JupyterLab's icons
    assert offline["views"] == 1 and offline["line"] == attentions[0].shape[1] * len(PLAIN) ** 2, offline
    assert offline["js_errors"] == [] and "d3 version 5.7.0" in offline["console"], offline["console"]
    assert cdn["views"] == 1 and cdn["svg"] == 0  # in the same JupyterLab, bertviz's own output stays blank
    assert any("require is not defined" in line for line in cdn["js_errors"]), cdn["console"]
