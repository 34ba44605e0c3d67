"""``dva visualize``: retrieval grids (paper Fig. 4) and Grad-CAM comparisons (Fig. 5) as PNG."""

from __future__ import annotations

from pathlib import Path

import typer

from dva.errors import ConfigError

app = typer.Typer(help="Draw retrieval grids and Grad-CAM heat maps.", no_args_is_help=True)


@app.command("grid")
def grid(
    queries: list[Path] = typer.Argument(None, help="Query images (a gallery image is left out of its own matches)."),
    index_dir: Path = typer.Option(..., "--index", help="Index directory written by `dva index`."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    sample: int = typer.Option(0, "--sample", help="Also query with N gallery images drawn at random."),
    seed: int = typer.Option(0, "--seed", help="Seed of --sample."),
    k: int = typer.Option(10, "-k", "--k", help="Matches per query."),
    thumb: int = typer.Option(128, "--thumb", help="Thumbnail size in pixels."),
    device: str = typer.Option("cpu", "--device"),
    compare: list[Path] = typer.Option(
        None,
        "--compare",
        help="Another index of the same gallery (e.g. a trained run's): each query gets a row "
        "per index, titled with its model's method. Repeatable.",
    ),
) -> None:
    """Each query, then its top-k: green frame = same label as the query, red = another, grey = unknown."""
    from dva._io import atomic_write
    from dva.index import Searcher
    from dva.visualize import comparison_rows, render_retrieval_grid, retrieval_rows

    if compare:
        searchers = [Searcher(path, device=device) for path in [index_dir, *compare]]
        rows = comparison_rows(searchers, queries or [], sample=sample, seed=seed, k=k)
    else:
        rows = retrieval_rows(Searcher(index_dir, device=device), queries or [], sample=sample, seed=seed, k=k)
    figure = render_retrieval_grid(rows, thumb=thumb)
    atomic_write(out, lambda tmp: figure.save(tmp, format="PNG"))
    summaries = []
    for title in dict.fromkeys(r.title for r in rows):  # None alone for a single index
        mine = [r for r in rows if r.title == title and r.query_label]
        correct = sum(m.label == r.query_label for r in mine for m in r.matches)
        judged = sum(len(r.matches) for r in mine)
        if judged:
            summaries.append(f"{title + ' ' if title else ''}{correct}/{judged}")
    summary = f"; {', '.join(summaries)} matches share the query's label" if summaries else ""
    print(f"wrote {out} ({len(rows) // (1 + len(compare or []))} queries x top-{k}{summary})")


@app.command("gradcam")
def gradcam(
    images: list[Path] = typer.Argument(..., help="Images to explain."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    run: Path | None = typer.Option(None, "--run", help="A trained run: its adapted model vs its frozen backbone."),
    index_dir: Path | None = typer.Option(None, "--index", help="Or the model recorded in an index."),
    reference: Path | None = typer.Option(
        None, "--reference", help="Explain the similarity to this image (a query) instead of to each image itself."
    ),
    img_size: int | None = typer.Option(None, "--img-size", help="Input size (default: the model's)."),
    cell: int = typer.Option(224, "--cell", help="Size of each panel in pixels."),
) -> None:
    """Grad-CAM heat maps of the frozen backbone and the adapted model side by side (Fig. 5)."""
    from dva._io import atomic_write
    from dva.data.images import load_image
    from dva.index import IndexModel
    from dva.visualize import frozen_and_adapted, gradcam_comparison

    if (run is None) == (index_dir is None):
        raise ConfigError("pass one of --run RUN_DIR or --index INDEX_DIR")
    model = IndexModel.from_run(run) if run is not None else IndexModel.from_index(index_dir)
    frozen, adapted = frozen_and_adapted(model, img_size)
    figure = gradcam_comparison(
        {"frozen backbone": frozen, f"adapted ({model.config.model.method})": adapted},
        [load_image(p) for p in images],
        img_size=img_size or model.img_size,
        resize_size=model.resize_size,
        reference=load_image(reference) if reference else None,
        cell=cell,
    )
    atomic_write(out, lambda tmp: figure.save(tmp, format="PNG"))
    print(f"wrote {out} ({len(images)} images)")
