"""The ``videocups`` command. It only parses arguments, loads the config and calls a pipeline."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from videocups_ray.config import Config, ConfigError, load_config, with_overrides
from videocups_ray.data.formats import FORMATS, writable_formats  # registry only: readers load lazily
from videocups_ray.data.types import DataError

log = logging.getLogger("videocups")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", default=[], metavar="YAML",
                   help="config file (repeatable; later files override earlier ones)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="dotted override, e.g. --set labeling.tau_m=0.5 (repeatable)")


def _config(args: argparse.Namespace, extra: list[str] | None = None) -> Config:
    return load_config(args.config, [*(extra or []), *args.overrides])


def _check_out(out: str, flag: str = "--out") -> None:
    """A local output folder must be a folder (or not exist yet); checked before any work starts,
    and nothing is created here, so a failing command leaves no empty folder behind."""
    if "://" in out:
        return  # object storage: the pipeline's pyarrow.fs reports its own errors
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise DataError(f"{flag} {out}: exists and is not a folder")
    parent = next((p for p in (path, *path.parents) if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise DataError(f"{flag} {out}: {parent} is a file, not a folder")


# --------------------------------------------------------------------------- commands
def cmd_synth(args: argparse.Namespace) -> int:
    from videocups_ray.data.synthdrive import write_synth_dataset

    extra = [f"synth.{k}={v}" for k, v in (("sequences", args.sequences), ("frames", args.frames),
             ("height", args.height), ("width", args.width), ("seed", args.seed)) if v is not None]
    cfg = _config(args, extra)
    summary = write_synth_dataset(cfg.synth, args.out, progress=not args.quiet)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from videocups_ray.pipelines.demo import run_demo

    cfg = _config(args)
    report = run_demo(cfg, Path(args.out), quick=args.quick)
    print(f"report: {report}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from videocups_ray.pipelines.report import write_run_report

    print(f"report: {write_run_report(_config(args), args.run, gt=args.gt)}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from videocups_ray.pipelines.evaluate import evaluate_paths, format_report

    extra = []
    if args.things is not None:
        try:
            things = [int(t) for t in args.things.split(",") if t.strip()]
        except ValueError:
            raise ConfigError(f"--things {args.things!r}: expected comma-separated integer class IDs, e.g. 11,13") from None
        extra.append(f"eval.things={things}")
    if args.protocol:
        extra.append(f"eval.protocol={args.protocol}")
    cfg = _config(args, extra)
    if args.json and Path(args.json).is_dir():
        raise DataError(f"--json {args.json}: is a folder; give a file name, e.g. {Path(args.json) / 'scores.json'}")
    result = evaluate_paths(args.gt, args.pred, fmt=args.format, gt_format=args.gt_format,
                            pred_format=args.pred_format, cfg=cfg.eval, unsupervised=args.unsupervised,
                            datasets=cfg.datasets)
    print(format_report(result))
    if args.json:
        try:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=2))
        except OSError as exc:
            raise DataError(f"--json {args.json}: cannot write the scores ({exc.strerror or exc}); they are printed above") from None
    return 0


def cmd_pseudolabel(args: argparse.Namespace) -> int:
    extra = [f"ray.address={args.address}"] if args.address else []
    cfg = _config(args, extra)
    if args.engine == "local":
        from videocups_ray.pipelines.pseudolabel import run_local as run
    else:
        from videocups_ray.pipelines.ray_pseudolabel import run_ray as run
    summary = run(cfg, args.input, args.out, progress=not args.quiet)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    cfg = _config(args, [f"ray.address={args.address}"] if args.address else [])
    sources: list[str | int] = [int(s) if s.isdigit() else s for s in args.source]
    if args.engine == "local" and len(sources) == 1:
        from videocups_ray.pipelines.streaming import run_stream

        summary = run_stream(cfg, sources[0], args.out, centroids=args.centroids, fps=args.fps,
                             max_frames=args.max_frames, idle_timeout_s=args.idle_timeout)
    else:
        from videocups_ray.pipelines.stream_service import run_streams

        summary = run_streams(cfg, sources, args.out, engine=args.engine, centroids=args.centroids, fps=args.fps,
                              max_frames=args.max_frames, idle_timeout_s=args.idle_timeout)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _workers(text: str | None) -> int | tuple[int, int] | None:
    if text is None:
        return None
    parts = [int(x) for x in text.split(",")]
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2 and 1 <= parts[0] <= parts[1]:
        return (parts[0], parts[1])
    raise ConfigError(f"--workers {text!r}: use N or MIN,MAX with 1 <= MIN <= MAX")


def cmd_train(args: argparse.Namespace) -> int:
    from videocups_ray.pipelines.self_training import run_self_training
    from videocups_ray.pipelines.train import evaluation_command

    cfg = _config(args)
    if args.rounds is not None:
        cfg = with_overrides(cfg, train={"rounds": args.rounds})
    summary = run_self_training(cfg, args.shards, args.out, workers=_workers(args.workers),
                                use_gpu=True if args.gpu else None, strategy=args.strategy)
    print(json.dumps(summary, indent=2, default=str))
    print(f"\nmodel: {summary['model']}\nloss curves: {summary['loss_plot']}\nevaluate it:\n  "
          + evaluation_command(summary["model"], args.heldout, args.config))
    return 0


def cmd_train_cues(args: argparse.Namespace) -> int:
    from videocups_ray.pipelines.train_cues import run_train_cues

    cfg = _config(args, [f"ray.address={args.address}"] if args.address else [])
    summary = run_train_cues(cfg, args.cue, args.input, args.out, workers=_workers(args.workers),
                             strategy=args.strategy, max_steps=args.steps, progress=not args.quiet)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from videocups_ray.pipelines.train import run_finetune

    if not 0 < args.fraction <= 1:
        raise ConfigError(f"--fraction {args.fraction:g}: must be in (0, 1] (the share of labelled frames used)")
    cfg = _config(args)
    summary = run_finetune(cfg, args.checkpoint, args.gt, args.fraction, args.out,
                           workers=_workers(args.workers), use_gpu=True if args.gpu else None)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from videocups_ray.pipelines.infer import run_infer

    cfg = _config(args)
    summary = run_infer(cfg, args.checkpoint, args.input, args.out, args.format,
                        engine=args.engine, overlay=args.overlay, device=args.device)
    print(json.dumps(summary, indent=2, default=str))
    return 0


# --------------------------------------------------------------------------- cluster (issue 12)
def cmd_cluster_check(args: argparse.Namespace) -> int:
    from videocups_ray.pipelines.cluster_files import check_cluster_file, image_tag, unplaceable_actors

    cfg = _config(args)
    bad = 0
    for path in args.files:
        groups = check_cluster_file(path, image=image_tag())
        problems = unplaceable_actors(groups, cfg.ray)
        for p in problems:
            print(f"{path}: {p}", file=sys.stderr)
        bad += bool(problems)
        print(json.dumps({"file": path, "ok": not problems, "node_groups": [g.__dict__ for g in groups]}))
    return 2 if bad else 0


def cmd_cluster_up(args: argparse.Namespace) -> int:
    from videocups_ray.pipelines.sim_cluster import NodeSpec, serve

    nodes = [NodeSpec(args.node_type, count=args.nodes, cpus=args.cpus_per_node, gpus=args.gpus_per_node,
                      object_store_mb=args.object_store_mb)]
    try:
        serve(nodes, Path(args.state), head_cpus=args.head_cpus, on_ready=lambda s: print(s, flush=True))
    except RuntimeError as exc:
        print(f"videocups cluster up: error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_cluster_down(args: argparse.Namespace) -> int:
    from videocups_ray.pipelines.sim_cluster import stop

    try:
        print(json.dumps(stop(Path(args.state), timeout_s=args.timeout)))
    except RuntimeError as exc:
        print(f"videocups cluster down: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _add_cluster_parser(sub) -> None:
    pc = sub.add_parser("cluster", help="cluster files and a simulated cluster on this machine")
    csub = pc.add_subparsers(dest="cluster_command", required=True)
    p = csub.add_parser("check", help="check cluster YAMLs offline: Ray's launcher validator, the "
                        "RayCluster CRD schema, the image, and that every actor of --config fits a node")
    p.add_argument("files", nargs="+", help="configs/cluster/*.yaml (Ray launcher or KubeRay RayCluster)")
    _add_config_args(p)
    p.set_defaults(func=cmd_cluster_check)
    from videocups_ray.pipelines.sim_cluster import DEFAULT_STATE

    p = csub.add_parser("up", help="a simulated multi-node cluster with fake GPUs on this machine; runs "
                        "until `cluster down` or Ctrl-C and prints the --set ray.address=... to use")
    p.add_argument("--nodes", type=int, default=2, help="worker nodes")
    p.add_argument("--gpus-per-node", type=int, default=4, help="fake GPUs each worker node declares")
    p.add_argument("--cpus-per-node", type=int, default=4, help="logical CPUs each worker node declares")
    p.add_argument("--head-cpus", type=int, default=1, help="logical CPUs of the head node")
    p.add_argument("--node-type", default="gpu", help="node type label / node_type:<name> resource")
    p.add_argument("--object-store-mb", type=int, default=128, help="object store per node, MiB")
    p.add_argument("--state", default=str(DEFAULT_STATE), help="where `down` finds the running cluster")
    p.set_defaults(func=cmd_cluster_up)
    p = csub.add_parser("down", help="stop the simulated cluster of `cluster up`")
    p.add_argument("--state", default=str(DEFAULT_STATE))
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for every process to exit")
    p.set_defaults(func=cmd_cluster_down)


def cmd_convert_checkpoint(args: argparse.Namespace) -> int:
    from videocups_ray.cues.convert import convert_checkpoint

    summary = convert_checkpoint(args.kind, args.inputs, args.out, motion_decoder=args.motion_decoder,
                                 no_motion=args.no_motion)
    print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videocups", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a SynthDrive corpus in KITTI-STEP layout")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--sequences", type=int)
    p.add_argument("--frames", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_args(p)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("demo", help="run the main job on the embedded default (SynthDrive)")
    p.add_argument("--out", default="runs/demo", help="run folder (report in <out>/report)")
    p.add_argument("--quick", action="store_true", help="smallest corpus, for smoke tests")
    _add_config_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("report", help="write RUN/report/index.html for a run folder (demo, shards, training, predictions)")
    p.add_argument("run", help="run folder: a demo run, a pseudolabel/infer --out, or a train --out")
    p.add_argument("--gt", help="ground-truth folder for scores and matched class colours (not needed for a demo run)")
    _add_config_args(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("pseudolabel", help="pseudo-label a corpus into Parquet shards")
    p.add_argument("--input", required=True,
                   help="videos, folders, a glob, a list file, a dataset folder, or 'synth:' (SynthDrive in memory)")
    p.add_argument("--out", required=True, help="shard folder (local path or s3://, gs://)")
    p.add_argument("--engine", choices=["ray", "local"], default="ray",
                   help="ray: the distributed actor pipeline (default); local: one process")
    p.add_argument("--address", help="Ray address: auto, ray://host:10001 (default: start a local instance)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_args(p)
    p.set_defaults(func=cmd_pseudolabel)

    p = sub.add_parser("stream", help="online pseudo-labeling of a live stream into shards")
    p.add_argument("--source", required=True, action="append",
                   help="camera index (e.g. 0), a video file, a URL OpenCV opens (rtsp/http), or a folder to "
                        "watch for new images; repeat for several streams at once")
    p.add_argument("--engine", choices=("local", "ray"), default="ray",
                   help="ray: streams share the cue actor pools, one tracker actor each; local: one process")
    p.add_argument("--address", help="Ray cluster address (default: a private local instance)")
    p.add_argument("--out", required=True, help="shard folder")
    p.add_argument("--centroids", help="k-means centroids (.npy) from a corpus run; default: fit on the first frames")
    p.add_argument("--fps", type=float, help="pace a recorded source at this arrival rate (frames/s)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--idle-timeout", type=float, default=5.0,
                   help="a watched folder ends after this many seconds without a new frame")
    _add_config_args(p)
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("train", help="train the VPS model on pseudo-label shards with Ray Train")
    p.add_argument("--shards", required=True, help="pseudo-label (or ground-truth) shard folder")
    p.add_argument("--out", required=True, help="run folder; rerunning with the same folder resumes")
    p.add_argument("--workers", help="N or MIN,MAX (elastic) Ray Train workers")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL)")
    p.add_argument("--strategy", choices=["ddp", "deepspeed"], help="default from config (ddp)")
    p.add_argument("--heldout", help="labelled held-out corpus named in the printed evaluation command")
    p.add_argument("--rounds", type=int, help="self-training rounds (train.rounds): round r > 1 trains on "
                   "round r-1's predictions of the training videos")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-cues", help="train the flow or depth+motion cue self-supervised on raw video (Ray Train)")
    p.add_argument("cue", choices=["flow", "depth"], help="flow: RAFT (UFlow/SMURF losses); depth: depth+pose+motion")
    p.add_argument("--input", required=True, help="videos, folders, a dataset, or 'synth:' (as for pseudolabel)")
    p.add_argument("--out", required=True, help="run folder; rerunning with the same folder resumes")
    p.add_argument("--workers", help="N or MIN,MAX (elastic) Ray Train workers")
    p.add_argument("--strategy", choices=["ddp", "deepspeed"], help="default from config (ddp)")
    p.add_argument("--steps", type=int, help="total optimizer steps (cue_training.max_steps)")
    p.add_argument("--address", help="Ray address: auto, ray://host:10001 (default: start a local instance)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_args(p)
    p.set_defaults(func=cmd_train_cues)

    p = sub.add_parser("finetune", help="fine-tune an unsupervised checkpoint on a fraction of real labels")
    p.add_argument("--checkpoint", required=True, help="model.pt of a training run")
    p.add_argument("--gt", required=True, help="KITTI-STEP or Cityscapes-VPS folder with labels")
    p.add_argument("--fraction", type=float, required=True, help="share of labelled frames used, (0, 1]")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--workers", help="N or MIN,MAX Ray Train workers")
    p.add_argument("--gpu", action="store_true")
    _add_config_args(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("infer", help="predict video panoptic labels with a trained model")
    p.add_argument("--checkpoint", required=True, help="model.pt of a training run")
    p.add_argument("--input", required=True, help="videos, folders or a dataset (as for pseudolabel)")
    p.add_argument("--out", required=True, help="prediction folder (panoptic/<video>/<frame>.png)")
    p.add_argument("--format", default="kitti-step", choices=writable_formats())
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="ray: a Ray Data job over the corpus with an actor pool")
    p.add_argument("--overlay", action="store_true", help="also write an overlay video per input video")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    _add_config_args(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("convert-checkpoint", help="convert an official checkpoint (RAFT, DINO, Monodepth2) "
                       "into the file a learned backend loads (see videocups_ray/cues/convert.py)")
    p.add_argument("kind", choices=["raft", "dino-vit", "dino-resnet50", "monodepth2"])
    p.add_argument("inputs", nargs="+", help="official file(s); monodepth2: encoder.pth depth.pth")
    p.add_argument("--out", required=True, help="converted state dict (.pt)")
    p.add_argument("--motion-decoder", help="monodepth2: motion decoder file in the depth decoder's layout")
    p.add_argument("--no-motion", action="store_true", help="monodepth2: constant p=0 motion head")
    p.set_defaults(func=cmd_convert_checkpoint, out_is_file=True)  # --out names a file

    p = sub.add_parser("eval", help="score predictions against ground truth (STQ, VPQ)")
    p.add_argument("--gt", required=True, help="ground-truth folder")
    p.add_argument("--pred", required=True, help="prediction folder (label PNGs) or shard folder")
    p.add_argument("--format", choices=list(FORMATS), help="format of --gt and --pred (default: detect each)")
    p.add_argument("--gt-format", choices=list(FORMATS), help="format of --gt (overrides --format)")
    p.add_argument("--pred-format", choices=list(FORMATS), help="format of --pred (overrides --format)")
    p.add_argument("--protocol", choices=["vps", "vip-deeplab"],
                   help="VPQ protocol: mcahny/vps eval_vpq (default) or ViP-DeepLab eval_dvpq")
    p.add_argument("--unsupervised", action="store_true",
                   help="map pseudo-classes to GT classes by Hungarian matching first")
    p.add_argument("--things", help="comma-separated thing class IDs (default from config)")
    p.add_argument("--json", help="write the result as JSON here")
    _add_config_args(p)
    p.set_defaults(func=cmd_eval)
    _add_cluster_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Numba's default cache lives beside the installed sources, which may be read-only or
    # shared between versions; one user-level folder is safer. Set before numba is imported.
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "videocups" / "numba"))
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if getattr(args, "out", None) and not getattr(args, "out_is_file", False):
            _check_out(args.out)
        return args.func(args)
    except (ConfigError, DataError) as exc:
        print(f"videocups {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system refused (read-only folder, disk full, ...): name the path
        log.debug("file system error", exc_info=True)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"videocups {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"videocups {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
