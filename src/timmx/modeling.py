"""Turn a ModelSpec into a ready-to-export module: create, load weights, reparameterize, wrap."""

from __future__ import annotations

import difflib
import logging
import pickle
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from timmx.checkpoint import apply_state_dict, load_state_dict
from timmx.contract import ExportJob, ModelSpec, ModelSummary
from timmx.errors import InvalidInputError, ModelError, first_line


class ExportWrapper(nn.Module):
    """Bakes input normalisation and an output softmax into the exported graph."""

    def __init__(
        self,
        model: nn.Module,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        softmax: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.normalize = mean is not None and std is not None
        # Registered either way so that torch.jit.script sees the same attributes.
        self.register_buffer("mean", torch.tensor(mean or (0.0,)).view(1, -1, 1, 1), False)
        self.register_buffer("std", torch.tensor(std or (1.0,)).view(1, -1, 1, 1), False)
        self.softmax = softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = (x - self.mean) / self.std
        x = self.model(x)
        if self.softmax:
            x = x.softmax(dim=-1)
        return x


@dataclass
class PreparedModel:
    module: nn.Module  # the ExportWrapper: what gets exported
    timm_model: nn.Module  # the timm model inside it
    example_input: torch.Tensor
    example_output: torch.Tensor  # module(example_input): the first verification reference
    summary: ModelSummary
    data_config: dict


def check_model_name(name: str) -> None:
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see `timmx list PATTERN`"
    raise ModelError(f"unknown model '{name}': {hint}")


def create_model(job: ExportJob, workspace: Path) -> nn.Module:
    spec = job.model
    check_model_name(spec.name)
    kwargs = dict(spec.kwargs)
    if spec.num_classes is not None:
        kwargs["num_classes"] = spec.num_classes
    if spec.in_chans is not None:
        kwargs["in_chans"] = spec.in_chans
    torch.manual_seed(spec.seed)  # the same job gives the same random weights, bit for bit
    try:
        with pretrained_access(spec.name) if spec.pretrained else nullcontext():
            model = timm.create_model(spec.name, pretrained=spec.pretrained, **kwargs)
    except TypeError as exc:
        raise ModelError(f"{spec.name} does not accept these arguments: {exc}") from None
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
        _refuse_unloadable(spec, kwargs, exc)
    if spec.checkpoint is not None:
        state = load_state_dict(workspace / spec.checkpoint)
        apply_state_dict(model, state, spec.name)
    return model.eval()


def _refuse_unloadable(spec: ModelSpec, kwargs: dict, exc: Exception) -> NoReturn:
    """timm.create_model failed: one complete line that says why. A `checkpoint_path` kwarg
    that torch.load refused is read by timmx's own loader, which names what it would import."""
    path = kwargs.get("checkpoint_path")
    if path and ("weights_only" in str(exc) or isinstance(exc, pickle.UnpicklingError)):
        load_state_dict(Path(path))  # raises the CheckpointError that says what it refused
    what = "download the pretrained weights of" if spec.pretrained else "create"
    hint = ": check the network or pass --checkpoint with a local file" if spec.pretrained else ""
    raise ModelError(f"could not {what} {spec.name} ({first_line(exc)}){hint}") from None


# Pretrained weights: from the local cache without a network call; otherwise one short probe of
# their host first, so that an unreachable hub is one line in seconds, not a minute of retries.

PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class WeightsSource:
    """Where timm would fetch a model's pretrained weights from."""

    host: str  # named in messages: the hub's endpoint or the URL's host
    cache: Path  # the folder they would be cached in
    cache_variable: str  # the environment variable that moves that folder
    cached: bool
    probe: Callable[[], object]  # raises when the host does not answer
    hub: bool  # a Hugging Face hub download (HF_HUB_OFFLINE applies)


@contextmanager
def pretrained_access(name: str) -> Iterator[None]:
    """Around `timm.create_model(name, pretrained=True)`. Cached weights load offline; missing
    ones are downloaded only when their host answers a probe, else ModelError in one line."""
    source = weights_source(name)
    if source is None:  # a local file or folder, or no pretrained weights: timm says so
        yield
        return
    fix = (
        f"pass --checkpoint with a local file, or fill the cache ({source.cache_variable}) "
        "where the network reaches it"
    )
    if not source.cached:
        if source.hub and _hub_offline_set():
            raise ModelError(
                f"the pretrained weights of {name} are not in the Hugging Face cache "
                f"{source.cache} and HF_HUB_OFFLINE is set: {fix}"
            )
        reason = unreachable(source.probe)
        if reason is not None:
            raise ModelError(
                f"cannot download the pretrained weights of {name}: {source.host} could not be "
                f"reached ({reason}) and they are not in the cache {source.cache}: {fix}"
            )
    with _hub_offline(source.cached and source.hub), _hub_quiet():
        yield


def weights_source(name: str) -> WeightsSource | None:
    if name.startswith("local-dir:"):
        return None
    if name.startswith(("hf-hub:", "hf_hub:")):
        return _hub_source(name.split(":", 1)[1], "pytorch_model.bin", extra=("config.json",))
    from timm.models import get_pretrained_cfg
    from timm.models._hub import has_hf_hub

    cfg = get_pretrained_cfg(name)
    if cfg is None or cfg.state_dict or cfg.file or cfg.source == "local-dir":
        return None
    if cfg.hf_hub_id and has_hf_hub():
        return _hub_source(cfg.hf_hub_id, cfg.hf_hub_filename or "pytorch_model.bin")
    if cfg.url:
        return _url_source(cfg.url)
    return None


def _hub_source(hub_id: str, filename: str, extra: tuple[str, ...] = ()) -> WeightsSource:
    """timm loads `filename`, or first its safetensors alternative; `extra` files are needed too
    (the config of an `hf-hub:` model)."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import get_session
    from timm.models._hub import _get_safe_alternatives, hf_split

    repo, revision = hf_split(hub_id)
    weights = [filename] if filename.endswith(".safetensors") else []
    weights = weights or [*_get_safe_alternatives(filename), filename]

    def cached(names: list[str]) -> bool:
        return any(
            isinstance(try_to_load_from_cache(repo, file, revision=revision), str) for file in names
        )

    return WeightsSource(
        host=f"the Hugging Face hub ({constants.ENDPOINT})",
        cache=Path(constants.HF_HUB_CACHE),
        cache_variable="HF_HOME",
        cached=cached(weights) and all(cached([file]) for file in extra),
        probe=lambda: get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S),
        hub=True,
    )


def _url_source(url: str) -> WeightsSource:
    """Weights that timm fetches with torch.hub (models without a hub id)."""
    import urllib.error
    import urllib.request

    parts = urlparse(url)
    cache = Path(torch.hub.get_dir()) / "checkpoints"

    def probe() -> None:
        request = urllib.request.Request(f"{parts.scheme}://{parts.netloc}/", method="HEAD")
        with suppress(urllib.error.HTTPError):  # an answer, whatever its status
            urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S).close()

    return WeightsSource(
        host=parts.netloc or url,
        cache=cache,
        cache_variable="TORCH_HOME",
        cached=(cache / Path(parts.path).name).is_file(),
        probe=probe,
        hub=False,
    )


def unreachable(probe: Callable[[], object]) -> str | None:
    """Why `probe` failed, or None when it returned; never waits much over PROBE_TIMEOUT_S
    (a name lookup that hangs is not covered by the client's own timeout)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            probe()
            outcome.append(None)
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, name="timmx-weights-probe", daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S + 1.0)
    if not outcome:
        return f"no answer in {PROBE_TIMEOUT_S:g} s"
    error = outcome[0]
    return None if error is None else first_line(error, 120)


def _hub_offline_set() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@contextmanager
def _hub_offline(enabled: bool) -> Iterator[None]:
    """huggingface_hub's offline mode for this call only: the cached files, no request."""
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


@contextmanager
def _hub_quiet() -> Iterator[None]:
    """No "Retrying in 1s" lines: a failure ends as one ModelError line."""
    logger = logging.getLogger("huggingface_hub")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def prepare(job: ExportJob, workspace: Path) -> PreparedModel:
    model = create_model(job, workspace)
    reparameterized = False
    if job.model.reparameterize and has_reparam(model):
        from timm.utils.model import reparameterize_model

        model = reparameterize_model(model)
        reparameterized = True

    config = timm.data.resolve_data_config({}, model=model)
    # timm keeps the pretrained config's channels when in_chans changes them: the job knows
    model_chans = job.model.in_chans or int(config["input_size"][0])
    default = (model_chans, *config["input_size"][1:])
    size = tuple(job.input.size) if job.input.size else default
    if size[0] != model_chans:
        raise InvalidInputError(
            f"input size {list(size)} has {size[0]} channels but {job.model.name} takes "
            f"{model_chans}: use --input-size {model_chans} {size[1]} {size[2]} "
            f"or --in-chans {size[0]}"
        )
    pre = job.preprocess
    mean = tuple(pre.mean) if pre.mean else fit_channels(config["mean"], model_chans)
    std = tuple(pre.std) if pre.std else fit_channels(config["std"], model_chans)
    for label, values in (("--mean", mean), ("--std", std)):
        if len(values) != model_chans:
            raise InvalidInputError(
                f"{label} has {len(values)} values but the model takes {model_chans} channels"
            )

    module = ExportWrapper(
        model,
        mean=mean if pre.normalize else None,
        std=std if pre.normalize else None,
        softmax=pre.softmax,
    ).eval()
    device = _device(job.device)
    module = module.to(device)
    example = make_input(job, size, seed=job.verify.seed).to(device)
    try:
        with torch.inference_mode():
            out = module(example)
    except Exception as exc:
        default = list(config["input_size"])
        raise InvalidInputError(
            f"{job.model.name} cannot run on input {[job.input.batch_size, *size]} "
            f"({first_line(exc)}): use its default --input-size {' '.join(map(str, default))}"
        ) from None
    summary = ModelSummary(
        name=job.model.name,
        parameters=sum(p.numel() for p in model.parameters()),
        input_size=size,
        mean=mean,
        std=std,
        num_classes=int(out.shape[-1]) if out.ndim >= 1 else 0,
        reparameterized=reparameterized,
        license=_license(model),
    )
    return PreparedModel(
        module=module,
        timm_model=model,
        example_input=example,
        example_output=out,
        summary=summary,
        data_config=dict(config),
    )


def _license(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    value = cfg.get("license") if isinstance(cfg, dict) else None
    return str(value) if value else None


def make_input(
    job: ExportJob, size: tuple[int, ...], seed: int, batch: int | None = None
) -> torch.Tensor:
    """A fixed, seeded input: pixels in [0, 1] when normalisation is baked in, else N(0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch or job.input.batch_size, *size)
    if job.preprocess.normalize:
        return torch.rand(shape, generator=generator)
    return torch.randn(shape, generator=generator)


def has_reparam(model: nn.Module) -> bool:
    return any(
        hasattr(m, name)
        for m in model.modules()
        for name in ("fuse", "reparameterize", "switch_to_deploy")
    )


def fit_channels(values: tuple[float, ...], chans: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == chans:
        return values
    # timm's configs are for RGB; average them for other channel counts.
    return (sum(values) / len(values),) * chans


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidInputError(f"unknown device '{name}': use cpu, cuda or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("--device cuda was asked for but no CUDA GPU is available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError("--device mps was asked for but MPS is not available here")
    return device
