"""Issue 11, rough edges of the first hour: the documented rule-graph command works, and
`dvc plots show` has a page that draws without a network."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, new_project, run

pytestmark = pytest.mark.integration

TEMPLATE = "workflow/plots/offline.html"


def documented_rulegraph_commands() -> dict[str, str]:
    """The `snakemake --rulegraph ...` command as the README, the Snakefile and `make dag` give it."""
    found = {}
    for name in ("README.md", "Snakefile", "Makefile"):
        commands = re.findall(r"snakemake --rulegraph[^|`\n]*", (REPO / name).read_text())
        assert commands, f"{name} shows no rule-graph command"
        found.update({f"{name}:{i}": c.strip() for i, c in enumerate(commands)})
    return found


def test_the_documented_rulegraph_command_prints_a_dot_graph(project):
    commands = set(documented_rulegraph_commands().values())
    assert commands == {"snakemake --rulegraph dot all"}, commands  # one command, everywhere
    out = run(shlex.split(commands.pop()), project).stdout  # Graphviz's `dot` would read this
    assert out.startswith("digraph snakemake_dag {") and out.rstrip().endswith("}"), out[:300]
    labels = set(re.findall(r'\[label = "([^"]+)"', out))
    assert {"download", "split", "lifelong", "evaluate", "aggregate"} <= labels
    assert re.search(r"^\s*\d+ -> \d+", out, flags=re.M)


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def render_offline(page: Path) -> str:
    """The page's DOM after headless Chromium ran its scripts with no network at all."""
    browser = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
               "--dump-dom", page.as_uri()]
    isolated = os.geteuid() == 0 and shutil.which("unshare") and \
        subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    # In a network namespace of its own nothing can be reached; otherwise no name resolves.
    command = ["unshare", "-n", *browser] if isolated else [*browser, "--host-resolver-rules=MAP * ~NOTFOUND"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120).stdout


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> tuple[Path, Path]:
    """`dvc plots show` of the committed default run's plots: with the offline template, and plain."""
    project = new_project(tmp_path_factory.mktemp("plots") / "repo")
    for name in ("plots", "results", "metrics"):
        shutil.copytree(REPO / name, project / name, dirs_exist_ok=True)
    out = project.parent
    run(["dvc", "plots", "show", "--html-template", TEMPLATE, "-o", str(out / "offline")], project)
    run(["dvc", "plots", "show", "-o", str(out / "default")], project)
    return out / "offline" / "index.html", out / "default" / "index.html"


def test_dvc_plots_show_with_the_offline_template_loads_nothing_from_outside(pages):
    template = (REPO / TEMPLATE).read_text()
    assert "{plot_divs}" in template and "{scripts}" not in template  # DVC's CDN scripts stay out
    offline, default = (p.read_text() for p in pages)
    assert 'src="https://cdn.jsdelivr.net/npm/vega@5.20.2"' in default  # why the default page is blank offline
    assert not re.search(r"<(script|link|img)[^>]+(src|href)\s*=\s*[\"']?https?:", offline), "the page loads something"
    assert "/* vega@5.20.2 */" in offline and "/* vega-lite@5.2.0 */" in offline and "/* vega-embed@6.18.2 */" in offline
    # every plot DVC's own page would draw (the curves, average accuracy, PTQ grids), no fewer
    assert offline.count("vegaEmbed('#") == default.count("vegaEmbed('#") >= 4
    assert len(list((pages[0].parent / "static").glob("*.png"))) == 4  # the PNG figures, copied beside it


@pytest.mark.skipif(chromium() is None, reason="no Chromium on this machine to draw the page offline "
                                               "(test_dvc_plots_show_with_the_offline_template_loads_nothing_from_outside checks the page)")
def test_the_offline_page_draws_every_plot_without_a_network(pages):
    offline, default = pages
    assert render_offline(offline).count('class="vega-embed') == offline.read_text().count("vegaEmbed('#") >= 4
    assert render_offline(default).count('class="vega-embed') == 0  # the plain page draws nothing offline


def test_the_offline_template_is_the_one_the_script_makes():
    """The committed page names the script that makes it and the packages it holds."""
    page = (REPO / TEMPLATE).read_text()
    script = (REPO / "workflow/scripts/plots_template.py").read_text()
    assert "Made by workflow/scripts/plots_template.py" in page
    for package, version in re.findall(r'"(vega(?:-lite|-embed)?)": \("([\d.]+)"', script):
        assert re.search(rf"{package}@{re.escape(version)} \(npm tarball SHA-256 [0-9a-f]{{64}}\)", page), package
        assert f"{package}, license BSD-3-Clause:" in page
