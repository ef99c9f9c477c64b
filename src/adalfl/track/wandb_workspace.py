"""A W&B workspace that opens on a sweep's results, defined with ``wandb-workspaces``.

``python -m adalfl.track.wandb_workspace <sweep folder> [--entity E] [--project P] [--check]``

The workspace shows the sweep's report run (adalfl.track.wandb_report): its results tables and
figures; and the job runs grouped by dataset, model and method, with the test and validation
curves as the mean over seeds with a ± standard deviation band, and the runs table pinned to the
summary keys of the paper's table (test metric, best validation metric, wall time, status).

``wandb-workspaces`` builds the definition without network access (``build``, and ``--check``,
which prints it), but it can only *save* a workspace through W&B's API: the definition cannot be
written into the offline run files. So, after ``wandb sync`` has uploaded the sweep's runs, run this
command once, online and logged in, to save the workspace and print its URL.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

# W&B config keys of a job run that identify a cell of the paper's table (the model by its class,
# as the report's model name is).
GROUP_BY = ("dataset.name", "model._target_", "method.name")
PINNED = ("summary:status", "summary:test_metric", "summary:best_val_metric", "summary:wall_time_s/total")


def sweep_settings(sweep: Path) -> dict[str, Any]:
    """What the workspace needs from a sweep folder: the W&B project and entity and the experiment
    it ran with (multirun.yaml), its metrics (results.csv) and its figures (figures/*.png)."""
    cfg = OmegaConf.load(sweep / "multirun.yaml") if (sweep / "multirun.yaml").exists() else OmegaConf.create()
    metrics: list[str] = []
    if (sweep / "results.csv").exists():
        with open(sweep / "results.csv", newline="") as handle:
            metrics = sorted({row["metric"] for row in csv.DictReader(handle)})
    return {
        "project": OmegaConf.select(cfg, "logger.project", default=None) or "adalfl",
        "entity": OmegaConf.select(cfg, "logger.entity", default=None),
        "experiment": OmegaConf.select(cfg, "experiment", default=None),
        "title": OmegaConf.select(cfg, "experiment", default=None) or sweep.name,
        "metrics": metrics or ["error_rate", "mse"],
        "figures": sorted(f"figures/{p.stem}" for p in (sweep / "figures").glob("*.png")),
    }


def build(
    project: str, entity: str | None, title: str, experiment: str | None, metrics: list[str], figures: list[str]
) -> Any:
    """The workspace definition (a ``wandb_workspaces.workspaces.Workspace``); needs no network."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    def curves(split: str) -> list[Any]:
        return [
            wr.LinePlot(
                title=f"{split} {metric}: mean ± std over seeds",
                x="train/step",
                y=[f"{split}/{metric}"],
                groupby_aggfunc="mean",
                groupby_rangefunc="stddev",
            )
            for metric in metrics
        ]

    results = [wr.WeavePanelSummaryTable(table_name=f"results/{key}") for key in ("table", "paired", "run_time")]
    if figures:
        results.append(wr.MediaBrowser(title="sweep figures", media_keys=figures, num_columns=2))
    sections = [
        ws.Section(name="Results", panels=results, is_open=True, pinned=True),
        ws.Section(name="Test metric", panels=curves("test"), is_open=True),
        ws.Section(name="Validation metric", panels=curves("val"), is_open=False),
        ws.Section(
            name="Offline phase",
            panels=[
                wr.LinePlot(
                    title="offline meta-objective: mean ± std over seeds",
                    x="offline/step",
                    y=["offline/meta_loss"],
                    groupby_aggfunc="mean",
                    groupby_rangefunc="stddev",
                )
            ],
        ),
    ]
    filters = [ws.Config("experiment") == experiment] if experiment else ""
    return ws.Workspace(
        entity=entity or "",
        project=project,
        name=f"AdaLFL: {title}",
        sections=sections,
        settings=ws.WorkspaceSettings(x_axis="train/step"),
        runset_settings=ws.RunsetSettings(
            filters=filters, groupby=[ws.Config(key) for key in GROUP_BY], pinned_columns=list(PINNED)
        ),
    )


def main(argv: list[str]) -> int:
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0 if argv else 2
    options: dict[str, str | None] = {"--entity": None, "--project": None}
    check, positional = False, []
    args = iter(argv)
    for arg in args:
        if arg in options:
            options[arg] = next(args, None)
        elif arg == "--check":
            check = True
        else:
            positional.append(Path(arg))
    if len(positional) != 1 or not positional[0].is_dir():
        print("give one sweep folder", file=sys.stderr)
        return 2
    settings = sweep_settings(positional[0])
    settings["project"] = options["--project"] or settings["project"]
    settings["entity"] = options["--entity"] or settings["entity"]
    try:
        workspace = build(
            **{k: settings[k] for k in ("project", "entity", "title", "experiment", "metrics", "figures")}
        )
    except ImportError as err:
        print(f"{err}: wandb-workspaces is in the dev extra: pip install -e '.[dev]'", file=sys.stderr)
        return 1
    if check:
        print(workspace)
        return 0
    try:
        if not workspace.entity:
            import wandb

            workspace.entity = wandb.Api().default_entity  # the logged-in user's (needs network)
        workspace.save()
    except Exception as err:  # noqa: BLE001 - one line: saving needs a login and W&B's API
        print(
            f"could not save the workspace ({type(err).__name__}: {err}); saving needs `wandb login` and "
            "network access (--check builds it offline)",
            file=sys.stderr,
        )
        return 1
    print(workspace.url)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
