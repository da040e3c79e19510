"""``xdretrieve finetune``: train a model directory on a dataset's train users."""

from __future__ import annotations

from pathlib import Path

import click

from xdretrieve.cli_checks import (
    COMMAND_CONTEXT,
    OutputDir,
    UserPath,
    bad_rows_options,
    check_device,
    fail_cleanly,
    make_settings,
    read_dataset,
)
from xdretrieve.train import POOLINGS


@click.command("finetune", context_settings=COMMAND_CONTEXT)
@click.option("--data", required=True, type=UserPath(exists=True, file_okay=False, path_type=Path),
              help="Dataset folder with items.*, interactions.* and optionally users.* (the "
                   "split; without it, the seeded split that `evaluate` draws too).")
@click.option("--out", required=True, type=OutputDir(),
              help="The model directory to write: new, empty, or an earlier model, which is "
                   "replaced only once the new one is complete (an interrupted run leaves it "
                   "as it was; in full mode the same command then resumes after the last "
                   "finished epoch of encoder fine-tuning, checkpointed in .NAME.resume beside "
                   "it).")
@click.option("--mode", type=click.Choice(["adapter", "full"]), default="adapter", show_default=True,
              help="adapter: train only a head over the frozen, cached encoder vectors "
                   "(CPU-friendly). full: first fine-tune the transformer itself on contrastive "
                   "pairs, then train the adapter over its vectors; meant for a GPU (bf16, large "
                   "batches; several GPUs with torchrun), runs on the CPU too but slowly.")
@click.option("--model", default=None, metavar="NAME|DIR",
              help="Base encoder. [default: the packaged all-MiniLM-L6-v2]")
@click.option("--dim", type=click.IntRange(min=1), default=None,
              help="Size of the shared space. [default: 128]")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="At most this many epochs of the adapter. [default: 40]")
@click.option("--pooling", type=click.Choice(POOLINGS), default=None,
              help="How the user tower pools a history's item vectors (mean: the ablation). "
                   "[default: attention]")
@click.option("--coral", type=click.FloatRange(min=0), default=None,
              help="Weight of the CORAL domain-alignment term (0: off). [default: 0]")
@click.option("--time-budget", type=click.FloatRange(min=0), default=None,
              help="Stop a stage after the epoch (encoder fine-tuning: the step) that passes this "
                   "many seconds; in full mode each of the two stages gets this budget. "
                   "[default: adapter 600, encoder none]")
@click.option("--device", default=None,
              help="'auto' (CUDA when present), 'cuda', 'cpu'; in full mode under torchrun "
                   "each process takes cuda:LOCAL_RANK. [default: auto]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Full mode: pairs per step and process (the in-batch negatives are gathered "
                   "over all processes). [default: 256]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Full mode: peak learning rate of the encoder (AdamW, warm-up, linear decay). "
                   "[default: 3e-5]")
@click.option("--ft-epochs", type=click.IntRange(min=1), default=None,
              help="Full mode: at most this many epochs of encoder fine-tuning. [default: 3]")
@click.option("--max-pairs", type=click.IntRange(min=1), default=None,
              help="Full mode: train on a random sample of at most this many pairs per epoch. "
                   "[default: all]")
