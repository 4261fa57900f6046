"""The stage registry is the one list of stages: a stage added to it appears
in `doit list`, in the CI pipeline, in the run summary and in the benchmark."""

from pathlib import Path

import pytest
from doit.cmd_base import ModuleTaskLoader
from doit.doit_cmd import DoitMain

from tasks import ci, graph, registry, summary
from tasks.model import plan

REPO = Path(__file__).resolve().parent.parent


def write_licenses(ctx: registry.CellContext) -> None:
    (ctx.files.dir / "licenses.json").write_text("{}")


LICENSES = registry.Stage[registry.CellContext](
    name="licenses",
    doc="list the licenses of each image's packages",
    group_doc="write the license lists",
    scope=registry.Scope.CELL,
    ci_job=registry.CiJob.IMAGE,
    action=write_licenses,
    describe=lambda ctx: f"the licenses of {ctx.cell.name}",
    inputs=lambda ctx: (ctx.files.packages,),
    outputs=lambda ctx: (ctx.files.dir / "licenses.json",),
)


@pytest.fixture
def with_licenses(monkeypatch):
    stages = list(registry.STAGES)
    stages.insert(stages.index(registry.MANIFEST) + 1, LICENSES)
    monkeypatch.setattr(registry, "STAGES", tuple(stages))


def make_plan(tmp_path, matrix_file, **options):
    options = {"workdir": str(tmp_path / "build"), "matrix": str(matrix_file), **options}
    return plan.from_options(REPO, options.get, options)


def doit_list(the_plan, capsys) -> list[str]:
    namespace = {
        **graph.doit_tasks(the_plan),
        "DOIT_CONFIG": {"dep_file": str(the_plan.workdir / ".doit.db"), "backend": "sqlite3"},
    }
    the_plan.workdir.mkdir(parents=True, exist_ok=True)
    capsys.readouterr()
    assert DoitMain(ModuleTaskLoader(namespace)).run(["list", "--all", "--quiet"]) == 0
    return capsys.readouterr().out.split()


def test_a_stage_added_to_the_registry_is_a_doit_task(tmp_path, test_matrix_file, with_licenses, capsys):
    the_plan = make_plan(tmp_path, test_matrix_file)
    names = doit_list(the_plan, capsys)
    for cell in the_plan.matrix.cells:
        assert f"licenses:{cell.name}" in names
    assert "licenses" in names
    task = graph.load_tasks(the_plan)["licenses:bookworm-nocloud-amd64"]
    cell_dir = the_plan.workdir / "bookworm-nocloud-amd64"
    assert task.file_dep == {str(cell_dir / "packages.tsv")}
    assert task.targets == [str(cell_dir / "licenses.json")]
    # ... and it joins the known failures' chains, after the stage it follows.
    assert [s.name for s in registry.cell_chain()] == [
        "build",
        "sbom",
        "compress",
        "boottest",
        "manifest",
        "licenses",
        "provenance",
        "publish",
    ]


def test_a_stage_added_to_the_registry_runs_in_the_ci_pipeline(tmp_path, test_matrix_file, with_licenses):
    document = ci.pipeline(make_plan(tmp_path, test_matrix_file), "push")
    script = document["image:bookworm-nocloud-amd64"]["script"]
    commands = [line.split()[2] for line in script if line.startswith("doit ")]
    stages = ("build", "sbom", "compress", "boottest", "manifest", "licenses", "provenance")
    assert commands == [f"{s}:bookworm-nocloud-amd64" for s in stages]


def test_a_stage_added_to_the_registry_is_benchmarked_and_summarised(
    tmp_path, test_matrix_file, with_licenses, benchmark
):
    cell = make_plan(tmp_path, test_matrix_file).matrix.cell("bookworm-nocloud-amd64")
    assert benchmark.stage_targets(cell) == [
        ("base", "base:bookworm-amd64"),
        ("build", "build:bookworm-nocloud-amd64"),
        ("sbom", "sbom:bookworm-nocloud-amd64"),
        ("compress", "compress:bookworm-nocloud-amd64"),
        ("boottest", "boottest:bookworm-nocloud-amd64"),
        ("manifest", "manifest:bookworm-nocloud-amd64"),
        ("licenses", "licenses:bookworm-nocloud-amd64"),
        ("provenance", "provenance:bookworm-nocloud-amd64"),
        ("publish", "publish:bookworm-nocloud-amd64"),
    ]
    reporter = summary.reporter_for(make_plan(tmp_path, test_matrix_file).matrix, tmp_path / "summary.json")
    assert "licenses" in reporter.columns.fget(reporter)


def test_every_stage_name_is_unique_and_every_cell_stage_writes_something(tmp_path, test_matrix_file):
    names = [stage.name for stage in registry.stages()]
    assert len(names) == len(set(names))
    the_plan = make_plan(tmp_path, test_matrix_file)
    for stage in registry.stages():
        for ctx in stage.contexts(the_plan):
            assert stage.outputs(ctx), f"{stage.name}:{ctx.name} declares no target: doit could not tell it is done"
