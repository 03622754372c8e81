"""Attention views that render offline: bertviz's head and model views with their JavaScript inlined (chapter 05).

bertviz returns HTML that loads require.js, d3 and jQuery from a CDN: offline the page stays blank in a browser
and JupyterLab reports "require is not defined". `head_view_html` / `model_view_html` swap those URLs for the
copies `assets` fetched from npm at setup (sha256-checked), so one fragment works as a notebook output and as a
standalone page (`save_view`). `render_in_chromium` proves it: headless Chromium with networking off, counting the
SVG elements the view drew (`render_url` does the same for a page served on 127.0.0.1, such as JupyterLab's).
`plot_heads` is the static fallback for GitHub and nbval.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from bertviz import head_view, model_view
from matplotlib.figure import Figure

from . import assets, processes, store

CDN_SCRIPT = re.compile(r'<script src="https?://[^"]*require[^"]*"></script>')  # bertviz's require.js tag
CDN_PATHS = re.compile(r"require\.config\(\{\s*paths:\s*\{[^}]*\}\s*\}\);")  # its d3 and jQuery URLs
SVG_TAGS = ("svg", "rect", "text", "line", "path")
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
VIEW_ID_PREFIX = "bertviz-"  # the id of the <div> bertviz draws a view into
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
CONSOLE_LINE = re.compile(r':CONSOLE[^\]]*\] "(.*)", source: ')
VIRTUAL_TIME_MS = 10_000  # virtual time Chromium gives the page's scripts before it dumps the DOM
_LOADER = """(function () {
  function load(body) { var module = {exports: {}}; body.call(window, module, module.exports); return module.exports; }
  var d3 = load(function (module, exports) { var define; %(d3)s
  });
  var jquery = load(function (module, exports) { var define; %(jquery)s
  });
  define("d3", [], function () { return d3; });
  define("jquery", [], function () { return jquery; });
})();"""


@dataclass(frozen=True, repr=False)
class View:
    """An attention view for a notebook: its HTML is the cell's output (`_repr_html_`), like IPython's `HTML`."""

    data: str
    summary: str

    def _repr_html_(self) -> str:
        """The self-contained HTML fragment Jupyter shows (scripts run in trusted outputs)."""
        return self.data

    def __repr__(self) -> str:
        return f"<{self.summary}; shown in Jupyter, or save_view(view, 'view.html') and open the file>"


def check_attentions(attentions: Sequence[torch.Tensor], tokens: Sequence[str]) -> tuple[int, int, int]:
    """Check a model's `outputs.attentions` (one (1, H, T, T) tensor per layer) against its tokens; (L, H, T)."""
    if not tokens:
        raise ValueError("tokens is empty; pass the sentence's tokens, e.g. tokenizer.convert_ids_to_tokens(ids)")
    bad = next((i for i, token in enumerate(tokens) if not isinstance(token, str)), None)
    if bad is not None:
        raise ValueError(f"tokens[{bad}] is a {type(tokens[bad]).__name__}, not a string; pass the token strings")
    if not isinstance(attentions, (tuple, list)) or not attentions:
        raise ValueError(
            "attentions is empty; load the model with attn_implementation='eager' (sdpa returns no weights) "
            "and pass outputs.attentions from a call with output_attentions=True"
        )
    heads = None
    for i, layer in enumerate(attentions):
        if layer is None:
            raise ValueError(f"attentions[{i}] is None; load the model with attn_implementation='eager'")
        if not isinstance(layer, torch.Tensor):
            raise ValueError(f"attentions[{i}] is a {type(layer).__name__}; pass the torch tensors the model returns")
        if layer.dim() != 4 or layer.shape[0] != 1:
            raise ValueError(
                f"attentions[{i}] has shape {tuple(layer.shape)}, expected (1, heads, T, T); run one sentence at a time"
            )
        if layer.shape[2] != len(tokens) or layer.shape[3] != len(tokens):
            raise ValueError(
                f"attentions[{i}] covers {tuple(layer.shape[2:])} positions but there are {len(tokens)} tokens; "
                "pass the tokens of the same input ids, special tokens included"
            )
        if heads is not None and layer.shape[1] != heads:
            raise ValueError(f"attentions[{i}] has {layer.shape[1]} heads, attentions[0] {heads}; pass one model's")
        if not torch.isfinite(layer).all():
            raise ValueError(f"attentions[{i}] has NaN or infinite weights; check the model's inputs and precision")
        heads = layer.shape[1]
    return len(attentions), heads, len(tokens)


