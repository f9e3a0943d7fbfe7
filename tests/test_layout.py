"""The architecture's rules: the library stands alone; training and UI sit on top of it."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_skinnet_loads_neither_gradio_nor_training():
    code = "import sys, skinnet, skinnet.data, skinnet.transforms; " \
           "print(sorted(m for m in ('gradio', 'training', 'pytorch_grad_cam') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_library_never_imports_training():
    for path in (ROOT / "skinnet").rglob("*.py"):
        text = path.read_text()
        assert "import training" not in text and "from training" not in text, path
