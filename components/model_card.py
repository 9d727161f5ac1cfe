"""A model card for each registered version: what it is for, the data it was trained on, its
figures with their intervals, the gate's decision, its limitations and how to call it. It is the
version's description in the registry and the ``model_card.md`` artifact of its run."""

from __future__ import annotations

from typing import Any

from components.evaluation.report import gate_markdown, markdown_table


def _tag(tags: dict[str, str], key: str) -> str:
    value = tags.get(key)
    return "unknown" if value in (None, "", "None") else str(value)


def model_card(name: str, version: str, report: dict[str, Any], decision: dict[str, Any], tags: dict[str, str],
               facts: dict[str, Any] | None, run_id: str) -> str:
    proto = report["protocol"]
    k, test = proto["k_shot"], proto["test_classes"]
    size = f"{facts['image_size']}x{facts['image_size']}" if facts else "the training size"
    channels = (f"{facts['channels']}-channel" if facts else "") + " images"
    lines = [
        f"# {name} v{version}", "",
        "## What it is for",
        f"A few-shot image generator: given K = {k} images of a class it has never seen, it adapts in a few "
        "steps and generates new images of that class (a set-conditioned VAE meta-learned by metagen).", "",
        "## Data",
        f"- data version: raw `{_tag(tags, 'data.raw_md5')}`, prepared `{_tag(tags, 'data.prepared_md5')}`; "
        f"code `{_tag(tags, 'git.commit')}`" + (" with uncommitted changes" if tags.get("git.dirty") == "True" else "")
        + f"; params `{_tag(tags, 'params.digest')}`",
        f"- trained on {facts.get('train_classes', 'the meta-train')} classes; scored on {len(test)} held-out "
        f"classes ({', '.join(test[:8])}{', ...' if len(test) > 8 else ''})" if facts else
        f"- scored on {len(test)} held-out classes", "",
        "## Figures on the held-out classes", "", markdown_table(report),
        "## Promotion gate", "", gate_markdown(decision["decision"], decision["reason"]),
        "## Limitations",
        f"- expects {channels}, resized to {size}, with pixel values in [0, 1]"
        + (f"; trained on images {facts['polarity']}: supports otherwise get a warning and poor samples" if facts else ""),
        f"- adapts on {k} supports as evaluated; more or fewer work, unmeasured",
        f"- its NLL column: {report.get('nll', 'see the evaluation')}", "",
        "## How to call it", "",
        "```python",
        "import mlflow",
        f'model = mlflow.pyfunc.load_model("models:/{name}/{version}")',
        f"images = model.predict(support, params={{'n': 16, 'seed': 0}})  # support: ({k}, C, H, W) float32",
        "```",
        f"`metagen generate --support DIR --model models:/{name}/{version}`, or over REST: "
        f"`mlflow models serve -m models:/{name}/{version}`, then POST `/invocations` with "
        '`{"inputs": [...], "params": {"n": 16}}`.', "",
        f"Evaluated and logged by MLflow run `{run_id}`.", "",
    ]
    return "\n".join(lines)