def _indices(name: str, chosen: Sequence[int] | None, size: int) -> list[int] | None:
    """Check optional layer or head indices against their count (None means all)."""
    if chosen is None:
        return None
    chosen = list(chosen)
    if not chosen or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < size for i in chosen):
        raise ValueError(f"{name} must be a non-empty list of indices in 0..{size - 1}, got {chosen}")
    return chosen


def _as_cpu(attentions: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The weights as float32 CPU tensors (bertviz turns them into JSON lists)."""
    return tuple(layer.detach().to("cpu", torch.float32) for layer in attentions)


def _inline(code: str) -> str:
    """JavaScript safe inside a <script> element: no `</` that could close it early."""
    return code.replace("</", "<\\/")


def offline_scripts() -> str:
    """require.js, then d3 and jQuery defined as require modules, all inline: no network, no global $ changed."""
    require_js = assets.script_file("requirejs").read_text(encoding="utf-8")  # a no-op where an AMD loader runs
    libraries = {name: assets.script_file(name).read_text(encoding="utf-8") for name in ("d3", "jquery")}
    loader = _LOADER % {name: _inline(code) for name, code in libraries.items()}
    return "".join(f'<script type="text/javascript">\n{code}\n</script>\n' for code in (_inline(require_js), loader))


def make_offline(bertviz_html: str) -> str:
    """bertviz's returned HTML with its CDN require.js tag and d3/jQuery URLs replaced by the inlined libraries."""
    body, tags = CDN_SCRIPT.subn("", bertviz_html)
    body, paths = CDN_PATHS.subn("", body)
    if tags != 1 or paths != 1:
        raise RuntimeError(
            f"bertviz's HTML has {tags} CDN require.js tags and {paths} require.config blocks, expected 1 each; "
            "this module was written for bertviz 1.4"
        )
    body = re.sub(
        r'(<script type="text/javascript">\n)(.*?)(\n</script>)',
        lambda m: m[1] + _inline(m[2]) + m[3],
        body,
        flags=re.S,
    )
    return offline_scripts() + body


def head_view_html(
    attentions: Sequence[torch.Tensor],
    tokens: Sequence[str],
    layer: int | None = None,
    heads: Sequence[int] | None = None,
    sentence_b_start: int | None = None,
) -> str:
    """bertviz's head view (one layer, chosen heads) as self-contained HTML that renders offline (chapter 05)."""
    n_layers, n_heads, n_tokens = check_attentions(attentions, tokens)
    if layer is not None:
        _indices("layer", [layer], n_layers)
    heads = _indices("heads", heads, n_heads)
    if sentence_b_start is not None and not 0 < sentence_b_start < n_tokens:
        raise ValueError(f"sentence_b_start must be in 1..{n_tokens - 1}, got {sentence_b_start}")
    raw = head_view(_as_cpu(attentions), list(tokens), sentence_b_start, layer=layer, heads=heads, html_action="return")
    return make_offline(raw.data)


def model_view_html(
    attentions: Sequence[torch.Tensor],
    tokens: Sequence[str],
    include_layers: Sequence[int] | None = None,
    include_heads: Sequence[int] | None = None,
    display_mode: str = "light",
) -> str:
    """bertviz's model view (every layer's heads in a grid) as self-contained HTML, rendered offline (chapter 05)."""
    n_layers, n_heads, _ = check_attentions(attentions, tokens)
    if display_mode not in ("light", "dark"):
        raise ValueError(f"display_mode must be 'light' or 'dark', got {display_mode!r}")
    raw = model_view(
        _as_cpu(attentions),
        list(tokens),
        display_mode=display_mode,
        include_layers=_indices("include_layers", include_layers, n_layers),
        include_heads=_indices("include_heads", include_heads, n_heads),
        html_action="return",
    )
    return make_offline(raw.data)


def show_head_view(attentions: Sequence[torch.Tensor], tokens: Sequence[str], **options) -> View:
    """The head view as a notebook output (works in JupyterLab and Notebook offline; options as `head_view_html`)."""
    n_layers, n_heads, n_tokens = check_attentions(attentions, tokens)
    summary = f"attention head view: {n_layers} layers, {n_heads} heads, {n_tokens} tokens"
    return View(head_view_html(attentions, tokens, **options), summary)


def show_model_view(attentions: Sequence[torch.Tensor], tokens: Sequence[str], **options) -> View:
    """The model view as a notebook output (options as `model_view_html`)."""
    n_layers, n_heads, n_tokens = check_attentions(attentions, tokens)
    summary = f"attention model view: {n_layers} layers, {n_heads} heads, {n_tokens} tokens"
    return View(model_view_html(attentions, tokens, **options), summary)


def page(html: str, title: str = "Attention view") -> str:
    """A view's HTML fragment as a standalone UTF-8 page (a full document is returned unchanged)."""
    if html.lstrip()[:15].lower().startswith(("<!doctype", "<html")):
        return html
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
        f"</head>\n<body>\n{html}\n</body>\n</html>\n"
    )


