"""The built agent image: its recipe label, its user, its demo agents, and an idempotent build."""

from __future__ import annotations

import subprocess
from pathlib import Path

import docker
import pytest

from app.image import AGENTS_IN_IMAGE, RECIPE_LABEL, Recipe
from tests.support import AIRLOCK, REPO

SECCOMP = REPO / "profiles" / "seccomp" / "airlock-default.json"
# Each demo agent, a small tree it can work on, and the file it writes when it may.
AGENTS = {
    "notes_organizer.py": (
        {
            "todo.md": "# Errands\n\n- [ ] post the letter #home\n",
            "deep/idea.txt": "A thought.\nTODO: expand it #work\n",
            "odd \udcff name.md": "bytes that are not UTF-8: \udcfe\n",
        },
        "summary.md",
    ),
    "csv_totals.py": (
        {"q1.csv": 'month,amount\njan,"1,200.50"\nfeb,(200)\n', "empty.csv": ""},
        "totals.csv",
    ),
    "code_survey.py": (
        {"src/main.py": "print('hi')  # TODO: say more\n", "lib/util.c": "int x; /* FIXME */\n"},
        "SURVEY.md",
    ),
}

pytestmark = pytest.mark.docker


def make_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name  # a lone surrogate becomes that raw byte in the file name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        folder.chmod(0o755)  # pytest makes tmp_path 0700; the agent runs as nobody
    return root


def run_agent(
    engine: docker.DockerClient, image: str, script: str, tree: Path, *, writable: bool
) -> tuple[int, str]:
    """Run one demo agent confined the way sessions run agents."""
    container = engine.containers.run(
        image,
        ["python3", f"{AGENTS_IN_IMAGE}/{script}"],
        detach=True,
        network_mode="none",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges", f"seccomp={SECCOMP.read_text()}"],
        volumes={str(tree): {"bind": "/work", "mode": "rw" if writable else "ro"}},
        working_dir="/work",
    )
    try:
        status = container.wait(timeout=120)["StatusCode"]
        return status, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def test_recipe_label_matches_the_current_recipe(
    engine: docker.DockerClient, agent_image: str
) -> None:
    labels = engine.images.get(agent_image).labels
    assert labels.get(RECIPE_LABEL) == Recipe.default().digest(), (
        "the image is outdated: run `airlock image build`"
    )


def test_default_user_is_not_root(engine: docker.DockerClient, agent_image: str) -> None:
    user = engine.images.get(agent_image).attrs["Config"]["User"]
    assert user == "65534:65534"
    output = engine.containers.run(agent_image, ["id", "-u"], network_mode="none", remove=True)
    assert output.decode().strip() == "65534"


def test_image_holds_exactly_the_shipped_agents(
    engine: docker.DockerClient, agent_image: str
) -> None:
    listing = engine.containers.run(
        agent_image, ["ls", AGENTS_IN_IMAGE], network_mode="none", remove=True
    )
    shipped = {a.name for a in Recipe.default().agents}
    # agentkit is the demo agents' shared module; airlock_netlog the egress sidecar's witness.
    assert set(listing.decode().split()) == shipped == {*AGENTS, "agentkit.py", "airlock_netlog.py"}


@pytest.mark.parametrize("script", sorted(AGENTS))
def test_agent_prints_instead_of_writing_to_a_read_only_folder(
    engine: docker.DockerClient, agent_image: str, tmp_path: Path, script: str
) -> None:
    files, output_name = AGENTS[script]
    tree = make_tree(tmp_path / "tree", files)
    status, output = run_agent(engine, agent_image, script, tree, writable=False)
    assert status == 0, output
    assert "read-only" in output, output
    assert not (tree / output_name).exists()


@pytest.mark.parametrize("script", sorted(AGENTS))
def test_agent_writes_its_result_to_a_writable_folder(
    engine: docker.DockerClient, agent_image: str, tmp_path: Path, script: str
) -> None:
    files, output_name = AGENTS[script]
    tree = make_tree(tmp_path / "tree", files)
    tree.chmod(0o777)  # the agent is uid 65534, the tree belongs to whoever runs the tests
    status, output = run_agent(engine, agent_image, script, tree, writable=True)
    assert status == 0, output
    assert f"wrote {output_name}" in output, output
    assert (tree / output_name).read_text().strip()


def test_second_build_is_up_to_date(agent_image: str) -> None:
    result = subprocess.run(
        [str(AIRLOCK), "image", "build", "--tag", agent_image],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout, result.stdout
