"""The llama_swiftkv format, checked from outside: `swiftkv convert` output read back with the
`safetensors` and `tokenizers` packages by scripts/check_swiftkv_format.py (config keys, tensor
names, shapes and dtypes of the published format; the tokenizer loads in Hugging Face tokenizers and
tokenizes like swiftkv's reference tokenizer.json; the distillation init values)."""
import subprocess
import sys

import pytest

from testpaths import MODEL, ROOT, SWIFTKV
CHECK = ROOT / "scripts" / "check_swiftkv_format.py"

pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")
pytestmark = pytest.mark.skipif(not SWIFTKV.exists(), reason=f"{SWIFTKV} not built")


@pytest.mark.skipif(not MODEL.exists(), reason="default model not fetched")
@pytest.mark.parametrize("cut,group", [("50%", 3), ("25%", 2)])
def test_converted_default_model_has_the_published_format(tmp_path, cut, group):
    out = tmp_path / "student"
    subprocess.run([SWIFTKV, "convert", "--model", MODEL, "--swiftkv-layers", cut, "--group", str(group),
                    "--dtype", "bf16", "--out", out], check=True, capture_output=True)
    r = subprocess.run([sys.executable, CHECK, out, "--check-init",
                        "--reference-tokenizer", ROOT / "tests/tokenizer/data/smollm2_tokenizer.json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("ckpt", ["converted_L1_g3", "converted_L2_g1", "independent_L2_g2"])
def test_torch_check_checkpoints_have_the_published_format(ckpt):
    r = subprocess.run([sys.executable, CHECK, ROOT / "tests/swiftkv/torch_check" / ckpt], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