def save_view(html: str | View, path: str | Path) -> Path:
    """Write a view as a standalone page, atomically; returns the path."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"save_view writes an HTML page; give the path an .html suffix, got {path.name!r}")
    store.write_text(path, page(html.data if isinstance(html, View) else html))
    return path


def plot_heads(
    attentions: Sequence[torch.Tensor], tokens: Sequence[str], layer: int, heads: Sequence[int] | None = None
) -> Figure:
    """A static grid of one layer's attention heads (query rows, key columns) for GitHub and nbval (chapter 05)."""
    n_layers, n_heads, n_tokens = check_attentions(attentions, tokens)
    _indices("layer", [layer], n_layers)
    heads = _indices("heads", heads, n_heads) or list(range(n_heads))
    weights = attentions[layer][0].detach().to("cpu", torch.float32)  # (H, T, T)
    cols = min(4, len(heads))
    rows = math.ceil(len(heads) / cols)
    side = 1.2 + 0.28 * n_tokens
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols, side * rows), squeeze=False, constrained_layout=True)
    for ax in axes.flat[len(heads) :]:
        fig.delaxes(ax)
    for ax, head in zip(axes.flat, heads, strict=False):
        image = ax.imshow(weights[head].numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(n_tokens), tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(n_tokens), tokens, fontsize=7)
        ax.set_title(f"layer {layer}, head {head}", fontsize=9)
    fig.colorbar(image, ax=axes.flat[: len(heads)].tolist(), shrink=0.8, label="attention weight")
    return fig


