"""mobilenets command line: one recipe, two engines.

    python main.py --config=configs/mnv3_small.py --workdir=DIR [--backend=jax|mindspore] [--mode=summary]
    python main.py --config=configs/mnv3_small.py --mode=bench [--config.bench.batch_size=256]

`--config.section.key=value` overrides any field of the recipe (unknown keys are rejected).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from configs import base
from mobilenets_core import config_check, failures, huge_pages, specs

MODES = ("train", "eval", "predict", "export", "convert", "summary", "bench")
BACKENDS = ("jax", "mindspore")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file, e.g. configs/mnv3_small.py[:variant].",
                                          lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.DEFINE_enum("backend", "jax", BACKENDS, "Engine that runs the recipe.")
flags.DEFINE_enum("mode", "train", MODES, "train (resumes from the newest checkpoint in --workdir), "
                  "eval (newest or eval.checkpoint), predict (top-5 of predict.inputs), export (deployment "
                  "files), convert (weights between formats), summary (params and MACs), bench (training and inference "
                  "images/s on synthetic data; no --workdir, nothing written).")
flags.mark_flag_as_required("config")
FLAGS = flags.FLAGS


def recipe_module(config_arg: str):
    """The recipe file of --config as a module; exits with one line if it defines no get_config."""
    path = config_arg.partition(":")[0]
    spec = importlib.util.spec_from_file_location("recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        sys.exit(f"error: --config={config_arg}: {path} defines no get_config(); a recipe returns its "
                 f"ConfigDict from get_config(arg=None), as configs/mnv3_small.py does")
    return module


def load_recipe(config_arg: str):
    """The recipe's config without overrides ('configs/mnv1.py:cifar10' passes 'cifar10')."""
    arg = config_arg.partition(":")[2]
    module = recipe_module(config_arg)
    return module.get_config(arg) if arg else module.get_config()


def parse_flags(argv):
    """absl parsing, with config mistakes reported in one line instead of a traceback."""
    config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if config_arg is not None and not os.path.isfile(config_arg.partition(":")[0]):
        recipes = sorted(f"configs/{f}" for f in os.listdir(os.path.join(os.path.dirname(__file__), "configs"))
                         if f.endswith(".py") and f not in ("__init__.py", "base.py"))
        sys.exit(f"error: --config={config_arg}: no such recipe file; recipes: {', '.join(recipes)}")
    if config_arg is not None:
        recipe_module(config_arg)
    try:
        return FLAGS(argv)
    except (AttributeError, KeyError) as e:
        overrides = [m.group(1) for a in argv for m in [re.match(r"--config\.([\w.]+)", a)] if m]
        message = None
        if config_arg:
            recipe = load_recipe(config_arg)
            for key in overrides:
                message = message or config_check.unknown_key_message(recipe, key)
        sys.exit(f"error: {message or e}")
    except flags.Error as e:
        override = re.match(r"flag --config\.([\w.]+)=(.*?): (.*)", str(e), re.S)
        if override and config_arg:
            key, value, reason = override.groups()
            sys.exit(f"error: {config_check.wrong_type_message(load_recipe(config_arg), key, value, reason)}")
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        if str(e).startswith("flag --config=") and len(lines) > 1:  # the recipe's get_config raised
            sys.exit(f"error: --config={config_arg}: {lines[-1]}")
        sys.exit(f"error: {lines[0] if lines else e} (pass --helpfull to see the flags)")


def engine(backend: str):
    return importlib.import_module({"jax": "mobilenets_jax", "mindspore": "mobilenets_ms"}[backend])


# mode -> (module of the engine package, function(config, workdir))
ENTRY_POINTS = {"train": ("train", "train_and_evaluate"), "eval": ("train", "evaluate"),
                "predict": ("train", "predict"), "export": ("export", "export"), "bench": ("bench", "bench"),
                "write_workdir": ("train", "write_weights_workdir")}  # --mode=convert's workdir output


def engine_function(backend: str, mode: str):
    """The engine's function for `mode` (every mode exists on both engines; see the README's feature table)."""
    module_name, function_name = ENTRY_POINTS[mode]
    package = {"jax": "mobilenets_jax", "mindspore": "mobilenets_ms"}[backend]
    return getattr(importlib.import_module(f"{package}.{module_name}"), function_name)


def summary(config, backend: str) -> dict:
    arch = specs.architecture_from_config(config.model)
    size = config.dataset.image_size
    return {"model": arch.name, "width": arch.width, "groups": arch.groups, "variant": arch.variant,
            "convention": arch.convention,
            "backend": backend,
            "params": engine(backend).count_parameters(config), "macs": specs.count_macs(arch, size),
            "input_shape": [1, size, size, 3]}


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        # Orbax and TFDS log every file operation, and Orbax logs a failed read or write with its
        # tracebacks beside the one `error:` line that reports it; --verbosity=0 shows them all.
        logging.set_verbosity(logging.FATAL)
    config = _CONFIG.value
    explicit = {m.group(1) for a in sys.argv for m in [re.match(r"--config\.([\w.]+)", a)] if m}
    changed = base.apply_dataset_profile(config, explicit)
    if changed and FLAGS.mode != "summary":
        print(f"dataset {config.dataset.name}: using its profile "
              + ", ".join(f"{k}={v}" for k, v in changed.items()) + " (override any with --config.KEY=VALUE)")
    try:
        config_check.check(config)
    except config_check.ConfigError as e:
        sys.exit(f"error: {e}")
    if FLAGS.mode == "summary":
        print(json.dumps(summary(config, FLAGS.backend)))
        return
    if FLAGS.mode == "convert":  # framework-free; only a workdir output needs the --backend engine
        from mobilenets_core.weights import convert

        def write_workdir(*args):
            return engine_function(FLAGS.backend, "write_workdir")(*args)

        try:
            convert.convert(config, write_workdir)
        except (config_check.ConfigError, failures.RunError) as e:
            sys.exit(f"error: {e}")
        return
    if FLAGS.workdir and os.path.exists(FLAGS.workdir) and not os.path.isdir(FLAGS.workdir):
        sys.exit(f"error: --workdir={FLAGS.workdir} is a file, not a directory; name a directory (it is made if "
                 f"need be)")
    if not FLAGS.workdir and FLAGS.mode != "bench":
        sys.exit(f"error: --mode={FLAGS.mode} needs --workdir=DIR (checkpoints, metrics.jsonl and logs go there)")
    function = engine_function(FLAGS.backend, FLAGS.mode)
    try:
        function(config, FLAGS.workdir)
    except (config_check.ConfigError, failures.RunError, FloatingPointError) as e:
        sys.exit(f"error: {e}")  # a config mistake, a non-finite loss, a checkpoint that cannot be written or read


def program(argv):
    """main() as the process's program: a JAX run first restarts itself onto huge pages (XLA:CPU's
    buffers, mobilenets_core/huge_pages.py); main() called from other code never restarts anything."""
    if FLAGS.backend == "jax" and FLAGS.mode not in ("summary", "convert"):
        huge_pages.restart_with_huge_pages()
    main(argv)


if __name__ == "__main__":
    app.run(program, flags_parser=parse_flags)
