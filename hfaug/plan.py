"""The stage plan of a recipe, without running anything: ``hfaug run <recipe> --dry-run``.

It shows the paper's setting the recipe runs, the stages in the order that setting gives them
with what each reads, and the prompts the generate stage would send, resolved per label (system
and user turn) and, for NLI, per premise domain.
"""

from __future__ import annotations

from .config import ENGLISH_TEACHER, HYBRID, TRANSLATED_TEACHER, Recipe

SETTING_MEANING = {
    ENGLISH_TEACHER: "the paper's English-teacher setting (train_ST.sh): teacher, labels, selection and students "
                     "on English; nothing is translated",
    TRANSLATED_TEACHER: "the paper's translated-teacher setting (train_ST_as.sh): source and generations "
                        "translated; the teacher, trained on the translated source, labels the translations",
    HYBRID: "not one of the paper's settings: English labels copied onto translations, students on English "
            "gold + translated synthetic rows",
}


def plan(recipe: Recipe) -> str:
    """The plan as text: setting, stage order with inputs, resolved prompts."""
    from .pipeline import planned, stage_inputs

    stated = "" if recipe.run.setting else " (not stated: implied by the sections)"
    lines = [f"hfaug run {recipe.ref} --dry-run: nothing is run or written",
             f"setting: {recipe.setting}{stated} - {SETTING_MEANING[recipe.setting]}", "stages:"]
    stages = planned(recipe)
    names = {s.name for s in stages}
    for i, stage in enumerate(stages, start=1):
        reads = [name for name in stage_inputs(recipe, stage) if name in names]
        lines.append(f"  {i:>2}. {stage.name:<16} <- {', '.join(reads) or '-'}")
    if recipe.has("generate"):
        lines += ["prompts:", *_prompt_lines(recipe)]
    return "\n".join(lines)


def _prompt_lines(recipe: Recipe) -> list[str]:
    from .prompts import hypothesis_requests, premise_requests, sentiment_requests, templates_for

    config = recipe.generate
    from .tasks import resolve_task

    task = resolve_task(recipe.run.task)
    labels = task.labels
    templates = templates_for(task, config.templates, config.prompt_set(task))
    out = []
    if task.is_pair:
        seen = {}
        for request in premise_requests(max(1, 4 * len(config.domain_mix)), templates, config.domain_mix, 0):
            seen.setdefault(request.meta["domain"], request)
        for domain in config.domain_mix:
            if domain in seen:
                out += _turns(f"premise ({domain})", seen[domain].chat)
        for request in hypothesis_requests([(0, "-", "{premise}")], labels, templates, 0):
            out += _turns(f"hypothesis ({request.label})", request.chat)
        return out
    # one request per prompt (the strict-neutral run's prompt once, with its count)
    requests = sentiment_requests(labels, 1, templates, config.domains, 0,
                                  n_strict_neutral=min(1, config.n_strict_neutral))
    for request in requests:
        variant = request.meta.get("variant")
        out += _turns(f"{request.label}{f' ({variant}, x{config.n_strict_neutral})' if variant else ''}",
                      request.chat)
    return out


def _turns(title: str, chat: list[dict]) -> list[str]:
    return [f"  {title}:"] + [f"    {turn['role']}: {turn['content']}" for turn in chat]