def chromium_path() -> str | None:
    """The headless browser the views are checked in (Debian's `chromium`), or None when none is installed."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _unshare_net() -> list[str] | None:
    """`unshare --net --` when it can start a process without any network (root in most containers), else None."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        return None
    try:
        done = subprocess.run([unshare, "--net", "--", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [unshare, "--net", "--"] if done.returncode == 0 else None


class _SvgCounter(HTMLParser):
    """Counts the SVG elements in a dumped DOM, everywhere or only inside elements whose id starts with `within`."""

    def __init__(self, within: str | None) -> None:
        super().__init__()
        self.within = within
        self.depth = 0  # how deep inside a view's root element the parser is (0: outside)
        self.counts = dict.fromkeys(SVG_TAGS, 0) | {"views": 0}

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if self.within is not None and not self.depth:
            if (dict(attrs).get("id") or "").startswith(self.within) and tag not in VOID_TAGS:
                self.counts["views"] += 1
                self.depth = 1
            return
        if tag in SVG_TAGS:
            self.counts[tag] += 1
        if self.depth and tag not in VOID_TAGS:
            self.depth += 1

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        if tag in SVG_TAGS and (self.within is None or self.depth):
            self.counts[tag] += 1

    def handle_endtag(self, tag: str) -> None:
        if self.depth and tag not in VOID_TAGS:
            self.depth -= 1


def count_svg(dom: str, within: str | None = None) -> dict[str, int]:
    """How many svg, rect, text, line and path elements a DOM holds (inside ids starting `within`, and how many)."""
    counter = _SvgCounter(within)
    counter.feed(dom)
    counter.close()
    return counter.counts


def chromium_command(
    url: str,
    profile: Path,
    screenshot: Path | None = None,
    isolation: str = "auto",
    loopback: bool = False,
    budget_ms: int = VIRTUAL_TIME_MS,
) -> tuple[list[str], str]:
    """The headless Chromium command that dumps a page's DOM (or screenshots it) with networking off, and how."""
    browser = chromium_path()
    if browser is None:
        raise RuntimeError("no Chromium found; install it (Debian: apt-get install chromium) to render the views")
    if isolation not in ("auto", "unshare", "flags"):
        raise ValueError(f"isolation must be 'auto', 'unshare' or 'flags', got {isolation!r}")
    if loopback and isolation == "unshare":
        raise ValueError("unshare --net cuts 127.0.0.1 off too; use isolation='flags' (or 'auto') with loopback=True")
    prefix = _unshare_net() if isolation == "unshare" or (isolation == "auto" and not loopback) else None
    if isolation == "unshare" and prefix is None:
        raise RuntimeError("`unshare --net` is not available here (needs root and unshare); use isolation='flags'")
    cmd = [*(prefix or []), browser, "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check"]
    if os.geteuid() == 0:
        cmd.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    cmd += [
        f"--user-data-dir={profile}",
        "--disable-dev-shm-usage",  # containers often give /dev/shm 64 MB, too little for a big view
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-pings",
        "--dns-prefetch-disable",
        "--proxy-server=127.0.0.1:9",  # every http(s) request goes to a closed port (loopback too, unless allowed)
        *([] if loopback else ["--proxy-bypass-list=<-loopback>"]),
        f"--host-resolver-rules=MAP * ~NOTFOUND{', EXCLUDE 127.0.0.1' if loopback else ''}",  # no name resolves
        "--enable-logging=stderr",
        "--v=0",
        f"--virtual-time-budget={budget_ms}",
        "--window-size=1200,900",
        "--hide-scrollbars",
    ]
    cmd += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    how = "unshare --net" if prefix else "flags" + (" (127.0.0.1 allowed)" if loopback else "")
    return [*cmd, url], how


def _run_chromium(cmd: list[str], folder: Path, tag: str, timeout: float) -> tuple[int, str, str]:
    """Run one tagged Chromium command to the end; (return code, stdout, stderr); TimeoutError past `timeout`."""
    out, err = folder / "stdout.txt", folder / "stderr.txt"
    env = {**os.environ, processes.TAG: tag}
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"Chromium did not finish within {timeout:g} s; pass a larger timeout") from None
        finally:
            processes.stop_tagged(tag, grace=2.0)  # the browser's helpers too, also on timeout
    return code, out.read_text(errors="replace"), err.read_text(errors="replace")


def render_url(
    url: str,
    screenshot: str | Path | None = None,
    timeout: float = 60,
    isolation: str = "auto",
    loopback: bool = False,
    budget_ms: int = VIRTUAL_TIME_MS,
) -> dict:
    """Load a URL in headless Chromium with networking off (127.0.0.1 too unless `loopback`); what the views drew."""
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    start = time.perf_counter()
    with processes.session(prefix="course-chromium-") as (folder, tag):
        cmd, how = chromium_command(url, folder / "profile", None, isolation, loopback, budget_ms)
        code, dom, log = _run_chromium(cmd, folder, tag, timeout)
        if screenshot is not None:
            shot = Path(screenshot).resolve()
            shot.parent.mkdir(parents=True, exist_ok=True)
            shot_cmd, _ = chromium_command(url, folder / "profile-shot", shot, isolation, loopback, budget_ms)
            _run_chromium(shot_cmd, folder, tag, timeout)
    console = [match[1] for match in CONSOLE_LINE.finditer(log)]
    return {
        **count_svg(dom, within=VIEW_ID_PREFIX),
        "page_svg": count_svg(dom)["svg"],
        "js_errors": [line for line in console if line.startswith("Uncaught")],
        "console": console,
        "returncode": code,
        "network_off": how,
        "dom_chars": len(dom),
        "seconds": round(time.perf_counter() - start, 2),
        "screenshot": str(Path(screenshot).resolve()) if screenshot is not None else None,
    }


def render_in_chromium(
    html_path: str | Path, screenshot: str | Path | None = None, timeout: float = 60, isolation: str = "auto"
) -> dict:
    """Open a saved view in headless Chromium with networking off; the SVG elements it drew and the page's JS errors."""
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise ValueError(f"{html_path} is not a file; save the view first with save_view(html, path)")
    return render_url(html_path.as_uri(), screenshot, timeout, isolation)
