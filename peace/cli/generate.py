"""``peace decoder`` (train a run's decoder, judge its reconstructions) and ``peace sample`` (new models
around prompt models, written as a zoo)."""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parsers"]


def _decoder(args: argparse.Namespace) -> int:
    from peace.learn.decoder import DecoderConfig
    from peace.learn.generation import judge_zoo, reconstruction_summary, train_decoder
    from peace.learn.refine import RefineConfig

    refine = RefineConfig(**({} if args.refine_steps is None else {"steps": args.refine_steps}),
                          retrieve=args.refine_from == "both")
    if args.judge is not None:
        table, skipped = judge_zoo(args.run, args.judge, refine, args.max_models, args.seed)
        for arch, why in skipped.items():
            print(f"left out: {arch}: {why}")
        where = f"{args.judge}'s models (at most {args.max_models} per architecture)"
    else:
        config = DecoderConfig(hidden=args.hidden, epochs=args.epochs, min_models=args.min_models, seed=args.seed,
                               function_weight=args.function_weight, function_inputs=args.function_inputs,
                               other_tasks=args.other_tasks,
                               **({"families": tuple(args.families)} if args.families else {}))
        dec, table = train_decoder(args.run, config, progress=not args.quiet, refine=refine)
        print(f"decoder for {len(dec.specs)} architecture(s) saved in {args.run} (decoder.safetensors, decoder.json)")
        plain = [s.describe() for s, r in zip(dec.specs, dec.refines) if not r]
        if plain and refine.steps:
            print(f"left as decoded (refinement cost their validation models accuracy): {'; '.join(plain)}")
        where = "the run's test split"
        if table.empty:
            print("no test-split models of a decoded architecture: reconstruction not measured")
            return 0
    print(f"reconstruction of {where}, judged by function (mean over models; agreement = share of "
          "inputs where the model predicts what the original predicts):")
    print(reconstruction_summary(table).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    refined = "refined_acc" in table
    how = ("refined: refined towards the embedding's function block (where validation chose it) from the "
           "decoded weights"
           + (" and from the retrieved training model, the closer sketch kept" if refine.retrieve else "")
           + f" (left as decoded where probes x classes exceed {refine.max_compression:g} x the block, too "
           "compressed to read back); ")
    print("kept: share of models whose decoded (refined, mean, nearest) model keeps >= 90 % of the original's test "
          "accuracy; " + (how if refined else "") + "heldout_task: the encoder was not trained on the task")
    if not refined and refine.steps:
        print("not refined: the run's encoder has no function block to refine towards (encoder.function_block=0). "
              "Its decoded models follow their originals far better when the embedding holds one: train the run "
              "with --set encoder.function_block=256 (on TETRIS-SEED, agreement with the originals 0.46 -> 0.84 "
              "refined; docs/generation.md)")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from peace.learn.generation import SampleConfig, decoder_training_models
    from peace.learn.refine import RefineConfig
    from peace.orchestrate.generation import sample_zoo

    config = SampleConfig(n=args.n, candidates=args.candidates, bandwidth=args.bandwidth, seed=args.seed,
                          rounds=args.rounds)
    zoo = sample_zoo(args.run, args.prompt, args.out, config, zoo=args.zoo, arch=args.arch, name=args.name,
                     refine=RefineConfig(args.refine_steps))
    m = zoo.manifest
    acc = m["test_acc"].dropna()
    measured = (f"test accuracy mean {acc.mean():.3f}, min {acc.min():.3f}, max {acc.max():.3f}" if len(acc) else
                "unmeasured (PEACE holds no data for this task; they compute what the decoder read from the prompt)")
    print(f"sampled {len(m)} {m['arch'].iloc[0]} models for task {m['task'].iloc[0]!r} into {zoo.path}: {measured}")
    print(f"next: `peace embed --run {args.run} --zoo {zoo.path} --out DIR` to map them, or `peace zoo info {zoo.path}`")
    if not decoder_training_models(args.run, zoo.spec(m["model_id"].iloc[0]), m["task"].iloc[0]):
        print(f"note: the decoder learned from no {m['arch'].iloc[0]} model of {m['task'].iloc[0]!r} (none in the run's "
              f"training split), and decodes such pairs to about chance (docs/generation.md, 'A prompt the decoder "
              f"has not seen'); a decoder trained on a run whose training split holds them writes them")
    return 0


def add_parsers(sub) -> None:
    """Add ``decoder`` and ``sample`` to the ``peace`` command's subcommands."""
    _add_decoder(sub)
    _add_sample(sub)


def _add_decoder(sub) -> None:
    d = sub.add_parser("decoder", help="train a run's decoder (embedding -> weights) and judge its reconstructions",
                       description="Train a decoder on the run's frozen encoder (training split; validation picks the "
                       "epoch), save it in the run directory, and report its reconstructions of the test split by "
                       "test accuracy and prediction agreement, beside the mean model and the nearest training model. With "
                       "--judge ZOO, judge the saved decoder on another zoo's models instead.")
    d.add_argument("--run", type=Path, required=True, metavar="DIR", help="a training run (peace train --out)")
    d.add_argument("--epochs", type=int, default=300, help="most decoder epochs (early stopping on validation)")
    d.add_argument("--hidden", type=int, default=256, help="width of the decoder's trunk")
    d.add_argument("--function-weight", type=float, default=10.0, metavar="W",
                   help="weight of the functional term (match the originals' predictions); 0 trains on weights "
                   "alone, as Hyper-representations' E.D and SANE do (default 10, chosen on validation)")
    d.add_argument("--function-inputs", type=int, default=64, metavar="K",
                   help="inputs the functional term reads per step, drawn afresh each step from the architecture's "
                   "up to 512 (default 64, chosen on validation; 0: all of them, 8x slower on image zoos)")
    d.add_argument("--other-tasks", type=float, default=0.25, metavar="W",
                   help="weight of other tasks' inputs against the model's own task's in the functional term "
                   "(default 0.25, chosen on validation; 1: every input alike; 0: only the task the model solves)")
    d.add_argument("--families", nargs="+", metavar="FAMILY",
                   help="architecture families to decode, of mlp, cnn1d, cnn2d, resnet, vit (default: all but vit; "
                   "ViT heads cost the other families on test and keep a quarter to a third of test ViTs)")
    d.add_argument("--min-models", type=int, default=8, metavar="N",
                   help="training models an architecture needs to be decoded (default 8)")
    d.add_argument("--refine-steps", type=int, metavar="N",
                   help="also judge the decoded models refined N steps towards the embedding's function block "
                   "(default: peace.learn.refine.RefineConfig's 200, chosen on validation; 0: the decoder alone)")
    d.add_argument("--refine-from", choices=["both", "decoded"], default="both",
                   help="refine from the decoded weights and from the training model the embedding retrieves, "
                   "keeping the closer sketch (both, the default: chosen on validation), or from the decoded weights "
                   "alone")
    d.add_argument("--judge", type=Path, metavar="ZOO",
                   help="judge the run's saved decoder on another zoo's models instead of training one (models of "
                   "architectures it writes; a task the encoder never trained on counts as held out)")
    d.add_argument("--max-models", type=int, default=500, metavar="N",
                   help="with --judge: models judged per architecture, drawn at random with --seed (default 500)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_decoder)


def _add_sample(sub) -> None:
    s = sub.add_parser("sample", help="sample new models around prompt models and write them as a zoo",
                       description="Embed the prompt models, draw from a kernel density estimate around their "
                       "embeddings, decode with the run's decoder (peace decoder) and write a zoo of status "
                       "'sampled' models that peace zoo info / embed / query and the explorer read.")
    s.add_argument("--run", type=Path, required=True, metavar="DIR", help="a run with a decoder (peace decoder --run)")
    s.add_argument("--prompt", required=True, help="model ids, or a manifest query such as "
                   "\"task == 'digits' and test_acc > 0.9\" (one architecture and one task)")
    s.add_argument("--n", type=int, default=10, help="models to write (default 10)")
    s.add_argument("--out", type=Path, required=True, metavar="DIR", help="new directory for the sampled zoo")
    s.add_argument("--zoo", type=Path, metavar="DIR", help="zoo the prompt refers to (default: the run's)")
    s.add_argument("--arch", help="architecture (the manifest's arch column) when the prompt selects several")
    s.add_argument("--candidates", type=int, default=1, metavar="K", help="draw n*K and keep the n most accurate on "
                   "the task's training split (SANE's subsampling; default 1: no selection)")
    s.add_argument("--rounds", type=int, default=1, metavar="R", help="bootstrapping: R rounds, each sampling around "
                   "the n best draws so far (SANE's bootstrapping; needs --candidates >= 2; --candidates 20 --rounds 5 "
                   "--bandwidth 0.5 was best on validation, docs/generation.md)")
    s.add_argument("--bandwidth", type=float, default=1.0, help="kernel width as a multiple of Scott's rule")
    s.add_argument("--refine-steps", type=int, default=0, metavar="N",
                   help="refine each decoded draw N steps towards its embedding's function block (default 0: none)")
    s.add_argument("--name", default="sampled", help="the new zoo's name")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_sample)
