"""What `pip install pushtask` (and the image, which installs the same wheel) carries: the
product's packages and its console scripts, nothing of the local test stack."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_the_product_and_no_devstack(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "--wheel-dir", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("pushtask-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.startswith("pushtask-")}
    assert tops == {
        "pushtask",
        "pushtask_operator",
        "pushtask_worker",
        "pushtask_console",
        "pushtask_client",
        "pushtask_tracker",
    }
    assert "pushtask_console/static/index.html" in names  # the console's page
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    scripts_wanted = ("pushtask-operator", "pushtask-worker", "pushtask-console",
                      "pushtask-tracker", "kubectl-push")  # fmt: skip
    for script in scripts_wanted:
        assert f"{script} = " in scripts


def test_the_kind_image_context_holds_every_source_folder_the_dockerfile_copies() -> None:
    """scripts/kind/build-image.sh assembles the image's build context itself: a folder the
    Dockerfile copies and the script leaves out fails the product image on kind only."""
    root = Path(__file__).resolve().parents[2]
    copied = re.findall(r"^COPY (\w+) \./\1$", (root / "Dockerfile").read_text(), re.M)
    script = (root / "scripts" / "kind" / "build-image.sh").read_text()
    (listed,) = re.findall(r"^for d in ([\w ]+); do$", script, re.M)
    assert copied and sorted(copied) == sorted(listed.split())
