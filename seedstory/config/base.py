"""The strict base every config section derives from."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Unknown keys are errors, not silently ignored: a typo must never change a run."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)
