"""``fmbench plan SUITE --json``: every trial's configuration as a run will resolve it, so a
protocol can be audited before it spends GPU-hours.

Nothing is loaded: no dataset, no network, no GPU. Method options whose defaults come from the data
(:func:`harness.core.methods.default_method_options`) are not computed but shown as :data:`RUN_TIME`,
and so are the method constants that follow from them. The document is printed one trial at a time
(grids run to 10,000 trials), and each method's options and constants are worked out once.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Iterator

from harness import SCIENCE_VERSION, __version__
from harness.core.methods import build_method, default_method_options, method_options
from harness.run.suite import MethodEntry, Suite, Trial

RUN_TIME = "resolved at run time from the data"


class _DataNeeded(Exception):
    pass


class _NoData:
    """A dataset that refuses to be read: the probe of :func:`data_dependent`."""

    def __getattr__(self, name: str) -> Any:
        raise _DataNeeded(name)


def data_dependent(entry: MethodEntry) -> list[str]:
    """The options of ``entry`` that a run takes from the data: those the suite leaves unset and
    ``default_method_options`` reads the data for when every other option counts as given (its
    ``given`` contract), so no list of such options is kept here to go stale."""
    names = list(method_options(entry.name))
    out = []
    for k in names:
        if k in entry.options:
            continue
        try:
            default_method_options(entry.name, _NoData(), given=[o for o in names if o != k])
        except _DataNeeded:
            out.append(k)
    return out


def method_config(entry: MethodEntry) -> dict[str, Any]:
    """Resolved options and the built method's ``describe()``. A constant counts as data-dependent
    when it moves with a data-dependent option (built again with that option doubled): VE's
    prior_std follows sigma_max though its name does not say so."""
    defaults = method_options(entry.name)
    options = {**defaults, **entry.options}
    unknown = data_dependent(entry)
    constants = build_method(entry.name, **options).describe()
    if unknown:
        moved = build_method(entry.name, **{**options, **{k: 2 * options[k] for k in unknown}})
        constants = {k: RUN_TIME if moved.describe().get(k) != v else v
                     for k, v in constants.items()}
    return {"method_options": {k: RUN_TIME if k in unknown else v for k, v in options.items()},
            "method_constants": constants}


def trial_config(trial: Trial, method: dict[str, Any]) -> dict[str, Any]:
    """One trial's entry; ``method`` is :func:`method_config` of its method entry. Keys follow the
    ``config.json`` a run writes (harness.run.trial.resolve), so the two can be compared."""
    spec = trial.spec
    return {
        "name": trial.name, "key": trial.key, "label": trial.method.label,
        "method": spec.method, **method,
        "dataset": {"name": spec.dataset, "kind": trial.dataset.kind, "root": spec.data_root,
                    "download": spec.download},
        "seed": spec.seed, "model": spec.model, "model_options": spec.model_options,
        "train": asdict(spec.train), "eval": asdict(spec.eval),
        "resources": {"train": asdict(trial.train_resources),
                      "eval": asdict(trial.eval_resources)},
        **({"plugins": dict(spec.plugins)} if spec.plugins else {}),  # as config.json: if used
    }


def plan_json(suite: Suite) -> Iterator[str]:
    """The plan as one JSON document, in pieces to print as they come (the same text as
    ``json.dumps(document, indent=2)``)."""
    head = {"suite": suite.name, "description": suite.description, "path": suite.path,
            "experiment": suite.experiment, "harness_version": __version__,
            "science_version": SCIENCE_VERSION, "trial_count": suite.size}
    yield json.dumps(head, indent=2)[:-2] + ',\n  "trials": ['
    methods: dict[str, dict[str, Any]] = {}
    for i, trial in enumerate(suite.iter_trials()):
        label = trial.method.label
        if label not in methods:
            methods[label] = method_config(trial.method)
        body = json.dumps(trial_config(trial, methods[label]), indent=2, default=str)
        yield ("\n    " if i == 0 else ",\n    ") + body.replace("\n", "\n    ")
    yield "\n  ]\n}\n"
