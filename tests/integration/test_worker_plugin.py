"""A channel plugin from another distribution, found through the `pushtask.channels`
entry-point group by a real worker process (docs/channels.md's tiny example)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from pushtask.models import PushTaskSpec
from tests.support.workers import WorkerProcs, create_run, spec_for, totals

pytestmark = pytest.mark.integration

PLUGIN = """
from pathlib import Path

from pushtask_worker.channels import Attempt, Channel, Delivery, Outcome


class PigeonChannel(Channel):
    name = "pigeon"

    async def send(self, delivery: Delivery) -> Attempt:
        if not delivery.user.startswith("bird-"):
            return Attempt(Outcome.FINAL, "not a bird")
        with open(self.ctx.settings["loft"], "a") as loft:
            loft.write(f"{delivery.user} {delivery.message['body']}\\n")
        return Attempt.ok()
"""


def install_plugin(site: Path) -> None:
    """What `pip install my-pigeon` leaves on the path: the package and its entry points."""
    (site / "my_pigeon").mkdir(parents=True)
    (site / "my_pigeon" / "__init__.py").write_text("")
    (site / "my_pigeon" / "channel.py").write_text(PLUGIN)
    info = site / "my_pigeon-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-pigeon\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[pushtask.channels]\npigeon = my_pigeon.channel:PigeonChannel\n"
    )


def test_a_plugin_channel_delivers_a_run(uri: str, tmp_path: Path) -> None:
    site, loft = tmp_path / "site", tmp_path / "loft.txt"
    install_plugin(site)
    users = [f"bird-{i}" for i in range(40)] + ["cat-1", "cat-2"]
    spec = spec_for(users, url="http://unused.invalid/", shards=4)
    spec["message"] = {
        "channel": "pigeon",
        "settings": {"loft": str(loft)},
        "template": {"body": "Coo {{ user }}"},
    }
    spec = PushTaskSpec.model_validate(spec).model_dump(
        by_alias=True, mode="json", exclude_none=True
    )
    run_id, _ = create_run(uri, spec)
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    with WorkerProcs(uri, run_id, tmp_path / "logs", env={"PYTHONPATH": path}) as workers:
        workers.start_many(2)
        assert set(workers.wait(120).values()) == {0}, workers.logs()
    lines = loft.read_text().splitlines()
    seen = Counter(line.split()[0] for line in lines)
    assert set(seen) == {f"bird-{i}" for i in range(40)} and max(seen.values()) == 1
    assert "bird-7 Coo bird-7" in lines
    t = totals(uri, run_id)
    assert (t.sent, t.failed, t.unknown) == (40, 2, 0)
