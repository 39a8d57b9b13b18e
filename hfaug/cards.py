"""Dataset and model cards, rendered from the Jinja templates in model_cards/ (shipped in the wheel)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from .errors import HfaugError

PAPER_CITATION = """@inproceedings{fazili-etal-2024-boosting,
  title = {Boosting Zero-Shot Crosslingual Performance using {LLM}-Based Augmentations with Effective Data Selection},
  author = {Fazili, Barah and Agrawal, Ashish Sunil and Jyothi, Preethi},
  booktitle = {Findings of the Association for Computational Linguistics: ACL 2024},
  pages = {13406--13422},
  year = {2024},
  eprint = {2407.10582},
  archivePrefix = {arXiv}
}"""


def template_dir() -> Path:
    return Path(str(resources.files("hfaug") / "model_cards"))


def render(template: str, **context: Any) -> str:
    """Render ``model_cards/<template>`` with ``context`` (``citation`` is always available)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,  # a missing value is a bug in the caller, not a blank
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    try:
        return env.get_template(template).render(citation=PAPER_CITATION, **context)
    except jinja2.TemplateNotFound:
        raise HfaugError(f"card template '{template}' not found in {template_dir()}") from None
