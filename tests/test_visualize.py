"""Retrieval grids and Grad-CAM heat maps, on the tiny ViT."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from conftest import TINY_IMG, class_image, run_cli
from PIL import Image

from dva.errors import ConfigError
from dva.index import IndexModel, Searcher
from dva.models import RetrievalModel
from dva.visualize import (
    comparison_rows,
    embedding_cam,
    frozen_and_adapted,
    gradcam_comparison,
    render_retrieval_grid,
    retrieval_rows,
    vit_reshape_transform,
)
from dva.visualize.grid import CORRECT_COLOUR, QUERY_COLOUR, WRONG_COLOUR


def test_reshape_transform_drops_prefix_tokens_and_finds_the_grid():
    # 1 CLS + 4 register tokens, then a 3x3 grid whose token t holds the value t in every channel
    tokens = torch.cat([torch.full((2, 5, 8), -1.0), torch.arange(9.0)[None, :, None].expand(2, 9, 8)], dim=1)
    maps = vit_reshape_transform(num_prefix_tokens=5)(tokens)
    assert maps.shape == (2, 8, 3, 3)
    assert torch.equal(maps[0, 0], torch.arange(9.0).reshape(3, 3))  # row-major: token 1 is (row 0, col 1)
    wide = vit_reshape_transform(1, grid_size=(2, 4))(torch.zeros(1, 9, 8))
    assert wide.shape == (1, 8, 2, 4)
    with pytest.raises(ValueError, match="11 tokens minus 1 prefix tokens = 10 patch tokens"):
        vit_reshape_transform(1)(torch.zeros(1, 11, 8))


def test_embedding_cam_explains_the_embedding_with_registers():
    # a ViT with register tokens: 1 CLS + 2 registers before the 4x4 patch grid
    backbone = timm.create_model("test_vit", reg_tokens=2, img_size=TINY_IMG, num_classes=0, global_pool="token")
    assert backbone.num_prefix_tokens == 3
    model = RetrievalModel(backbone).eval()
    images = torch.randn(2, 3, TINY_IMG, TINY_IMG)
    cams = embedding_cam(model, images)
    assert cams.shape == (2, TINY_IMG, TINY_IMG)
    assert cams.min() >= 0 and cams.max() <= 1 and cams.max() > 0  # a live gradient, not an all-zero map
    assert not np.allclose(cams[0], cams[1])
    # explaining the similarity to another image gives another map
    other = model(torch.randn(1, 3, TINY_IMG, TINY_IMG)).expand(2, -1)
    assert not np.allclose(embedding_cam(model, images, other), cams)


def test_gradcam_comparison_of_a_trained_run(trained_run, tmp_path, capsys):
    model = IndexModel.from_run(trained_run)
    frozen, adapted = frozen_and_adapted(model)
    assert frozen.is_merged is False and adapted.is_merged
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 50, 3), dtype=np.uint8)) for i in range(2)]
    figure = gradcam_comparison(
        {"frozen": frozen, "adapted": adapted}, images, img_size=TINY_IMG, cell=64, reference=images[0]
    )
    assert figure.size == (6 + 4 * 70, 12 + 10 + 2 * 70)  # columns: reference, image, frozen, adapted
    panels = np.asarray(figure)
    frozen_panel = panels[22:86, 6 + 2 * 70 : 6 + 2 * 70 + 64]
    adapted_panel = panels[22:86, 6 + 3 * 70 : 6 + 3 * 70 + 64]
    assert not np.array_equal(frozen_panel, adapted_panel)  # the adapters change what is attended to

    out = tmp_path / "cam.png"
    image = tmp_path / "bird.png"
    images[1].save(image)
    code, stdout, _ = run_cli(
        capsys, "visualize", "gradcam", str(image), "--run", str(trained_run), "--out", str(out), "--cell", "48"
    )
    assert code == 0 and Image.open(out).size == (6 + 3 * 54, 12 + 10 + 54)

    frozen_only = IndexModel.frozen("test_vit", pretrained=False, img_size=TINY_IMG)
    with pytest.raises(ConfigError, match="no adapted model to compare"):
        frozen_and_adapted(frozen_only)


def test_retrieval_grid_marks_matches_by_label(gallery_index, tmp_path, capsys):
    gallery, index = gallery_index
    searcher = Searcher(index)
    class_image(0, 50).save(tmp_path / "elsewhere.png")
    rows = retrieval_rows(searcher, [gallery.paths[2], tmp_path / "elsewhere.png"], sample=2, seed=1, k=5)
    assert len(rows) == 4
    # a gallery query is left out of its own matches and its indexed label is the ground truth
    assert rows[0].query_label == "class_0" and 2 not in [m.id for m in rows[0].matches] and len(rows[0].matches) == 5
    assert rows[1].query_label is None  # not in the gallery: labels unknown
    thumb = 40
    figure = np.asarray(render_retrieval_grid(rows, thumb=thumb))
    header, gap, cell_h = 10 + 8, 6, thumb + 2 * (10 + 3) + 6
    assert tuple(figure[header + 1, gap + 1]) == QUERY_COLOUR
    for j, match in enumerate(rows[0].matches):
        colour = CORRECT_COLOUR if match.label == "class_0" else WRONG_COLOUR
        assert tuple(figure[header + 1, 2 * gap + (j + 1) * (thumb + gap) + 1]) == colour
    assert figure.shape[0] == header + 4 * cell_h + gap

    out = tmp_path / "grid.png"
    code, stdout, _ = run_cli(
        capsys, "visualize", "grid", "--index", str(index), "--sample", "3", "-k", "4", "--out", str(out)
    )
    assert code == 0 and "3 queries x top-4" in stdout and "/12 matches share the query's label" in stdout
    assert Image.open(out).size[0] == 2 * gap + 5 * (128 + gap)


def test_comparison_grid_asks_each_model_the_same_queries(gallery_index, trained_run, tmp_path, capsys):
    from dva.index import index_gallery, read_gallery

    gallery, frozen_dir = gallery_index
    trained_dir = tmp_path / "trained-index"
    index_gallery(
        trained_dir, read_gallery(gallery.root), model=IndexModel.from_run(trained_run), num_workers=0, progress=False
    )
    frozen, trained = Searcher(frozen_dir), Searcher(trained_dir)
    rows = comparison_rows([frozen, trained], [gallery.paths[3]], sample=2, seed=0, k=4)
    assert [r.title for r in rows] == ["frozen", "ica"] * 3  # per query: the frozen row, then the trained one
    for model, searcher in enumerate([frozen, trained]):  # each row is that model's own ranking, query left out
        alone = retrieval_rows(searcher, [gallery.paths[3]], k=4)[0]
        assert [m.id for m in rows[model].matches] == [m.id for m in alone.matches]
        assert 3 not in [m.id for m in alone.matches] and rows[model].query_label == "class_0"
    for i in (2, 4):  # the sampled queries are the same images for both models
        assert np.array_equal(np.asarray(rows[i].query), np.asarray(rows[i + 1].query))
        assert rows[i].query_label == rows[i + 1].query_label is not None

    out = tmp_path / "compare.png"
    code, stdout, err = run_cli(
        capsys,
        "visualize",
        "grid",
        "--index",
        str(frozen_dir),
        "--compare",
        str(trained_dir),
        "--sample",
        "2",
        "-k",
        "3",
        "--thumb",
        "40",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert "2 queries x top-3" in stdout and "frozen " in stdout and ", ica " in stdout
    header, gap, cell_h = 10 + 8, 6, 40 + 2 * (10 + 3) + 6
    assert Image.open(out).size[1] == header + 4 * cell_h + gap  # 2 queries x 2 models
