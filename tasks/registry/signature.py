"""What a registered version takes and was trained on, kept on it as tags (`input`, `input_key`, `input_shape`,
`source`, `model`),
and the rule that an alias moves only between versions taking the same input: the same sample shape, feature
columns and classes. A wine table's model given `digits-cnn@champion` would break every caller of that alias (the
README's snippet, `trainflow predict`, the nightly deployment), so the gate keeps such a version as challenger and
`trainflow promote` refuses it unless told `--force`. Versions registered before these tags: read from the model's
own metadata (its `trainflow` InputSpec)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException

from tasks import tracking
from trainlib.data.sources import content_digest
from trainlib.scoring import InputSpec

CLASSES_SHOWN = 10  # classes named in a signature's words; more are counted
COLUMNS_SHOWN = 8  # a table's feature columns named there


@dataclass(frozen=True)
class Signature:
    key: str  # digest of the shape, the kind, the feature columns and the classes
    words: str  # `grayscale images of 8x8 pixels, 10 classes (0, 1, ..., 9)`


def of_spec(spec: InputSpec) -> Signature:
    """The signature of a model trained with `spec`."""
    key = content_digest(list(spec.shape), spec.image, list(spec.feature_names), list(spec.classes))[:16]
    shown = ", ".join(spec.classes[:CLASSES_SHOWN]) + (", ..." if len(spec.classes) > CLASSES_SHOWN else "")
    takes = spec.describe()
    if len(spec.shape) == 1 and len(spec.feature_names) > COLUMNS_SHOWN:
        takes = (f"a table of {len(spec.feature_names)} feature columns "
                 f"({', '.join(spec.feature_names[:COLUMNS_SHOWN])}, ...)")
    return Signature(key, f"{takes}, {len(spec.classes)} classes ({shown})")


def tag(name: str, version: int, spec: InputSpec, run_id: str) -> Signature:
    """Tag a new version of `name` with its input signature, and the data source and model of the run `run_id` that
    made it. -> the signature."""
    client = tracking.client()
    params = client.get_run(run_id).data.params
    source, path = params.get("data.source", "?"), params.get("data.path")
    signature = of_spec(spec)
    for key, value in (("input", signature.words[:5000]), ("input_key", signature.key),
                       ("input_shape", str(tuple(spec.shape))), ("model", params.get("model.name", "?")),
                       ("source", source + (f" {Path(path).name}" if path and path != "None" else ""))):
        client.set_model_version_tag(name, str(version), key, value)
    return signature


def of_version(name: str, version: int) -> Signature | None:
    """The signature of a version: from its tags, or from its model's metadata when it has none (None: neither)."""
    client = tracking.client()
    tagged = client.get_model_version(name, str(version)).tags
    if tagged.get("input_key"):
        return Signature(tagged["input_key"], tagged.get("input", "?"))
    try:
        import mlflow

        metadata = mlflow.models.get_model_info(f"models:/{name}/{version}").metadata or {}
        return of_spec(InputSpec.from_dict(metadata["trainflow"]))
    except (MlflowException, KeyError, TypeError, OSError):
        return None


def refusal(name: str, alias: str, version: int, holder: int | None, new: Signature | None = None) -> str | None:
    """Why `alias` of `name` must not move from `holder` to `version` (they take different inputs), in one line; None
    when it may (the same input, no holder, or a signature unknown)."""
    if holder is None or holder == version:
        return None
    new, held = new or of_version(name, version), of_version(name, holder)
    if new is None or held is None or new.key == held.key:
        return None
    return (f"version {version} takes {new.words}, but @{alias}'s version {holder} takes {held.words}: callers of "
            f"models:/{name}@{alias} would break")
