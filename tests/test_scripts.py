"""The soak script keeps working (at a small scale: the real run is minutes)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).parent.parent / "scripts" / "soak.py"


@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="ASan's allocator keeps freed memory: RSS is not flat by design")
@pytest.mark.load
def test_the_soak_script_passes_at_a_small_scale():
    out = subprocess.run([sys.executable, str(SOAK), "--cycles", "20", "--messages", "8000",
                          "--connections", "800"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "PASS: flat", out.stdout
    phases = [line.split()[0] for line in lines
              if line.startswith(("cycles ", "messages ", "connections "))]
    # a warm-up, then two full rounds of the three phases
    assert phases == ["cycles", "messages", "connections"] * 3, out.stdout
