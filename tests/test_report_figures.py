"""Report figures a reader understands (titles, class labels, colour bar) and a W&B run that holds the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import wandb

import callbacks.grids as grids_module
from aid.loggers import OfflineWandbLogger
from callbacks import ADV2Evaluation, ImageGrids, ReportWriter
from callbacks.figures import COLORBAR_LABEL, draw_grid, figure_texts, grid_figure, upscale
from callbacks.tables import ReportTable, percent
from datamodules import ShapesDataModule
from tests.conftest import TinyClassifierModule, briefly_trained_state, shapes_datamodule

ATTACKS = {
    "pgd": {"steps": 3, "eps": 0.1, "alpha": 0.03},
    "adv2": {"steps": 2, "warm_steps": 3, "eps": 0.1, "alpha": 0.03},
}
COMMON = dict(num_images=4, batch_size=4, progress=False)
GRAD_TITLES = ["input", "GRAD\nbenign map", "GRAD\nPGD map", "ADV² input\nvs GRAD", "GRAD\nADV² map"]


def datamodule() -> ShapesDataModule:
    return shapes_datamodule(test_size=32)


@pytest.fixture(scope="module")
def trained_state():
    """Weights after a few training steps, so that the report holds distances of successful attacks."""
    return briefly_trained_state(TinyClassifierModule())


@pytest.fixture
def model(trained_state) -> TinyClassifierModule:
    m = TinyClassifierModule()
    m.load_state_dict(trained_state)
    return m


def validate(model, tmp_path, *callbacks, logger=False) -> None:
    trainer = pl.Trainer(inference_mode=False, logger=logger, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1, default_root_dir=str(tmp_path), callbacks=list(callbacks))
    trainer.validate(model, datamodule=datamodule())


# ----- the figure function -------------------------------------------------------------------------


def test_grid_figure_draws_every_column_title_row_label_target_label_and_a_colour_bar():
    titles = ["input", "GRAD\nbenign map", "ADV² input\nvs GRAD"]
    rows = ["true: circle", "true: square"]
    labels = [["", "", "target: star"], ["", "", "target: cross"]]
    fig = grid_figure(torch.rand(2, 3, 3, 16, 16), titles, rows, tile_labels=labels)
    texts = figure_texts(fig)
    for text in [*titles, *rows, "target: star", "target: cross", COLORBAR_LABEL]:
        assert text in texts, f"{text!r} is not drawn"
    bars = [ax for ax in fig.axes if ax.get_label() == "colorbar"]
    assert len(bars) == 1 and bars[0].get_ylim() == (0.0, 1.0)
    assert [t.get_text() for t in bars[0].get_yticklabels()] == ["0.0", "0.5", "1.0"]


def test_grid_figure_without_colour_bar_or_labels_draws_only_titles():
    fig = grid_figure(torch.rand(1, 2, 3, 16, 16), ["input", "map"], ["true: 3"], colorbar=False)
    assert not [ax for ax in fig.axes if ax.get_label() == "colorbar"]
    assert sorted(figure_texts(fig)) == ["input", "map", "true: 3"]


def test_draw_grid_enlarges_tiles_by_whole_factors_to_at_least_96_pixels():
    tiles = torch.zeros(2, 3, 3, 16, 16)
    tiles[1, 2, 1] = 1.0  # one pure green tile
    img = draw_grid(tiles, ["a", "b", "c"], ["r0", "r1"])
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[0] >= 2 * 96 and img.shape[1] >= 3 * 96
    green = (img == np.array([0, 255, 0], dtype=np.uint8)).all(-1)
    assert green.sum() == 96 * 96  # the tile, drawn pixel for pixel at 6x its size
    x = torch.arange(16.0).view(1, 1, 4, 4)
    big = upscale(x, 10)  # factor 3: the smallest whole factor reaching 10 px
    assert big.shape[-2:] == (12, 12) and torch.equal(big[..., ::3, ::3], x)
    assert torch.equal(big, x.repeat_interleave(3, -2).repeat_interleave(3, -1))


@pytest.mark.parametrize("titles, rows", [(["input"], ["r0", "r1"]), (["a", "b"], ["r0"])])
def test_grid_figure_refuses_titles_or_labels_that_do_not_match_the_tiles(titles, rows):
    with pytest.raises(ValueError, match="column titles"):
        grid_figure(torch.rand(2, 2, 3, 8, 8), titles, rows)


def test_image_grids_title_the_columns_and_label_rows_with_true_and_target_class_names(model, tmp_path, monkeypatch):
    drawn = []

    def record(path, tiles, titles, rows, **kwargs):
        drawn.append((path.name, tiles.shape, titles, rows, kwargs["tile_labels"]))
        return save(path, tiles, titles, rows, **kwargs)

    save = grids_module.save_grid
    monkeypatch.setattr(grids_module, "save_grid", record)
    validate(model, tmp_path, ReportWriter(str(tmp_path / "report")),
             ImageGrids(interpreters=["grad"], attack_kwargs=ATTACKS, **COMMON))
    assert len(drawn) == 1
    name, shape, titles, rows, labels = drawn[0]
    classes = datamodule().classes
    assert name == "grids_attacks.png" and titles == GRAD_TITLES and shape[1:] == (5, 3, 32, 32)
    assert len(rows) == shape[0] > 0 and all(r.removeprefix("true: ") in classes for r in rows)
    for row, row_labels in zip(rows, labels, strict=True):
        assert row_labels[:2] == ["", ""]  # input and benign map: the true class of the row label
        target = row_labels[2].removeprefix("target: ")
        assert target in classes and target != row.removeprefix("true: ") and len(set(row_labels[2:])) == 1
    assert (tmp_path / "report" / "figures" / "grids_attacks.png").is_file()


# ----- report tables as data -----------------------------------------------------------------------


def test_a_report_table_renders_markdown_and_raw_values_for_wandb_from_the_same_cells():
    table = ReportTable("rates", ["squeezer", "pgd", "adv2"], [["median", 0.5, None], ["bits", float("nan"), 0.25]],
                        fmt=percent, bold={(0, 1)}, code=(0,))
    assert table.markdown().splitlines() == [
        "| squeezer | pgd | adv2 |", "|---|---|---|", "| `median` | **50.0%** | – |", "| `bits` | – | 25.0% |",
    ]
    assert table.data() == [["median", 0.5, None], ["bits", None, 0.25]]
    with pytest.raises(ValueError, match="row 0 has 2 cells for 3 columns"):
        ReportTable("bad", ["a", "b", "c"], [["x", 1.0]])


def test_report_writer_keys_every_table_by_section_and_name_and_writes_its_markdown(tmp_path):
    writer = ReportWriter(str(tmp_path), paper_reference="imagenet_resnet50")
    writer.add_metrics({"adv2/rts/adv2/l1": 0.0123})
    writer.add_section("adv2", "## adv2", "text", ReportTable("attacks", ["interpreter", "l1"], [["rts", 0.0123]]))
    writer.extend_section("adv2", "Images: 4.")
    writer.write()
    assert list(writer.tables()) == ["report/adv2/attacks", "report/published/paper"]
    paper = writer.tables()["report/published/paper"].data()
    assert ["adv2/rts/adv2/l1", 0.0123, 0.01] in paper  # ours beside the paper's, as numbers
    report = (tmp_path / "report.md").read_text()
    assert "## adv2\n\ntext\n\n| interpreter | l1 |\n|---|---|\n| rts | 0.012 |\n\nImages: 4.\n" in report


# ----- the W&B run holds the report ----------------------------------------------------------------


def test_an_offline_wandb_run_holds_every_report_table_the_figures_and_the_report_artifact(
    model, tmp_path, monkeypatch
):
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))  # artifact staging stays in tmp
    logger = OfflineWandbLogger(save_dir=str(tmp_path))
    writer = ReportWriter(str(tmp_path / "report"), paper_reference="imagenet_resnet50")
    validate(
        model,
        tmp_path,
        ADV2Evaluation(interpreters=["grad"], attack_kwargs=ATTACKS, **COMMON),
        ImageGrids(interpreters=["grad"], attack_kwargs=ATTACKS, **COMMON),
        writer,
        logger=logger,
    )
    run_id = logger.experiment.id
    logger.experiment.finish()
    wandb.teardown()  # stops W&B's service process: every record is then in the run file
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    blob = b"".join(p.read_bytes() for p in runs[0].glob("run-*.wandb"))
    assert b"report/adv2/attacks" in blob and b"report/published/paper" in blob
    assert f"report-{run_id}".encode() in blob  # the artifact, of type report
    for name in (b"report.md", b"summary.json", b"figures/grids_attacks.png"):
        assert name in blob, f"{name!r} is not in the report artifact"
    assert b"grids/attacks" in blob  # the figure as a W&B image
    # The dashboard's table holds the report's numbers.
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    (found,) = (runs[0] / "files" / "media" / "table" / "report" / "adv2").glob("attacks_*.table.json")
    table = json.loads(found.read_text())
    assert table["columns"] == ["interpreter", "attack", "asr", "mc", "l1", "l2", "iou"]
    rows = {tuple(r[:2]): dict(zip(table["columns"][2:], r[2:], strict=True)) for r in table["data"]}
    assert set(rows) == {("grad", "pgd"), ("grad", "adv2")}
    for (interp, attack), cells in rows.items():
        for metric, value in cells.items():
            expected = summary[f"adv2/{interp}/{attack}/{metric}"]  # None: NaN (no successful example)
            assert value is None if expected is None else value == pytest.approx(expected)
