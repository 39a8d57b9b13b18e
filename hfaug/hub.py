"""The Hub in one place: the token and endpoint, secrets kept out of what is published, one repo's
create / commit / tag (:class:`HubRepo`), Hub failures mapped to :class:`~hfaug.errors.HubError`
(exit code 3) and bad references to :class:`~hfaug.errors.HfaugError` (exit code 2), and the few
reads other modules need (a published recipe, a dataset's split sizes from its card).

The token comes from ``HF_TOKEN`` or the login cache only (never from a recipe) and is never
logged or written; ``HF_ENDPOINT`` points the clients at a self-hosted or enterprise Hub.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Callable

from .errors import HfaugError, HubError
from .layout import RECIPE_FILE
from .retry import RetryPolicy, is_network_error, retrying, short, status_of
from .retry import is_transient as _transient

logger = logging.getLogger(__name__)

#: recipe keys whose values are never written anywhere (an API key slipped into a recipe)
SECRET_KEY_RE = re.compile(
    r"(^|_)(token|secret|password|passwd|api_?key|auth|authorization|credentials?)($|_)", re.I)


# ---------------------------------------------------------------------------------------------
# tokens, endpoints, secrets


def hub_token() -> str | None:
    """The token from HF_TOKEN or the login cache (``huggingface-cli login``); never from a recipe."""
    from huggingface_hub import get_token

    return get_token()


def hub_endpoint() -> str:
    """HF_ENDPOINT at call time (a self-hosted or enterprise Hub), else the client's default."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def redact(data: Any, secrets: tuple[str, ...] = ()) -> Any:
    """A copy of plain data with secret-looking keys blanked and known secret strings removed."""
    if isinstance(data, dict):
        return {k: ("<redacted>" if isinstance(k, str) and SECRET_KEY_RE.search(k) and v else redact(v, secrets))
                for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact(v, secrets) for v in data]
    if isinstance(data, str):
        for secret in secrets:
            if secret:
                data = data.replace(secret, "<redacted>")
    return data


def known_secrets(recipe: Any = None) -> tuple[str, ...]:
    """The token, and the values of the recipe's secret-looking keys (to blank wherever they recur)."""
    token = hub_token()
    found = [token] if token else []

    def walk(data: Any) -> None:
        if isinstance(data, dict):
            for k, v in data.items():
                if isinstance(k, str) and SECRET_KEY_RE.search(k) and isinstance(v, str) and len(v) >= 4:
                    found.append(v)
                else:
                    walk(v)
        elif isinstance(data, (list, tuple)):
            for v in data:
                walk(v)

    walk(getattr(recipe, "raw", None))
    return tuple(sorted(set(found), key=len, reverse=True))  # longest first: no partial leftovers


# ---------------------------------------------------------------------------------------------
# one repo: create, commit, tag


def short_error(error: BaseException) -> str:
    return redact(short(error), known_secrets())


def with_retries(fn: Callable[[], Any], what: str, retries: int, wait: float) -> Any:
    """Call ``fn``, retrying server errors (5xx, 429) and lost connections with doubling waits."""
    # the cap is the longest wait the doubling reaches anyway: it bounds only a server's Retry-After
    longest = wait * 2 ** max(retries - 1, 0)
    return retrying(fn, what, RetryPolicy(retries, wait, backoff_max=longest, jitter=False), describe=short_error)


def next_tag(existing) -> str:
    """``v<N+1>`` for the highest ``v<N>`` among the existing tags (``v1`` for none)."""
    numbers = [int(m.group(1)) for t in existing if (m := re.fullmatch(r"v(\d+)", t))]
    return f"v{max(numbers, default=0) + 1}"


