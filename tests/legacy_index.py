"""Write an index the way dva up to 0.2 did (format 1), to test reading and converting it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from dva.index.faiss_index import build_index
from dva.index.legacy import write_legacy_version
from dva.index.store import GalleryIndex


def downgrade_to_format_1(index_dir: Path, *, raw_separators: bool = False) -> None:
    """Rewrite a format-2 index in place as format 1 (version 1: full files, ids = rows).

    ``raw_separators``: write the metadata as dva 0.1.0 did, with U+2028 & co. left raw.
    """
    index = GalleryIndex.load(index_dir)
    assert list(index.ids) == list(range(len(index))), "format 1 has no gaps in its ids"
    embeddings, rows = np.array(index.embeddings), list(index.rows)
    manifest = {k: v for k, v in index.manifest.items() if k not in ("files", "next_id", "snapshot", "format_version")}
    manifest["version"] = 1
    index.db.close()
    for name in ("metadata.sqlite", *index.manifest["files"]["shards"], index.manifest["files"]["faiss"]):
        if name:
            (index_dir / name).unlink()
    write_legacy_version(index_dir, manifest, embeddings, rows, build_index(index.spec, embeddings))
    if raw_separators:
        metadata = index_dir / "metadata-000001.jsonl"
        metadata.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert not (index_dir / "metadata.sqlite").exists()
    shutil.rmtree(index_dir / "__pycache__", ignore_errors=True)
