"""Helpers shared by tests that build deliberately invalid files (the vector builder's own)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "spec"))
from make_vectors import DELETE, assemble, both, edit, setp, split_file, unchecked_bytes  # noqa: E402

__all__ = ["DELETE", "assemble", "both", "edit", "setp", "split_file", "unchecked_bytes"]
