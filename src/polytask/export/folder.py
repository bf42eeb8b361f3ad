"""The output folder of an export: a new one, or a previous export's replaced (``--overwrite``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from polytask.errors import PolytaskError

# what an export writes at the top of its folder: one of these marks a folder as a polytask export
MANIFESTS = ("polytask_export.json", "polytask_onnx.json")


def claim_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a folder with files in it, unless ``overwrite`` and it holds a previous export:
    then clear it, so no task folder of the earlier export stays beside the new ones (or is
    uploaded with them). A non-empty folder that is not an export is never cleared."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise PolytaskError(f"--out {out_dir}: a file is in the way; choose another --out")
    if not any(out_dir.iterdir()):
        return
    is_export = any((out_dir / name).is_file() for name in MANIFESTS)
    if not overwrite:
        what = "a previous export" if is_export else "other files"
        hint = "replace it with --overwrite, or choose" if is_export else "choose"
        raise PolytaskError(f"--out {out_dir} holds {what}; {hint} another --out (an export writes a folder "
                            f"of its own, so no earlier task folder is kept beside the new ones)")
    if not is_export:
        raise PolytaskError(f"--out {out_dir} holds files that are not a polytask export (no "
                            f"{' or '.join(MANIFESTS)}); --overwrite clears only an earlier export: choose another --out")
    shutil.rmtree(out_dir)
