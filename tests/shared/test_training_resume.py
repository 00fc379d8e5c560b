"""A training run killed after an epoch resumes from that epoch: ``last.ckpt`` is written after every epoch.

Lightning 2.6 writes ``ModelCheckpoint(save_top_k=0, save_last=True)``'s ``last.ckpt`` only when training
ends, so a run killed mid-way started again from scratch; :func:`epoch_checkpoint` is checked here.
"""

import contextlib
from pathlib import Path

import lightning
import pytest
import torch

from domainfm.shared.engine.training import fit, resumable_trainer, step_task


class KilledError(RuntimeError):
    pass


class KillAfter(lightning.Callback):
    """Stops the run (as a kill would) once ``epochs`` epochs have ended and been checkpointed."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_start(self, trainer, module) -> None:
        if trainer.current_epoch == self.epochs:
            raise KilledError


def _run(out: Path, epochs: int, kill_after: int | None = None):
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 1)
    data = torch.randn(16, 4)

    def step(batch):
        return (module(batch) ** 2).mean()

    task = step_task(step, module, lambda params: torch.optim.SGD(params, lr=0.1))
    callbacks = [KillAfter(kill_after)] if kill_after is not None else []
    trainer, resume = resumable_trainer(out, epochs, torch.device("cpu"), progress=False, callbacks=callbacks)
    fit(trainer, task, torch.utils.data.DataLoader(data, batch_size=4), resume / "last.ckpt")
    return module, task, resume


def test_a_run_killed_after_an_epoch_resumes_from_it_and_ends_as_an_uninterrupted_run(tmp_path: Path):
    reference, reference_task, _ = _run(tmp_path / "reference", 3)
    with pytest.raises(KilledError):
        _run(tmp_path / "killed", 3, kill_after=2)
    last = tmp_path / "killed" / "resume" / "last.ckpt"
    assert last.is_file()  # written after each epoch, not only at the end
    state = torch.load(last, weights_only=True, map_location="cpu")
    assert state["epoch"] == 1 and state["global_step"] == 8  # two epochs of four steps
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # replaced, not last-v1.ckpt
    resumed, task, _ = _run(tmp_path / "killed", 3)
    assert len(task.losses) == 4  # only the third epoch ran
    torch.testing.assert_close(resumed.weight, reference.weight)
    torch.testing.assert_close(task.losses, reference_task.losses[-4:])


class OrderedStream:
    """A stream that records which epoch's order each iteration read (TileStream's set_epoch protocol)."""

    def __init__(self) -> None:
        self.epoch, self.fixed, self.read = 0, False, []
        self.data = torch.randn(8, 4)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.fixed = epoch, True

    def __iter__(self):
        self.epoch, self.fixed = (self.epoch if self.fixed else self.epoch + 1), False
        epoch = self.epoch

        def batches():
            self.read.append(epoch)  # recorded when the epoch really reads it
            yield from self.data[torch.randperm(8, generator=torch.Generator().manual_seed(epoch))].split(4)

        return batches()

    def __len__(self) -> int:
        return 2


def test_each_epoch_reads_its_own_order_also_after_a_resume(tmp_path: Path):
    def run(out: Path, kill_after: int | None = None) -> list[int]:
        module, stream = torch.nn.Linear(4, 1), OrderedStream()
        task = step_task(lambda b: module(b).sum(), module, lambda params: torch.optim.SGD(params, lr=0.1))
        trainer, resume = resumable_trainer(
            out, 3, torch.device("cpu"), progress=False, callbacks=[KillAfter(kill_after)] if kill_after else []
        )
        with contextlib.suppress(KilledError):
            fit(trainer, task, stream, resume / "last.ckpt")
        return stream.read

    uninterrupted = run(tmp_path / "a")
    assert uninterrupted == [2, 3, 4]  # distinct orders, the ones runs have always read (EpochStream)
    assert run(tmp_path / "b", kill_after=1) == [2]
    assert run(tmp_path / "b") == [3, 4]  # the resumed epochs read what the uninterrupted run read
