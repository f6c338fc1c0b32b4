"""Pretrained weights by name: `hf-hub:<owner>/<repo>` (timm's spelling, e.g.
`hf-hub:timm/mobilenetv3_small_100.lamb_in1k`) resolved to a file in the Hugging Face cache.

huggingface_hub does the work: its cache (HF_HOME / HF_HUB_CACHE), its offline mode
(HF_HUB_OFFLINE=1 reads only the cache), its tokens for gated repositories. A repository's
`model.safetensors` is a timm state dict, which the reader then reads like any other timm file.
Every way the name cannot be resolved is one line saying why and what to do.
"""
from __future__ import annotations

import os

from mobilenets_core.config_check import ConfigError

PREFIX = "hf-hub:"
FILENAME = "model.safetensors"  # timm's hub repositories carry their weights under this name


def is_hub_name(path) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


def _repo_id(name: str, label: str) -> tuple[str, str | None]:
    """("owner/repo", revision or None) of hf-hub:owner/repo[@revision]."""
    repo, _, revision = name[len(PREFIX):].partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{label}={name!r} is not a Hub model name; write hf-hub:OWNER/REPO, e.g. "
                          f"hf-hub:timm/mobilenetv3_small_100.lamb_in1k")
    return repo, revision or None


def resolve(name: str, label: str = "init.weights") -> str:
    """The local path of `name`'s weight file, downloaded into the Hugging Face cache if needed."""
    repo, revision = _repo_id(name, label)
    try:
        import huggingface_hub
        from huggingface_hub import constants, errors
    except ImportError:
        raise ConfigError(f"{label}={name!r} needs huggingface_hub (pip install huggingface_hub), or a "
                          f"local weight file") from None
    cache = os.fspath(constants.HF_HUB_CACHE)
    try:
        return huggingface_hub.hf_hub_download(repo, FILENAME, revision=revision)
    except errors.LocalEntryNotFoundError:  # offline (HF_HUB_OFFLINE=1, or no network) and not cached
        offline = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub could not be reached"
        raise ConfigError(f"{label}={name!r} is not in the Hugging Face cache ({cache}) and {offline}; "
                          f"download it once online (hf download {repo}"
                          f"{f' --revision {revision}' if revision else ''}), or give a local file") from None
    except errors.RepositoryNotFoundError:
        raise ConfigError(f"{label}={name!r}: no model {repo!r} on the Hugging Face Hub (or it is private: "
                          f"log in with hf auth login)") from None
    except errors.RevisionNotFoundError:
        raise ConfigError(f"{label}={name!r}: {repo!r} has no revision {revision!r}") from None
    except errors.EntryNotFoundError:
        raise ConfigError(f"{label}={name!r}: {repo!r} has no {FILENAME}; its weights are in another "
                          f"format: download them and give the file") from None
    except errors.HfHubHTTPError as e:
        reason = " ".join(str(e).split())[:200]
        raise ConfigError(f"{label}={name!r} could not be downloaded ({reason}); with HF_HUB_OFFLINE=1 the "
                          f"cache alone is read") from None