class HubRepo:
    """One Hub repo: pick the version tag, push a local folder as one commit, tag it."""

    def __init__(self, repo_id: str, repo_type: str, *, token: str, private: bool = False, retries: int = 3,
                 retry_wait: float = 2.0):
        from huggingface_hub import HfApi, constants

        from . import __version__

        if constants.HF_HUB_OFFLINE:
            raise HfaugError(f"publish: HF_HUB_OFFLINE is set, so {repo_id} cannot be reached; unset it to push, "
                             "or remove publish.repo_id to write the local folder only")
        self.repo_id, self.repo_type = repo_id, repo_type
        self.private, self.retries, self.retry_wait = private, retries, retry_wait
        self.api = HfApi(endpoint=hub_endpoint(), token=token, library_name="hfaug", library_version=__version__)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return with_retries(fn, f"{what} ({self.repo_id})", self.retries, self.retry_wait)
        except HfaugError:
            raise
        except Exception as e:  # noqa: BLE001 - one line for the user; nothing was tagged
            if not is_network_error(e):  # a bug: surfaces with its traceback
                raise
            attempts = f" after {self.retries + 1} attempts" if _transient(e) and self.retries else ""
            raise HubError(f"publish: {what} on {hub_endpoint()} for {self.repo_id} failed{attempts}: "
                             f"{short_error(e)}; no tag was created and earlier versions are unchanged") from e

    def prepare(self, tag: str | None) -> str:
        """Create the repo if needed and return the tag this publish will get (never an existing one)."""
        tags = self.tags()
        if tag is None:
            return next_tag(tags)
        if tag in tags:
            raise HfaugError(f"publish: tag '{tag}' already exists on {self.repo_id} (commit {tags[tag][:8]}); "
                             "tags are never moved: choose a new publish.tag, or leave it empty for the next vN")
        return tag

    def tags(self) -> dict[str, str]:
        """Create the repo if needed; its tags as {name: commit}."""
        self._call("create repo", lambda: self.api.create_repo(self.repo_id, repo_type=self.repo_type,
                                                               private=self.private, exist_ok=True))
        refs = self._call("list refs", lambda: self.api.list_repo_refs(self.repo_id, repo_type=self.repo_type))
        return {t.name: t.target_commit for t in refs.tags}

    def push(self, folder: Path, tag: str, message: str) -> str:
        """One commit replacing the repo's files with ``folder``'s, then the tag; returns the commit sha."""
        sha = self.commit(folder, message)
        self.tag(sha, tag, message)
        return sha

    def commit(self, folder: Path, message: str) -> str:
        """One commit replacing the repo's files with ``folder``'s; returns its sha."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        local = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        remote = self._call("list files", lambda: self.api.list_repo_files(self.repo_id, repo_type=self.repo_type))
        stale = [p for p in remote if p not in set(local) and p != ".gitattributes"]

        def commit():
            # fresh operations on each attempt: an operation object is single-use
            ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(folder / p)) for p in local]
            ops += [CommitOperationDelete(path_in_repo=p) for p in stale]
            return self.api.create_commit(self.repo_id, ops, commit_message=message, repo_type=self.repo_type)

        return self._call("commit", commit).oid

    def tag(self, sha: str, tag: str, message: str) -> None:
        """Tag commit ``sha``; a retry after a lost response finds its own tag."""
        def create_tag():
            from huggingface_hub.errors import HfHubHTTPError

            try:
                self.api.create_tag(self.repo_id, tag=tag, revision=sha, tag_message=message, repo_type=self.repo_type)
            except HfHubHTTPError as e:
                if status_of(e) != 409:
                    raise
                refs = self.api.list_repo_refs(self.repo_id, repo_type=self.repo_type)
                if {t.name: t.target_commit for t in refs.tags}.get(tag) != sha:
                    raise HfaugError(f"publish: tag '{tag}' was created on {self.repo_id} by someone else "
                                     "meanwhile; tags are never moved: publish again for the next version") from None

        self._call("create tag", create_tag)


# ---------------------------------------------------------------------------------------------
# reads


def download_recipe(repo_id: str, revision: str) -> str:
    """The local path of a published dataset's recipe.yaml at ``revision`` (reproduce)."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if constants.HF_HUB_OFFLINE:
        raise HfaugError(f"reproduce: HF_HUB_OFFLINE is set, so {repo_id} cannot be downloaded; unset it, "
                         "or pass the local folder of the dataset")
    api = HfApi(endpoint=hub_endpoint(), token=hub_token())
    try:
        return api.hf_hub_download(repo_id, RECIPE_FILE, repo_type="dataset", revision=revision)
    except RevisionNotFoundError:
        raise HfaugError(f"reproduce: {repo_id} has no revision '{revision}'") from None
    except LocalEntryNotFoundError as e:  # the server or the network failed (not a missing file)
        raise HubError(f"reproduce: downloading {RECIPE_FILE} of {repo_id}@{revision} from {hub_endpoint()} "
                       f"failed: {short_error(e)}; try again later") from None
    except EntryNotFoundError:
        raise HfaugError(f"reproduce: {repo_id}@{revision} has no {RECIPE_FILE}; was it published by hfaug?") from None
    except RepositoryNotFoundError:
        raise HfaugError(f"reproduce: dataset repo {repo_id} not found on {hub_endpoint()} "
                         "(or it is private: set HF_TOKEN)") from None
    except Exception as e:  # noqa: BLE001 - the server or the network, not the user's input
        if not is_network_error(e):  # a bug: surfaces with its traceback
            raise
        raise HubError(f"reproduce: downloading {RECIPE_FILE} of {repo_id}@{revision} from {hub_endpoint()} "
                       f"failed: {short_error(e)}; try again later") from None


def split_rows(path: str, revision: str | None, name: str | None, split: str) -> int | None:
    """Rows of a Hub dataset's split from its card metadata (one request, no data downloaded, no
    retries: a dry run must answer at once); None when the Hub cannot be reached or the card does
    not say."""
    try:
        from huggingface_hub import HfApi

        info = HfApi().dataset_info(path, revision=revision, timeout=5)
    except Exception as e:  # offline, gated, unknown: the estimate says the gold rows are unknown
        if not is_network_error(e):  # not the Hub's answer or the network's failure: a bug
            raise
        return None
    configs = (info.card_data.to_dict() if info.card_data else {}).get("dataset_info") or []
    configs = [configs] if isinstance(configs, dict) else configs
    for config in configs:
        if name in (None, config.get("config_name", "default")) or len(configs) == 1:
            for entry in config.get("splits") or []:
                if entry.get("name") == split and entry.get("num_examples"):
                    return int(entry["num_examples"])
    return None
