"""The one training loop and its hooks.

Every trainer (SER networks, the three GAN stages, the baseline GAN) supplies a ``step`` function
that does one optimization step and returns scalar logs; :func:`run` owns iteration, evaluation,
model selection, early stopping and progress. A GAN is a step with two optimizers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from common import threads

Logs = dict[str, float]
Step = Callable[[int], Logs]


class Hook(Protocol):
    """Called by :func:`run`; any method may be a no-op."""

    def on_step(self, step: int, logs: Logs) -> None:
        """After every optimization step (1-based ``step``)."""

    def on_eval(self, step: int, score: float, logs: Logs) -> bool:
        """After an evaluation; return True to stop training."""

    def on_end(self, result: LoopResult) -> None:
        """Once, after the last step."""


@dataclass
class LoopResult:
    """What a run did: its logs, the evaluations and where it stopped."""

    steps: int = 0
    last: Logs = field(default_factory=dict)
    evals: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None
    best_score: float = -math.inf
    stopped_early: bool = False


def run(
    step: Step,
    iterations: int,
    *,
    evaluate: Callable[[], float] | None = None,
    eval_every: int = 0,
    hooks: Sequence[Hook] = (),
    desc: str = "train",
    progress: bool = False,
) -> LoopResult:
    """Call ``step`` ``iterations`` times; evaluate every ``eval_every`` steps (higher score = better).

    Non-finite losses stop the run with a clear error rather than training on NaNs.
    """
    result = LoopResult()
    bar = _progress(desc, iterations) if progress else None
    try:
        for i in range(1, iterations + 1):
            threads.tick()  # an adaptive thread budget re-sizes the pools every few seconds
            logs = step(i)
            bad = [k for k, v in logs.items() if not math.isfinite(v)]
            if bad:
                raise FloatingPointError(f"{desc}: step {i}: non-finite {bad}; lower the learning rate")
            result.steps, result.last = i, logs
            for hook in hooks:
                hook.on_step(i, logs)
            if bar is not None:
                bar[0].update(bar[1], advance=1, description=f"{desc} " + _fmt(logs))
            if evaluate is not None and eval_every and (i % eval_every == 0 or i == iterations):
                score = evaluate()
                result.evals.append((i, score))
                if score > result.best_score:
                    result.best_step, result.best_score = i, score
                # A list, not a generator: every hook sees the evaluation before any stops the run.
                if any([hook.on_eval(i, score, logs) for hook in hooks]):  # noqa: C419
                    result.stopped_early = True
                    break
    finally:
        if bar is not None:
            bar[0].stop()
    for hook in hooks:
        hook.on_end(result)
    return result


class Stateful(Protocol):
    """Anything with weights to snapshot: a module, or a trainer (federated rounds)."""

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> Any: ...


class KeepBest:
    """Model selection: snapshot ``model`` at its best evaluation and restore it at the end.

    With ``patience`` it also stops early after that many evaluations below the best. ``evals``
    lists every (step, score) it saw.
    """

    def __init__(self, model: Stateful, patience: int | None = None) -> None:
        self.model, self.patience = model, patience
        self.best: float = -math.inf
        self.state: dict[str, torch.Tensor] | None = None
        self.since_best = 0
        self.evals: list[tuple[int, float]] = []

    def on_step(self, step: int, logs: Logs) -> None:
        """Nothing per step."""

    def on_eval(self, step: int, score: float, logs: Logs) -> bool:
        """Snapshot on improvement; ask to stop when patience is used up."""
        self.evals.append((step, score))
        if score > self.best:
            self.best, self.since_best = score, 0
            self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.since_best += 1
        return self.patience is not None and self.since_best >= self.patience

    def on_end(self, result: LoopResult) -> None:
        """Restore the best snapshot."""
        if self.state is not None:
            self.model.load_state_dict(self.state)


class AverageWeights:
    """Keep the exponential moving average of ``model``'s parameters over the steps and load it at
    the end (Yazici et al. 2019, "The unusual effectiveness of averaging in GAN training": the
    average of a GAN generator's iterates sits nearer the equilibrium than the last iterate, which
    cycles). Step t's decay is min(``decay``, (1 + t) / (10 + t)), so the first steps are not
    weighed down by the start (TensorFlow's ``num_updates`` warm-up). Buffers stay the model's own.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"an average's decay must lie in (0, 1), got {decay}")
        self.model, self.decay = model, decay
        self.average = {name: p.detach().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def on_step(self, step: int, logs: Logs) -> None:
        """average <- d x average + (1 - d) x parameters."""
        weight = 1 - min(self.decay, (1 + step) / (10 + step))
        for name, p in self.model.named_parameters():
            self.average[name].lerp_(p.detach(), weight)

    def on_eval(self, step: int, score: float, logs: Logs) -> bool:
        """Never stops training."""
        return False

    @torch.no_grad()
    def on_end(self, result: LoopResult) -> None:
        """The model's parameters become the average."""
        for name, p in self.model.named_parameters():
            p.copy_(self.average[name])


def _fmt(logs: Logs) -> str:
    return " ".join(f"{k}={v:.3g}" for k, v in list(logs.items())[:3])


def _progress(desc: str, total: int) -> tuple[Any, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   transient=True)
    task = bar.add_task(desc, total=total)
    bar.start()
    return bar, task
