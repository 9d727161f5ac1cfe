"""Exceptions a user can act on: each names the file, key or value and what was expected."""


class MetagenError(Exception):
    """Base class of errors that the CLI reports as a one-line message and a non-zero exit."""


class ParamsError(MetagenError):
    """params.yaml (or a --set override) is invalid."""


class DataError(MetagenError):
    """Input data is missing, corrupt, unsafe or too small for the configured task."""


class CheckpointError(MetagenError):
    """A checkpoint is missing or does not match the configured model."""


class TrainingError(MetagenError):
    """Training cannot go on (e.g. a non-finite loss); nothing of that step is saved."""


class ServerUnreachable(MetagenError):
    """A server the pipeline talks to (MLflow, Prefect, Ray) does not answer: worth a retry."""
