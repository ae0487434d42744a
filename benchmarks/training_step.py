"""What our training recipe adds per optimizer step on top of a plain Hugging Face Trainer.

Same tiny random Llama (the test fixture's), same tokenized Alpaca data, same TrainingArguments
(batch, accumulation, learning rate, schedule, logging every step), in one process on CPU:
- ours: `alpaca_training.train.build_trainer` (our collator, the progress reporter writing
  progress.json every 10 s and logging a line per step);
- plain: `transformers.Trainer` with `DataCollatorForSeq2Seq` and its default callbacks.
Each repeat builds both trainers afresh and times N optimizer steps of each (first step begin to
last step end), alternating which goes first; a warm-up run of each is not counted. Prints the
median seconds per step of each and the ratio ours/plain (the goal: <= 1.03).

    .venv/bin/python benchmarks/training_step.py [--steps 40] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _step_timer() -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time from the first optimizer step's start to the last one's end."""

        def __init__(self) -> None:
            self.start: float | None = None
            self.end = 0.0
            self.steps = 0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.start is None:
                self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.end = time.perf_counter()
            self.steps += 1

        def per_step(self) -> float:
            assert self.start is not None and self.steps
            return (self.end - self.start) / self.steps

    return StepTimer()


def ours(config: Any, steps: int) -> float:
    from alpaca_training.progress import default_sinks
    from alpaca_training.train import build_trainer

    trainer = build_trainer(
        config,
        world_size=1,
        cuda=False,
        sinks=default_sinks(config.output_dir, {}),
        max_steps=steps,
        save_strategy="no",
    )
    timer = _step_timer()
    trainer.add_callback(timer)
    trainer.train()
    assert timer.steps == steps
    return timer.per_step()


def plain(config: Any, steps: int) -> float:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from alpaca_training.data import load_records, tokenize_records
    from alpaca_training.model import load_model_and_tokenizer
    from alpaca_training.train import training_arguments_kwargs

    model, tokenizer = load_model_and_tokenizer(config, cuda=False)
    data = tokenize_records(
        load_records(config.data_path), tokenizer, config.hyperparameters.max_length
    )
    kwargs = training_arguments_kwargs(config, 1, cuda=False) | {
        "max_steps": steps,
        "save_strategy": "no",
    }
    timer = _step_timer()
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**kwargs),
        train_dataset=data,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        processing_class=tokenizer,
        callbacks=[timer],
    )
    with contextlib.redirect_stdout(io.StringIO()):  # its PrinterCallback prints every step
        trainer.train()
    assert timer.steps == steps
    return timer.per_step()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per timed run")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="alpaca-train-bench-"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor")  # peft's import makes it
    try:
        import torch

        torch.set_num_threads(args.threads)
        sys.path.insert(0, str(REPO))
        from transformers.utils import logging as hf_logging

        from alpaca_training.config import TrainConfig
        from tests.tiny_llama import FIXTURE, build_tiny_llama
        from tests.training.conftest import make_config

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        model = build_tiny_llama(work / "tiny")
        (work / "data").mkdir()
        shutil.copy(FIXTURE, work / "data" / FIXTURE.name)
        raw = make_config(model, work / "data", work / "out", hyperparameters={"epochs": 100})
        config = TrainConfig.model_validate(raw)
        # our log lines are formatted and written as in a pod, to a buffer instead of the screen
        logging.basicConfig(level=logging.INFO, stream=io.StringIO(), force=True)

        runners = {"ours": ours, "plain": plain}
        for run in runners.values():  # warm-up
            run(config, args.steps)
        times: dict[str, list[float]] = {name: [] for name in runners}
        for repeat in range(args.repeats):
            order = list(runners) if repeat % 2 == 0 else list(reversed(runners))
            for name in order:
                times[name].append(runners[name](config, args.steps))
            print(
                f"repeat {repeat + 1}/{args.repeats}: "
                + ", ".join(f"{n} {times[n][-1] * 1e3:.2f} ms/step" for n in runners),
                flush=True,
            )
        med = {name: statistics.median(values) for name, values in times.items()}
        print(
            f"\n{args.steps} optimizer steps x {args.repeats} repeats, tiny Llama, CPU, "
            f"{args.threads} thread(s)"
        )
        for name in runners:
            print(f"  {name:5s} median {med[name] * 1e3:.2f} ms/step")
        ratio = med["ours"] / med["plain"]
        print(f"  ratio ours/plain = {ratio:.3f} (goal <= 1.03)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
