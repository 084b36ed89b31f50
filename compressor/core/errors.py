"""The one error family of vitshrink: everything a user or the environment can cause."""


class VitShrinkError(Exception):
    """Base of every error vitshrink raises on purpose; the CLI prints it as one line."""


class UnsupportedModelError(VitShrinkError):
    """The model contains a module the surgery cannot cut (raised before any weight changes)."""


class ModelSourceError(VitShrinkError):
    """A model name, folder or checkpoint that cannot be loaded."""


class ArtifactError(VitShrinkError):
    """A folder that is not a valid vitshrink artifact, or whose weights do not fit its spec."""


class BudgetError(VitShrinkError):
    """A compression target that is out of range or cannot be met under the constraints."""


class DataError(VitShrinkError):
    """A dataset name or folder that cannot be used."""


class UnreadableFileError(VitShrinkError):
    """A weight or JSON file that exists but cannot be read (truncated, corrupt, wrong format)."""
