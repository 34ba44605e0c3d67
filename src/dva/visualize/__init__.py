"""Figures that show why a match was returned: retrieval grids (Fig. 4) and Grad-CAM maps (Fig. 5)."""

from dva.visualize.gradcam import (
    SimilarityTarget,
    embedding_cam,
    frozen_and_adapted,
    gradcam_comparison,
    vit_reshape_transform,
)
from dva.visualize.grid import GridRow, comparison_rows, render_retrieval_grid, retrieval_rows

__all__ = [
    "GridRow",
    "SimilarityTarget",
    "comparison_rows",
    "embedding_cam",
    "frozen_and_adapted",
    "gradcam_comparison",
    "render_retrieval_grid",
    "retrieval_rows",
    "vit_reshape_transform",
]
