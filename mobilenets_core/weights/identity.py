"""ModelInfo: the one answer to "is this the same network?", for weight files, checkpoints and exports.

A network is fixed by its family, width, groups, class count and variant (`SHAPE_FIELDS`: they fix every
tensor's name and shape); its weights also carry the BatchNorm epsilon they were trained with and
the architecture convention (`specs.CONVENTIONS`: timm's network or mindcv's) they were trained as,
which a network built for them takes, as it takes their epsilon.
Canonical files hold a ModelInfo in their metadata, checkpoints in their meta's "model", and
export.json as "model"; resume checks, `load_model` and `init.weights` compare against it here.
"""
from __future__ import annotations

import dataclasses

from mobilenets_core import specs

SHAPE_FIELDS = ("name", "width", "groups", "num_classes", "variant")


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """The network a set of weights belongs to, and the BatchNorm epsilon they were trained with."""

    name: str
    width: float
    groups: int | None
    num_classes: int
    bn_eps: float
    convention: str = "timm"  # files and metas written before conventions existed are all timm's
    variant: str | None = None  # MobileNetV4's model.variant; None for the other families (and older records)

    def architecture(self) -> specs.Architecture:
        return specs.build_architecture(self.name, self.width, self.groups, self.num_classes, self.convention,
                                        self.variant)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> ModelInfo:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_config(cls, model_cfg) -> ModelInfo:
        groups = model_cfg.get("groups")
        return cls(model_cfg.name, float(model_cfg.width), None if groups is None else int(groups),
                   int(model_cfg.num_classes), float(model_cfg.bn_eps), model_cfg.get("convention", None) or "timm",
                   model_cfg.get("variant", None) or None)

    @classmethod
    def from_dict(cls, fields: dict, defaults: ModelInfo | None = None) -> ModelInfo:
        """From a checkpoint meta's or a file's "model"; `defaults` fills the fields an older one lacks."""
        known = {f.name for f in dataclasses.fields(cls)}
        base = defaults.as_dict() if defaults is not None else {}
        base["convention"] = "timm"  # a record without one predates mindcv's convention
        base["variant"] = None  # and one without a variant predates MobileNetV4
        return cls(**{**base, **{k: v for k, v in fields.items() if k in known}})

    @classmethod
    def of_checkpoint(cls, meta: dict, model_cfg) -> ModelInfo:
        """A checkpoint's network by its meta; the config fills what an older meta lacks, and is the
        whole answer for weights without a meta (init.weights exported or evaluated as they are)."""
        if not meta.get("model"):
            return cls.from_config(model_cfg)
        return cls.from_dict(meta["model"], defaults=cls.from_config(model_cfg))

    @classmethod
    def of_architecture(cls, arch: specs.Architecture, bn_eps: float) -> ModelInfo:
        return cls(arch.name, arch.width, arch.groups, arch.head.num_classes, float(bn_eps), arch.convention,
                   arch.variant)

    def adopt_into(self, model_cfg) -> list:
        """Set the fields a network takes from its weights (`TRAINED_FIELDS`) in a config's `model`
        section; returns (field, old, new) of those that changed."""
        changed = []
        for field in TRAINED_FIELDS:
            old, new = model_cfg.get(field, None), getattr(self, field)
            if field in model_cfg and old != new:
                model_cfg[field] = new
                changed.append((field, old, new))
        return changed


TRAINED_FIELDS = ("bn_eps", "convention")  # what weights were trained with, and a network built for them takes


def differing(saved: dict | ModelInfo, wanted: dict | ModelInfo, fields=SHAPE_FIELDS) -> list:
    """The `fields` in which two networks differ; a field `saved` does not record is not compared."""
    saved, wanted = _fields(saved), _fields(wanted)
    return [k for k in fields if k in saved and saved[k] != wanted.get(k)]


def settings(values: dict | ModelInfo, fields) -> str:
    """The config settings that name `fields` of a network: "model.width=0.25, model.num_classes=4"."""
    values = _fields(values)
    return ", ".join(f"model.{k}={values.get(k)!r}" for k in fields)


def _fields(values: dict | ModelInfo) -> dict:
    return values.as_dict() if isinstance(values, ModelInfo) else dict(values)
