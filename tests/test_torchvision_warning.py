"""torchvision >= 0.29 warns that its image decoders are deprecated, on every call in every rank:
``mvssl_core.gpu_views`` silences that one warning (its docstring says why it keeps those decoders) and
no other. Run in a fresh interpreter with every warning shown (``-W always``), as a user would see them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import io, warnings
import torch
from PIL import Image
if {import_gpu_views}:
    from mvssl_core import gpu_views
from torchvision.io import decode_image, decode_jpeg
buf = io.BytesIO()
Image.new("RGB", (8, 6), (200, 10, 10)).save(buf, format="JPEG")
data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
images = gpu_views.decode_batch([data, data], "cpu") if {import_gpu_views} else decode_jpeg([data, data])
print(tuple(images[0].shape), int(images[1][0, 0, 0]) > 150)
decode_image(data)
warnings.warn_explicit("another torchvision deprecation", DeprecationWarning, "image.py", 1,
                       module="torchvision.io.image")
warnings.warn("a warning of the program's own", UserWarning)
"""


def run(import_gpu_views: bool) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-W", "always", "-c", SCRIPT.format(import_gpu_views=import_gpu_views)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["(3,", "6,", "8)", "True"]
    return done


def test_only_the_decoder_deprecation_is_silenced():
    bare = run(import_gpu_views=False)
    deprecated = "image decoding and encoding capabilities of TorchVision are deprecated"
    if deprecated not in bare.stderr:
        pytest.skip("this torchvision (< 0.29) does not deprecate its decoders: nothing to silence")
    ours = run(import_gpu_views=True)
    assert deprecated not in ours.stderr
    assert "another torchvision deprecation" in ours.stderr and "a warning of the program's own" in ours.stderr
