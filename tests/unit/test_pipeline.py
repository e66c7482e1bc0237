"""The stage table is the one description: the committed dvc.yaml and its params agree with it."""

from __future__ import annotations

import yaml

from lq import config as lqconfig
from lq.pipeline import TABLE_PATH, generate, load_table
from tests.conftest import REPO, copy_project, run

PARAMS_FILE, STAGES = load_table(TABLE_PATH)


def test_committed_dvc_yaml_is_a_fresh_generation():
    committed = (REPO / "dvc.yaml").read_text()
    assert committed == generate(REPO), "dvc.yaml is stale: run `python -m lq.pipeline write`"


def test_dvc_params_are_exactly_the_declared_keys_plus_their_preset_overrides():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    raw = lqconfig.read_yaml(REPO / "params.yaml")
    for stage in STAGES:
        tracked = dvc["stages"][stage.name].get("params", [])
        base = [k for k in tracked if k != "preset" and not k.startswith("presets.")]
        assert base == stage.declared_params(item="${{item.{}}}".format)
        # per cell: lifelong.methods.${item.method}, quantizers.${item.quantizer}, ssl.methods.${item.ssl};
        # by a parameter's value: ssl.methods.${pretrain.init}, for every value it may take
        grid_values = lqconfig.resolve(raw)["grid"]
        ssl_methods = lqconfig.load_schema()["$defs"]["ssl_method_name"]["enum"]
        for key in tracked:
            for method in grid_values["method"]:
                for quantizer in grid_values["quantizer"]:
                    for ssl in ssl_methods:
                        filled = (key.replace("${item.method}", method).replace("${item.quantizer}", quantizer)
                                  .replace("${item.ssl}", ssl).replace("${pretrain.init}", ssl))
                        assert lqconfig.has_key(raw, filled), f"dvc.yaml tracks {filled}, which params.yaml lacks"


def test_pipeline_check_detects_a_stage_table_edit(tmp_path):
    check = ["python", "-m", "lq.pipeline", "check"]
    assert run(check, REPO, check=False).returncode == 0

    root = copy_project(tmp_path / "repo")
    assert run(check, root, check=False).returncode == 0
    table = root / "workflow" / "stages.yaml"
    text = table.read_text()
    old = "doc: Sample a share of each task's training images for replay (SPEC 2)."
    assert old in text
    table.write_text(text.replace(old, "doc: Sample a share of each task's training images for rehearsal."))
    stale = run(check, root, check=False)
    assert stale.returncode == 1
    assert "dvc.yaml is out of date" in stale.stderr
    # Regenerating brings it back in line, and the new doc reaches dvc.yaml.
    run(["python", "-m", "lq.pipeline", "write"], root)
    assert run(check, root, check=False).returncode == 0
    assert "for rehearsal." in (root / "dvc.yaml").read_text()
