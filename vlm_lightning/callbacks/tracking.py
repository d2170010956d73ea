"""Experiment tracking guards and W&B extras.

* ``check_logger_config(cfg)`` / ``check_loggers(loggers)``: W&B is used only when it is configured
  AND a key exists (``WANDB_API_KEY`` or ``WANDB_IDENTITY_TOKEN_FILE`` in the environment, in ``.env``
  loaded through ``vlm_lightning.cli.secrets.load_env_file``, or an entry in ``~/.netrc`` / ``$NETRC``
  written by ``wandb login``), or when it runs without the server (``WANDB_MODE=offline`` / ``disabled``,
  ``offline: true`` or ``mode: offline``). Otherwise a ``TrackingConfigError`` says how to fix it
  before any model is loaded: never a hang or an interactive login prompt.
* Credentials never reach a config: a logger argument named like a credential (``api_key``,
  ``settings.api_key``, ``api_token``, ...) is refused with a message to use the environment, so the
  resolved ``config.yaml`` that LightningCLI saves cannot contain one
  (``refuse_secret_arguments`` for the command line and config files, ``check_logger_config`` for the
  parsed config).
* ``TrackingChecks``: a LightningCLI mixin running both checks at the right moments.
* ``PredictionTable``: with an active ``WandbLogger``, logs after every validation a ``wandb.Table`` of
  a few sample predictions with their images; a no-op with any other logger.
"""

from __future__ import annotations

import netrc
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import lightning as L
from lightning.pytorch.callbacks import Callback

from vlm_lightning.errors import UserError

try:  # shared with the config.yaml redaction when available
    from vlm_lightning.cli.secrets import SECRET_KEY_PATTERN
except ImportError:  # pragma: no cover
    SECRET_KEY_PATTERN = re.compile(
        r"(api[_-]?key|token|secret|password|passwd|credential)s?$", re.IGNORECASE
    )

OFFLINE_MODES = ("offline", "dryrun", "disabled")
DEFAULT_WANDB_HOST = "https://api.wandb.ai"
# where each logger reads its credential from when it is not an argument
ENV_HINTS: dict[str, str] = {
    "wandb": "WANDB_API_KEY",
    "comet": "COMET_API_KEY",
    "neptune": "NEPTUNE_API_TOKEN",
    "mlflow": "MLFLOW_TRACKING_TOKEN",
}


class TrackingConfigError(UserError, ValueError):
    """The logger configuration cannot work as given (no W&B key, or a credential in the config)."""


# --- where a W&B key can come from -------------------------------------------------------------
def wandb_key_source(env: Mapping[str, str] | None = None, load_dotenv: bool = True) -> str | None:
    """Where wandb would find credentials (a description, never the value), or ``None``.

    Looks at ``WANDB_API_KEY`` / ``WANDB_IDENTITY_TOKEN_FILE``, then ``.env`` in the working directory
    (loaded into ``os.environ`` through ``vlm_lightning.cli.secrets.load_env_file`` when ``env`` is the real
    environment and ``load_dotenv``), then the netrc file wandb reads (``$NETRC``, ``~/.netrc``, ``~/_netrc``)
    for the host of ``WANDB_BASE_URL``.
    """
    real_env = env is None
    env = os.environ if env is None else env
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if env.get(name):
            return f"${name}"
    if real_env and load_dotenv:
        try:
            from vlm_lightning.cli.secrets import load_env_file
        except ImportError:  # pragma: no cover
            load_env_file = None
        if load_env_file is not None:
            loaded = load_env_file(".env")
            for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
                if name in loaded and env.get(name):
                    return f"${name} from .env"
    return _netrc_source(env)


def _netrc_source(env: Mapping[str, str]) -> str | None:
    if env.get("NETRC"):
        candidates = [Path(env["NETRC"]).expanduser()]
    else:
        home = Path(env.get("HOME") or Path.home())
        candidates = [home / ".netrc", home / "_netrc"]
    host = urlsplit(env.get("WANDB_BASE_URL") or DEFAULT_WANDB_HOST).netloc
    for path in candidates:
        if not path.is_file():
            continue
        try:
            creds = netrc.netrc(str(path)).authenticators(host)
        except (netrc.NetrcParseError, OSError):
            continue
        if creds and creds[2]:
            return str(path)
    return None


# --- logger configurations ---------------------------------------------------------------------
def _plain(obj: Any) -> Any:
    """jsonargparse ``Namespace`` -> dict (recursively); other objects unchanged."""
    if hasattr(obj, "as_dict") and callable(obj.as_dict) and type(obj).__name__ == "Namespace":
        return obj.as_dict()
    return obj


