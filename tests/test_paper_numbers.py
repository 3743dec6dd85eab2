"""The paper's published numbers and the report section that puts them beside ours."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from callbacks.paper_numbers import published, references
from callbacks.report import PUBLISHED_SECTION, ReportWriter
from tests.conftest import ROOT
from train import AIDCLI, resolve_config_args

PAPER_CONFIGS = {
    "imagenet_resnet50_eval.yaml": "imagenet_resnet50",
    "imagenet_densenet169_eval.yaml": "imagenet_densenet169",
    "imagenet_resnet50_aid.yaml": "imagenet_resnet50",
}


def published_rows(markdown: str) -> dict[str, tuple[str, str]]:
    """``{metric: (ours, paper)}`` from the published-numbers table of a report.md."""
    section = markdown.split(f"## {PUBLISHED_SECTION}", 1)[1]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


def test_table_10_rts_vs_rtsa_is_under_our_metric_names():
    paper = published("imagenet_resnet50")
    assert paper["localization/rts_vs_rtsa/l1"] == 0.03  # benign maps, RTS vs RTSA
    assert paper["adv2/rts/adv2/l1"] == 0.01
    assert paper["adv2/rtsa/adv2/l1"] == 0.10


def test_table_3_and_table_4_are_fractions_per_model():
    resnet, densenet = published("imagenet_resnet50"), published("imagenet_densenet169")
    assert resnet["adv2/mask/adv2/asr"] == 0.98 and densenet["adv2/mask/adv2/asr"] == 0.96
    assert resnet["adv2/grad/adv2/mc"] == 0.99 and densenet["adv2/grad/adv2/mc"] == 0.98
    assert all(resnet[f"adv2/{i}/pgd/asr"] == 1.0 for i in ("grad", "cam", "mask", "rts"))
    assert resnet["squeeze/median_3x3/pgd/detection_rate"] == 0.973
    assert resnet["squeeze/bit_depth_2/adv2_adaptive_rts/detection_rate"] == 0.294
    assert resnet["transfer/mask/rts/l1"] == 0.74  # Table 9, row MASK, column RTS
    rates = [v for k, v in {**resnet, **densenet}.items() if k.endswith(("/asr", "/detection_rate"))]
    assert rates and all(0.0 <= v <= 1.0 for v in rates)


def test_published_returns_a_copy():
    published("imagenet_resnet50")["adv2/rts/adv2/l1"] = 99.0
    assert published("imagenet_resnet50")["adv2/rts/adv2/l1"] == 0.01


def test_an_unknown_reference_fails_listing_the_known_ones():
    with pytest.raises(ValueError, match="unknown paper reference 'imagenet_vgg16'") as err:
        published("imagenet_vgg16")
    assert all(name in str(err.value) for name in references())
    with pytest.raises(ValueError, match="imagenet_resnet50"):
        ReportWriter(paper_reference="resnet50")  # fails when built, before any run


def test_report_with_a_paper_reference_lists_ours_beside_the_papers(tmp_path):
    writer = ReportWriter(str(tmp_path), paper_reference="imagenet_resnet50")
    writer.add_metrics({"adv2/rts/adv2/l1": 0.0123, "adv2/rts/adv2/asr": 1.0, "val/acc": 0.5})
    writer.add_section("adv2", "## adv2\n\nour table")
    writer.write()

    report = (tmp_path / "report.md").read_text()
    assert "our table" in report and report.index("our table") < report.index(PUBLISHED_SECTION)
    assert "| metric | ours | paper (Zhang et al. 2020) |" in report
    rows = published_rows(report)
    assert set(rows) == set(published("imagenet_resnet50"))  # every published key, measured or not
    assert rows["adv2/rts/adv2/l1"] == ("0.012", "0.01")
    assert rows["adv2/rts/adv2/asr"] == ("1.000", "1.00")
    assert rows["adv2/rtsa/adv2/l1"] == ("–", "0.10")  # not measured by this run
    assert published_rows(report)["squeeze/bit_depth_2/pgd/detection_rate"] == ("–", "0.923")
    assert "val/acc" not in rows  # no published number
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == {"adv2/rts/adv2/asr": 1.0, "adv2/rts/adv2/l1": 0.0123, "val/acc": 0.5}  # ours only


def test_report_without_a_paper_reference_has_no_published_section(tmp_path):
    writer = ReportWriter(str(tmp_path))
    writer.add_metrics({"adv2/rts/adv2/l1": 0.0123})
    writer.write()
    report = (tmp_path / "report.md").read_text()
    assert PUBLISHED_SECTION not in report and "Zhang et al." not in report


@pytest.mark.parametrize("name, reference", PAPER_CONFIGS.items())
def test_paper_configs_name_their_reference_on_the_report_writer(name, reference):
    cfg = yaml.safe_load((ROOT / "configs" / "paper" / name).read_text())
    writers = [cb for cb in cfg["trainer"]["callbacks"] if cb["class_path"] == "callbacks.report.ReportWriter"]
    assert len(writers) == 1 and writers[0]["init_args"]["paper_reference"] == reference
    assert cfg["trainer"]["callbacks"][-1] is writers[0]  # last: it writes after the evaluations
    assert ReportWriter(**writers[0]["init_args"]).paper_reference == reference


def test_the_cli_keeps_a_configured_writer_and_gives_it_the_report_dir(tmp_path, monkeypatch):
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "callbacks": [
                        {"class_path": "callbacks.report.ReportWriter",
                         "init_args": {"paper_reference": "imagenet_resnet50"}},
                    ]
                }
            }
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    args = resolve_config_args(["--config", "classifier.yaml"]) + [
        "--config", str(extra), "--report_dir", str(tmp_path / "rep"), "--model.init_args.channels", "[8, 16, 32, 64]",
    ]
    cli = AIDCLI(args=args, run=False, trainer_defaults={"inference_mode": False}, seed_everything_default=0)

    writers = [cb for cb in cli.trainer.callbacks if isinstance(cb, ReportWriter)]
    assert len(writers) == 1  # the CLI adds no second, plain writer
    assert writers[0].paper_reference == "imagenet_resnet50" and writers[0].report_dir == str(tmp_path / "rep")
