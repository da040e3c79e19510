"""``xdretrieve finetune``: train a model directory on a dataset's train users."""

from __future__ import annotations

from pathlib import Path

import click

from xdretrieve.errors import XDRetrieveError


@click.command("finetune", context_settings={"help_option_names": ["-h", "--help"],
                                             "max_content_width": 100})
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset folder with items.*, interactions.* and users.* (the split).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The model directory to write.")
@click.option("--model", default=None, metavar="NAME|DIR",
              help="Base encoder. [default: the packaged all-MiniLM-L6-v2]")
@click.option("--dim", type=int, default=None, help="Size of the shared space. [default: 128]")
@click.option("--epochs", type=int, default=None, help="At most this many epochs. [default: 40]")
@click.option("--coral", type=float, default=None,
              help="Weight of the CORAL domain-alignment term (0: off). [default: 0]")
@click.option("--time-budget", type=float, default=None,
              help="Stop after the epoch that passes this many seconds. [default: 600]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def finetune(data: Path, out: Path, model: str | None, dim: int | None, epochs: int | None,
             coral: float | None, time_budget: float | None, seed: int, quiet: bool) -> None:
    """Train an adapter model (item adapter per domain, user tower, item bias) over the frozen,
    cached encoder vectors, on train users; valid users pick the epoch.

    The model directory loads with --model in `index`, `query` and `evaluate`:

    \b
      xdretrieve finetune --data ../shared/data/amazon-arts-office --out arts-office.model
      xdretrieve index --data ../shared/data/amazon-arts-office --model arts-office.model \\
          --store shop.xdr
    """
    from xdretrieve.cli import make_settings
    from xdretrieve.data import Dataset
    from xdretrieve.encoder import Encoder, item_text, resolve_model
    from xdretrieve.train.adapter import AdapterConfig, train_adapter

    config = AdapterConfig(seed=seed, **{k: v for k, v in {
        "dim": dim, "epochs": epochs, "coral": coral, "time_budget_s": time_budget}.items()
        if v is not None})
    try:
        settings = make_settings(model=model)
        dataset = Dataset.from_dir(data)
        if dataset.splits is None:
            raise XDRetrieveError(f"{data} has no users.* file: training needs train/valid users")
        ref = resolve_model(settings.model)
        if ref.trained is not None:
            raise XDRetrieveError("--model must be a base encoder, not a trained model directory")
        encoder = Encoder.from_settings(settings, ref)
        texts = [item_text(it, settings.text_template) for it in dataset.items.values()]
        base = encoder.encode(texts, progress=not quiet, desc="embedding items")
        manifest = train_adapter(dataset, base, out, ref.name, ref.fingerprint, config,
                                 progress=not quiet)
    except XDRetrieveError as e:
        raise click.ClickException(str(e)) from e
    best = manifest["history"][manifest["best_epoch"] - 1]
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in best.items() if "/" in k)
    click.echo(f"trained in {manifest['train_seconds']:.0f} s; best epoch {manifest['best_epoch']}"
               f" on valid users: {metrics}")
    click.echo(f"wrote {out}")