def _entries(logger_cfg: Any) -> list[Any]:
    """The ``trainer.logger`` value as a list of logger entries (config dicts or logger objects)."""
    logger_cfg = _plain(logger_cfg)
    if logger_cfg is None or isinstance(logger_cfg, bool):
        return []
    if isinstance(logger_cfg, (list, tuple)):
        return [_plain(e) for e in logger_cfg if e is not None and not isinstance(e, bool)]
    return [logger_cfg]


def _class_name(entry: Any) -> str:
    if isinstance(entry, Mapping):
        return str(entry.get("class_path") or "")
    if isinstance(entry, str):
        return entry
    return f"{type(entry).__module__}.{type(entry).__qualname__}"


def _init_args(entry: Any) -> dict[str, Any]:
    """Constructor arguments of a logger entry (config dict or an instantiated logger)."""
    if isinstance(entry, Mapping):
        args = entry.get("init_args") or {}
        return dict(_plain(args)) if isinstance(_plain(args), Mapping) else {}
    if hasattr(entry, "_wandb_init"):  # lightning's WandbLogger keeps wandb.init's arguments
        return {"offline": getattr(entry, "_offline", False), **entry._wandb_init}
    return {}


def is_wandb(entry: Any) -> bool:
    """True for a ``WandbLogger`` entry (class path or instance)."""
    return "wandb" in _class_name(entry).lower()


def secret_arguments(value: Any, prefix: str = "") -> list[str]:
    """Dotted names of non-empty string values under credential-like keys (``api_key``, ``token``...)."""
    value = _plain(value)
    found: list[str] = []
    if isinstance(value, Mapping):
        for key, sub in value.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if SECRET_KEY_PATTERN.search(str(key)) and isinstance(sub, (str, bytes)) and sub:
                found.append(name)
            else:
                found.extend(secret_arguments(sub, name))
    elif isinstance(value, (list, tuple)):
        for i, sub in enumerate(value):
            found.extend(secret_arguments(sub, f"{prefix}[{i}]"))
    elif value is not None and not isinstance(value, (str, bytes, int, float, bool)):
        # an object such as wandb.Settings: look at its credential-like attributes only
        for attr in ("api_key", "api_token", "token"):
            sub = getattr(value, attr, None)
            if isinstance(sub, str) and sub:
                found.append(f"{prefix}.{attr}")
    return found


def _env_hint(class_name: str) -> str | None:
    lowered = class_name.lower()
    for tool, variable in ENV_HINTS.items():
        if tool in lowered:
            return variable
    return None


def _secret_error(names: list[str], class_name: str) -> TrackingConfigError:
    variable = _env_hint(class_name)
    where = ", ".join(sorted(set(names)))
    if variable:
        how = f"set {variable} in the environment or in .env instead (`export {variable}=...`)"
    else:
        known = ", ".join(f"{v} for {k}" for k, v in ENV_HINTS.items())
        how = f"set the logger's variable in the environment or in .env instead ({known})"
    return TrackingConfigError(
        f"credentials must not be passed as logger arguments ({where}): they would be saved in the run's "
        f"config.yaml. Remove them and {how}."
    )