@click.option("--hard-negatives", type=click.IntRange(min=0), default=None,
              help="Full mode: mined hard negatives per pair and epoch (0: in-batch only). "
                   "[default: 1]")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Full mode: processes that tokenize the next steps' texts beside each training "
                   "process (a fast GPU waits on them). [default: on CUDA the CPU cores per training "
                   "process less 4, from 2 to 12; on the CPU 0]")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None,
              help="Full mode: recompute activations in the backward pass (one more forward "
                   "pass, a fraction of the memory). [default: on the CPU, off on CUDA]")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@bad_rows_options
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@fail_cleanly
def finetune(data: Path, out: Path, mode: str, model: str | None, dim: int | None,
             epochs: int | None, pooling: str | None, coral: float | None,
             time_budget: float | None,
             device: str | None, batch_size: int | None, lr: float | None,
             ft_epochs: int | None, max_pairs: int | None, hard_negatives: int | None,
             workers: int | None, gradient_checkpointing: bool | None, seed: int,
             skip_bad_rows: bool, rejects: Path, quiet: bool) -> None:
    """Train a model directory on train users; valid users pick the epochs.

    adapter mode: an item adapter per domain, a user tower and an item bias over the frozen,
    cached encoder vectors. full mode: contrastive fine-tuning of the encoder itself (history ->
    next item, across and within domains, in-batch and mined hard negatives, logQ correction),
    saved in MODEL_DIR/encoder, then the adapter over the fine-tuned vectors. Both write the same
    kind of directory, which `index`, `query` and `evaluate` load with --model:

    \b
      xdretrieve finetune --data ../shared/data/amazon-arts-office --out arts-office.model
      xdretrieve index --data ../shared/data/amazon-arts-office --model arts-office.model \\
          --store shop.xdr

    \b
    Full fine-tuning on one GPU, and on 4 GPUs of one machine:
      xdretrieve finetune --mode full --data DIR --out MODEL_DIR
      torchrun --standalone --nproc_per_node=4 -m xdretrieve.cli finetune --mode full \\
          --data DIR --out MODEL_DIR
    """
    from xdretrieve.errors import ConfigError
    from xdretrieve.evaluate.protocol import Protocol
    from xdretrieve.model import model_out_problem
    from xdretrieve.train.adapter import AdapterConfig
    from xdretrieve.train.finetune import base_encoder
    from xdretrieve.train.finetune import finetune as train_model  # (this command's namesake)

    if mode == "adapter":
        given = {"--batch-size": batch_size, "--lr": lr,
                 "--ft-epochs": ft_epochs, "--max-pairs": max_pairs,
                 "--hard-negatives": hard_negatives, "--workers": workers,
                 "--[no-]gradient-checkpointing": gradient_checkpointing}
        named = [k for k, v in given.items() if v is not None]
        if named:
            raise click.UsageError(f"{', '.join(named)}: only with --mode full")
    config = AdapterConfig(seed=seed, **{k: v for k, v in {
        "dim": dim, "epochs": epochs, "pooling": pooling, "coral": coral,
        "time_budget_s": time_budget}.items()
        if v is not None})
    full = None
    if mode == "full":
        from xdretrieve.train.full import FullConfig

        full = FullConfig(seed=seed, time_budget_s=time_budget, **{k: v for k, v in {
            "batch_size": batch_size, "lr": lr, "epochs": ft_epochs, "max_pairs": max_pairs,
            "hard_negatives": hard_negatives, "num_workers": workers,
            "gradient_checkpointing": gradient_checkpointing}.items() if v is not None})
    settings = make_settings(model=model, device=device)
    problem = model_out_problem(out)  # before the data is read, as what follows
    if problem is not None:
        raise click.BadParameter(problem, param_hint="'--out'")
    try:  # before the data is read, too (a model that is not there fails here as well)
        base_encoder(settings.model)
    except ConfigError as e:
        raise click.BadParameter(str(e), param_hint="'--model'") from e
    check_device(settings.device)
    dataset = read_dataset(data, skip_bad_rows, rejects)
    split = Protocol(dataset).split
    source = ("users.*, which names no valid users: drawn from its train users, as "
              "`evaluate` draws them" if split.valid_drawn else "users.*" if split.from_file
              else "no users.*: a seeded split, the one `evaluate` uses")
    click.echo(f"users: {len(split.train):,} train, {len(split.valid):,} valid, "
               f"{len(split.test):,} test ({source})", err=True)
    try:
        manifest = train_model(dataset, out, settings, config, mode=mode, full_config=full,
                               progress=not quiet)
    except KeyboardInterrupt:
        from xdretrieve.train.resume import saved_epoch

        epoch = saved_epoch(out) if mode == "full" else None
        if epoch is not None:  # say what the next run does (click then prints "Aborted!")
            click.echo(f"\ninterrupted: the same command resumes after epoch {epoch} of "
                       f"encoder fine-tuning", err=True)
        raise
    if manifest is None:  # another process of a torchrun launch: rank 0 reports
        return
    if mode == "full":
        ft = manifest["finetune"]
        click.echo(f"fine-tuned the encoder in {ft['seconds']:.0f} s: {ft['pairs_seen']} pairs "
                   f"({ft['pairs']} per epoch) at {ft['pairs_per_s']:.0f} pairs/s on "
                   f"{ft['world_size']} x {ft['device']} ({ft['precision']}); "
                   + (f"best epoch {ft['best_epoch']} of {ft['epochs']}" if ft["best_epoch"]
                      else f"kept the encoder as it was: none of {ft['epochs']} epoch(s) "
                           f"did better on valid users"))
    best = manifest["history"][manifest["best_epoch"] - 1]
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in best.items() if "/" in k)
    seconds = manifest["train_seconds"]  # a demo-sized catalog trains in under a second
    click.echo(f"trained in {seconds:.{0 if seconds >= 10 else 1}f} s; best epoch "
               f"{manifest['best_epoch']} on valid users: {metrics}")
    click.echo(f"wrote {out}")
