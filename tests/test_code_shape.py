"""scripts/code_shape.py: no compare/ module over 400 lines, no function over 60 lines."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "code_shape.py"


def test_code_shape_script_passes():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_code_shape_script_finds_a_long_function(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import code_shape
    finally:
        sys.path.pop(0)
    src = tmp_path / "long.py"
    src.write_text("class A:\n    def f(self):\n" + "        x = 1\n" * 70 + "\ndef g():\n    pass\n")
    assert code_shape.functions(src) == [("A.f", 2, 71), ("g", 74, 2)]