def _wandb_offline(args: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    """Why this W&B logger needs no server (``offline: true``, ``mode: offline``, ``WANDB_MODE``), or None."""
    if args.get("offline"):
        return "offline: true"
    mode = args.get("mode")
    settings = _plain(args.get("settings"))
    if mode is None and settings is not None:
        mode = settings.get("mode") if isinstance(settings, Mapping) else getattr(settings, "mode", None)
    if isinstance(mode, str) and mode.lower() in OFFLINE_MODES:
        return f"mode: {mode}"
    env_mode = (env.get("WANDB_MODE") or "").lower()
    if env_mode in OFFLINE_MODES:
        return f"WANDB_MODE={env_mode}"
    if (env.get("WANDB_DISABLED") or "").lower() in ("1", "true", "yes"):
        return "WANDB_DISABLED"
    return None


def check_logger_config(
    trainer_logger_config: Any, env: Mapping[str, str] | None = None, load_dotenv: bool = True
) -> list[str]:
    """Validate ``trainer.logger`` (a parsed config, a list of them, or instantiated loggers).

    Raises ``TrackingConfigError`` when a logger argument holds a credential, or when a W&B logger would
    need the server but no key can be found. Returns one line per W&B logger saying how it will run
    (``online (key from $WANDB_API_KEY)``, ``offline (WANDB_MODE=offline)``...); empty without W&B.
    """
    given_env = env
    env = os.environ if env is None else env
    report: list[str] = []
    for entry in _entries(trainer_logger_config):
        class_name = _class_name(entry)
        args = _init_args(entry)
        names = secret_arguments(args, "init_args")
        if names:
            raise _secret_error(names, class_name)
        if not is_wandb(entry):
            continue
        offline = _wandb_offline(args, env)
        if offline:
            report.append(f"W&B offline ({offline})")
            continue
        source = wandb_key_source(given_env, load_dotenv=load_dotenv)
        if source is None:
            raise TrackingConfigError(
                "W&B logging is configured (trainer.logger: WandbLogger) but no W&B API key was found "
                "(checked $WANDB_API_KEY, $WANDB_IDENTITY_TOKEN_FILE, .env and ~/.netrc). Either set the key: "
                "`export WANDB_API_KEY=...` (or put WANDB_API_KEY=... in .env, or run `wandb login`), "
                "or log without the server: `WANDB_MODE=offline` or `--trainer.logger.init_args.offline true` "
                "(upload later with `wandb sync <save_dir>/wandb/offline-run-*`)."
            )
        report.append(f"W&B online (key from {source})")
    return report


def check_loggers(loggers: Iterable[Any], env: Mapping[str, str] | None = None) -> list[str]:
    """``check_logger_config`` for instantiated loggers (e.g. ``trainer.loggers``)."""
    return check_logger_config(list(loggers), env=env)


def _option_name(token: str) -> str | None:
    if not token.startswith("--"):
        return None
    return token[2:].split("=", 1)[0]


def refuse_secret_arguments(args: Any) -> None:
    """Refuse credential-like logger options before parsing (command line tokens and ``--config`` files).

    jsonargparse would reject ``--trainer.logger.init_args.api_key`` with an obscure union error and
    accept ``--trainer.logger.init_args.settings.api_key`` (then save it in ``config.yaml``); both get
    the same clear message here. ``args`` is the CLI's argument list (``None``: ``sys.argv[1:]``); dicts
    and namespaces are checked by ``check_logger_config`` after parsing.
    """
    if args is None:
        args = sys.argv[1:]
    if not isinstance(args, (list, tuple)):
        return
    tokens = [str(a) for a in args]
    logger_class = ""
    for i, token in enumerate(tokens):
        if _option_name(token) in ("trainer.logger", "trainer.logger.class_path"):
            logger_class = (
                token.split("=", 1)[1] if "=" in token else tokens[i + 1] if i + 1 < len(tokens) else ""
            )
    for i, token in enumerate(tokens):
        name = _option_name(token)
        if name is None:
            continue
        value = token.split("=", 1)[1] if "=" in token else (tokens[i + 1] if i + 1 < len(tokens) else "")
        if name.startswith("trainer.logger"):
            leaf = name.rsplit(".", 1)[-1]
            if SECRET_KEY_PATTERN.search(leaf):
                raise _secret_error([name], logger_class or name)
            if value.lstrip().startswith(("{", "[")):
                _check_yaml_text(value, name)
        elif name == "config" and value and Path(value).is_file():
            _check_config_file(Path(value))


def _check_yaml_text(text: str, where: str) -> None:
    import yaml

    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        return
    for entry in _entries(loaded):
        names = secret_arguments(entry if isinstance(entry, Mapping) else {}, where)
        if names:
            raise _secret_error(names, _class_name(entry))


def _check_config_file(path: Path) -> None:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return  # jsonargparse reports unreadable configs itself
    if not isinstance(loaded, Mapping):
        return
    for section in (
        loaded,
        loaded.get("fit"),
        loaded.get("test"),
        loaded.get("validate"),
        loaded.get("predict"),
    ):
        trainer = section.get("trainer") if isinstance(section, Mapping) else None
        if isinstance(trainer, Mapping) and trainer.get("logger") is not None:
            for entry in _entries(trainer["logger"]):
                if isinstance(entry, Mapping):
                    names = secret_arguments(entry, f"{path}: trainer.logger")
                    if names:
                        raise _secret_error(names, _class_name(entry))


def check_cli_config(config: Any, subcommand: str | None = None) -> list[str]:
    """``check_logger_config`` on a LightningCLI config (before its classes are instantiated)."""
    section = config.get(subcommand) if subcommand and config.get(subcommand) is not None else config
    trainer = section.get("trainer") if section is not None else None
    logger_cfg = trainer.get("logger") if trainer is not None else None
    return check_logger_config(logger_cfg)


class TrackingChecks:
    """LightningCLI mixin: refuse credentials in logger options, and W&B without a key, before loading.

    Use as ``class MyCLI(TrackingChecks, LightningCLI)``; cooperative (calls ``super()``).
    """

    def parse_arguments(self, parser: Any, args: Any) -> None:
        refuse_secret_arguments(args)
        super().parse_arguments(parser, args)  # type: ignore[misc]

    def before_instantiate_classes(self) -> None:
        for line in check_cli_config(self.config, getattr(self, "subcommand", None)):  # type: ignore[attr-defined]
            print(f"[vlm_lightning] {line}")
        super().before_instantiate_classes()  # type: ignore[misc]


# --- W&B prediction table ----------------------------------------------------------------------
def _wandb_logger(trainer: L.Trainer) -> Any:
    from lightning.pytorch.loggers import WandbLogger

    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


def _short(text: Any, limit: int = 2000) -> str:
    text = text if isinstance(text, str) else str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PredictionTable(Callback):
    """Logs ``val/samples``: a ``wandb.Table`` (id, image, prompt, prediction, target) after every validation.

    Samples come from ``pl_module.last_val_samples`` (a list of dicts with ``id``, ``prediction``,
    ``target`` and optionally ``prompt`` / ``image``, filled by the module during validation). When the
    module has no such attribute, the callback generates predictions for the first validation batch
    itself. Images are taken from the row (``image``) or looked up by id in the datamodule's val split.
    Nothing happens without an active ``WandbLogger``, on ranks other than 0, or during the sanity check.

    Args:
        max_samples: rows per table.
        key: the key the table is logged under.
        max_image_side: images are shrunk to this longest side before upload.
        generate_if_missing: generate the first val batch when the module exposes no samples.
    """

    def __init__(
        self,
        max_samples: int = 8,
        key: str = "val/samples",
        max_image_side: int = 512,
        generate_if_missing: bool = True,
    ) -> None:
        self.max_samples = max_samples
        self.key = key
        self.max_image_side = max_image_side
        self.generate_if_missing = generate_if_missing
        self._generated: list[dict[str, Any]] = []
        self.logged = 0

    def _active(self, trainer: L.Trainer) -> bool:
        return trainer.global_rank == 0 and not trainer.sanity_checking and _wandb_logger(trainer) is not None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if _wandb_logger(trainer) is not None:
            check_loggers(trainer.loggers)  # also guards Trainers built without the CLI

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._generated = []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if (
            batch_idx != 0
            or dataloader_idx != 0
            or not self.generate_if_missing
            or hasattr(pl_module, "last_val_samples")
            or not hasattr(pl_module, "generate")
            or trainer.sanity_checking
            or _wandb_logger(trainer) is None
        ):
            return
        texts, _ = pl_module.generate(batch)  # on every rank: sharded models generate collectively
        self._generated = [
            {"id": i, "prompt": p, "prediction": t, "target": a[0] if len(a) == 1 else a}
            for i, p, t, a in zip(batch["ids"], batch["prompts"], texts, batch["answers"])
        ][: self.max_samples]

    def samples(self, pl_module: L.LightningModule) -> list[dict[str, Any]]:
        """The rows of this validation's table."""
        rows = getattr(pl_module, "last_val_samples", None)
        if rows is None:
            rows = self._generated
        return list(rows or [])[: self.max_samples]

    def _image(self, trainer: L.Trainer, row: Mapping[str, Any]) -> Any:
        image = row.get("image")
        if image is None:
            datasets = getattr(getattr(trainer, "datamodule", None), "datasets", None) or {}
            dataset = datasets.get("val") if isinstance(datasets, Mapping) else None
            records = getattr(dataset, "records", None) or []
            record = next((r for r in records if getattr(r, "id", None) == row.get("id")), None)
            image = record.images[0] if record is not None and record.images else None
        if image is None:
            return None
        try:
            from PIL import Image

            if not isinstance(image, Image.Image):
                from vlm_lightning.data.records import load_image

                image = load_image(image)
            image = image.copy()
            image.thumbnail((self.max_image_side, self.max_image_side))
        except Exception:  # an unreadable image must not stop training
            return None
        return image

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(trainer):
            return
        rows = self.samples(pl_module)
        if not rows:
            return
        import wandb

        table = wandb.Table(columns=["step", "id", "image", "prompt", "prediction", "target"])
        for row in rows:
            image = self._image(trainer, row)
            table.add_data(
                trainer.global_step,
                str(row.get("id", "")),
                wandb.Image(image) if image is not None else None,
                _short(row.get("prompt", "")),
                _short(row.get("prediction", "")),
                _short(row.get("target", "")),
            )
        _wandb_logger(trainer).log_metrics({self.key: table}, step=trainer.global_step)
        self.logged += 1


__all__ = [
    "PredictionTable",
    "TrackingChecks",
    "TrackingConfigError",
    "check_cli_config",
    "check_logger_config",
    "check_loggers",
    "refuse_secret_arguments",
    "secret_arguments",
    "wandb_key_source",
]
