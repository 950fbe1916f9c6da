"""Where the repository's own files are (no heavy imports: the report and gate layers use it)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
THRESHOLDS = REPO_ROOT / "fixtures" / "thresholds.toml"
