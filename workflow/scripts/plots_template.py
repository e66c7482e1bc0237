"""Write workflow/plots/offline.html: an HTML template for `dvc plots show` that works offline.

DVC's default page loads Vega, Vega-Lite and Vega-Embed from a CDN, so without a network it is
blank. This template holds the three libraries inline, at the versions DVC's renderer asks for
(dvc-render 1.0: vega 5.20.2, vega-lite 5.2.0, vega-embed 6.18.2), and leaves out DVC's
`{scripts}` placeholder, so the page loads nothing from outside. Made once from the npm packages:

    npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
    python workflow/scripts/plots_template.py vega-5.20.2.tgz vega-lite-5.2.0.tgz vega-embed-6.18.2.tgz

Use: `dvc plots show --html-template workflow/plots/offline.html`, or once per clone
`dvc config --local plots.html_template ../workflow/plots/offline.html` (relative to .dvc/).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import tarfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "plots" / "offline.html"
# package -> (version, its browser build inside the npm tarball)
LIBRARIES = {
    "vega": ("5.20.2", "package/build/vega.min.js"),
    "vega-lite": ("5.2.0", "package/build/vega-lite.min.js"),
    "vega-embed": ("6.18.2", "package/build/vega-embed.min.js"),
}

PAGE = """<!DOCTYPE html>
<!--
  lq: DVC's plot page with Vega, Vega-Lite and Vega-Embed inline, so it renders offline.
  Made by workflow/scripts/plots_template.py; do not edit by hand.
{sources}
{licenses}
-->
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def read(tarball: Path) -> tuple[str, str, str, str, str]:
    """(package name, version, minified browser build, license notice, tarball SHA-256)."""
    with tarfile.open(tarball) as tar:
        meta = json.load(tar.extractfile("package/package.json"))
        name, version = meta["name"], meta["version"]
        if name not in LIBRARIES or LIBRARIES[name][0] != version:
            raise SystemExit(f"{tarball}: {name}@{version}, expected one of "
                             + ", ".join(f"{n}@{v}" for n, (v, _) in LIBRARIES.items()))
        code = tar.extractfile(LIBRARIES[name][1]).read().decode("utf-8")
        license_text = f"license {meta['license']}:\n" + tar.extractfile("package/LICENSE").read().decode("utf-8")
    code = re.sub(r"\n?//# sourceMappingURL=\S+\s*$", "", code)  # no source map to fetch
    for bad in ("</script", "{plot_divs}", "{scripts}", "{refresh_tag}"):
        if bad in code:
            raise SystemExit(f"{tarball}: the build contains {bad!r}; it cannot be inlined")
    return name, version, code, license_text, hashlib.sha256(tarball.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tarballs", nargs=3, type=Path, help="the npm tarballs of vega, vega-lite and vega-embed")
    parser.add_argument("-o", "--out", type=Path, default=OUT)
    args = parser.parse_args()
    found = {name: (version, code, lic, sha) for name, version, code, lic, sha in map(read, args.tarballs)}
    missing = set(LIBRARIES) - set(found)
    if missing:
        raise SystemExit(f"missing: {', '.join(sorted(missing))}")
    order = list(LIBRARIES)  # vega first: the others attach to it
    sources = "\n".join(f"  {n}@{found[n][0]} (npm tarball SHA-256 {found[n][3]})" for n in order)
    licenses = "\n".join(f"  {n}, " + "\n".join(f"    {line}".rstrip() for line in found[n][2].strip().splitlines()).lstrip()
                         for n in order).replace("--", "- -")
    scripts = "\n".join(f'    <script type="text/javascript">/* {n}@{found[n][0]} */\n{found[n][1]}\n    </script>'
                        for n in order)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(PAGE.format(sources=sources, licenses=licenses, scripts=scripts), encoding="utf-8")
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
