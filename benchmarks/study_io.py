"""File reads of one ``fedser study``: checkpoint loads, corpus scans, feature-cache reads, per process.

    nice -n 10 python benchmarks/study_io.py [--repo DIR] [--work-dir DIR] [--config TOML]
                                             [--python PY] [--timeout S] [--keep]

Runs, with the code of ``--repo`` (default: this checkout), ``fedser pretrain`` and then ``fedser
study`` on a fast config (the embedded tiny demo, its default regimes x five folds, but 1-2 iterations
per stage: the counts below do not depend on iteration counts), and counts, across EVERY process
the study starts (the study process, its spawn pool workers, the SuperLink, SuperExec, ServerApp,
simulation and Ray worker processes):

* checkpoint reads: opens (read mode) of the pre-trained GAN (``work_dir/checkpoints/pretrained.pt``
  or ``model.pretrained``);
* labeled-corpus scans: opens of the first EmoEvaluation file of the IEMOCAP-format corpus
  (``Session1/dialog/EmoEvaluation/Ses01F_impro01.txt`` for the synthetic one; the reader opens
  each EmoEvaluation file exactly once per scan, checked below);
* pre-training corpus scans: opens of the first ``*.trans.txt`` of the LibriSpeech-layout corpus;
* feature-cache reads: opens of files under the feature cache folder;
* wav opens from Python (the cache key hashes each clip's content; soundfile's own opens happen
  in C and raise no audit event, so they are not seen).

How: a temporary ``sitecustomize.py`` on ``PYTHONPATH`` installs ``sys.addaudithook`` in every
Python process that inherits the environment and appends "<pid> <kind> <path>" lines to the file
named by ``FEDSER_IO_LOG`` (plus one "start" line per process with its parent pid and argv, used
to tell the process kinds apart). Before the study it checks the markers: one scan of each corpus
under the hook must open each marker exactly once. After the study it checks that no process that
carried this run's ``FEDSER_IO_LOG`` is still alive (and ends any it finds, by pid), and removes
the Ray session folders of its simulations.

The Ray-worker figures vary a little between runs: a ClientApp process reads its node's data once
per (process, session), and which of the Ray actors serves which node is up to Ray.

The script only drives the CLI (``python -c 'from simulations.cli import main; main()'`` with
cwd and PYTHONPATH at ``--repo``), so it measures an older checkout as well, e.g.
``git worktree add /tmp/before <commit>`` and ``--repo /tmp/before``, with this venv's python.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]

# Every count is independent of these lengths; they only keep the run short.
FAST: dict[str, Any] = {
    "name": "study-io",
    "training": {"ae_iterations": 2, "gan_iterations": 2, "finetune_iterations": 2, "ser_iterations": 2,
                 "eval_every": 1, "bagan_ae_iterations": 2, "bagan_gan_iterations": 2},
    "synthesis": {"per_class_federated": 8, "per_class_central": 8},
    "federation": {"rounds": 1, "local_iterations": 1},
}

SITECUSTOMIZE = r'''
# Written by benchmarks/study_io.py: log opens of the files it counts (audit hook, PEP 578).
import os, sys

_LOG = os.environ.get("FEDSER_IO_LOG")
_CACHE = os.environ.get("FEDSER_IO_CACHE", "\0")
_CKPT = os.environ.get("FEDSER_IO_CKPT", "\0")
_CKPT_NAME = os.path.basename(_CKPT)
_busy = False


def _write(line):
    global _busy
    _busy = True  # os.open raises an "open" event of its own
    try:
        fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8", "replace"))
        finally:
            os.close(fd)
    finally:
        _busy = False


def _kind(path):
    if path.endswith(_CKPT_NAME) and os.path.abspath(path) == _CKPT:
        return "ckpt"
    if "/dialog/EmoEvaluation/" in path and path.endswith(".txt"):
        return "emo"
    if path.endswith(".trans.txt"):
        return "trans"
    if path.startswith(_CACHE):
        return "feat"
    if path.endswith((".wav", ".flac")):
        return "wav"
    if path.endswith("/common/pipeline.py") or "/common/__pycache__/pipeline." in path:
        return "code"  # which copy of the repository this process imports
    return None


def _hook(event, args):
    if event != "open" or _busy:
        return
    try:
        path = args[0]
        if isinstance(path, int) or path is None:
            return
        path = os.fsdecode(os.fspath(path))
        kind = _kind(path)
        if kind is None:
            return
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        mode = "r" if flags & os.O_ACCMODE == os.O_RDONLY else "w"
        if isinstance(args[1], str) and any(c in args[1] for c in "wax+"):
            mode = "w"
        _write(f"{os.getpid()} {kind} {mode} {path}\n")
    except BaseException:  # an exception here would fail the open itself
        pass


if _LOG:
    try:
        _write(f"{os.getpid()} start {os.getppid()} {repr(list(getattr(sys, 'orig_argv', sys.argv)))}\n")
    except OSError:
        pass
    sys.addaudithook(_hook)
'''

VERIFY = r'''
import sys
from pathlib import Path
from common.corpora import read_corpus
import simulations.cli
print("CLI", simulations.cli.__file__)
for kind, root in (("iemocap", sys.argv[1]), ("librispeech", sys.argv[2])):
    scan = read_corpus(Path(root), kind)
    print("SCAN", kind, len(scan.utterances))
'''

CLI = "import sys, simulations.cli as c; print('CLI', c.__file__, flush=True); sys.argv[0] = 'fedser'; c.main()"


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def toml_dump(data: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer (scalars, arrays, nested tables): enough for study configs."""
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    out = ([f"[{prefix}]"] if prefix and lines else []) + lines
    for k, v in data.items():
        if isinstance(v, dict):
            out.append(toml_dump(v, f"{prefix}.{json.dumps(k)}" if prefix else json.dumps(k)))
    return "\n".join(x for x in out if x) + "\n"


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_log(path: Path) -> tuple[dict[int, tuple[int, list[str]]], list[tuple[int, str, str, str]]]:
    """(pid -> (ppid, argv)) and the (pid, kind, mode, path) events of one log."""
    procs: dict[int, tuple[int, list[str]]] = {}
    events = []
    if not path.exists():
        return procs, events
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        pid, kind, rest = line.split(" ", 2)
        if kind == "start":
            ppid, argv = rest.split(" ", 1)
            try:
                procs[int(pid)] = (int(ppid), list(eval(argv, {})))  # our own repr of a list of str
            except SyntaxError:
                procs[int(pid)] = (int(ppid), [argv])
        else:
            mode, p = rest.split(" ", 1)
            events.append((int(pid), kind, mode, p))
    return procs, events


def process_kind(pid: int, root: int, procs: dict[int, tuple[int, list[str]]]) -> str:
    if pid == root:
        return "study process"
    argv = " ".join(procs.get(pid, (0, ["?"]))[1])
    for needle, name in (("spawn_main", "pool worker"), ("resource_tracker", "mp tracker"), ("default_worker.py", "ray worker"),
                         ("flwr-serverapp", "serverapp"), ("flwr-simulation", "simulation"),
                         ("flower-superexec", "superexec"), ("flower-superlink", "superlink"),
                         ("flwr ", "flwr cli"), ("/ray/", "ray (other)")):
        if needle in argv:
            return name
    return "other"


def run_cli(args: list[str], *, python: str, repo: Path, env: dict[str, str], log: Path,
            timeout: float) -> tuple[float, str, int]:
    """One ``fedser`` command; (seconds, CLI file it imported, study pid). Exits with a message on failure."""
    start = time.perf_counter()
    out_path = log.with_suffix(".out")
    with out_path.open("w") as out:
        proc = subprocess.Popen([python, "-c", CLI, *args], cwd=repo, env={**env, "FEDSER_IO_LOG": str(log)},
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            rc = proc.wait(timeout)
        except BaseException:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            sweep(log)
            raise
    seconds = time.perf_counter() - start
    text = out_path.read_text(errors="replace")
    if rc != 0:
        sweep(log)
        sys.exit(f"study_io: `fedser {' '.join(args)}` failed (exit {rc}; logs and work_dir kept in "
                 f"{log.parent}); its output:\n{text[-4000:]}")
    cli = next((line.split(" ", 1)[1] for line in text.splitlines() if line.startswith("CLI ")), "?")
    return seconds, cli, proc.pid


def leftovers(log: Path) -> dict[int, str]:
    """Live processes whose environment carries this run's FEDSER_IO_LOG (they are ours): pid -> command."""
    tag = f"FEDSER_IO_LOG={log}".encode()
    found = {}
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if tag in env.read_bytes().split(b"\0"):
                state = (env.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    cmd = (env.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    found[int(env.parent.name)] = cmd.strip()[:160]
        except (OSError, IndexError):
            continue
    return found


def sweep(log: Path, grace: float = 10.0) -> list[str]:
    """End (by pid) what this run started and left running after ``grace`` seconds; returns those."""
    deadline = time.monotonic() + grace
    while (left := leftovers(log)) and time.monotonic() < deadline:
        time.sleep(0.5)  # processes still on their way out are not leftovers
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in leftovers(log):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and leftovers(log):
            time.sleep(0.3)
    return [f"{pid} ({cmd})" for pid, cmd in left.items()]


def verify_markers(python: str, repo: Path, env: dict[str, str], tmp: Path, work_dir: Path) -> str:
    """One scan of each corpus under the hook: each marker must be opened exactly once."""
    iemocap = sorted(work_dir.glob("corpora/*/IEMOCAP_full_release"))
    libri = sorted(work_dir.glob("corpora/*/LibriSpeech"))
    if not iemocap or not libri:
        return "marker check skipped (no embedded synthetic corpora under work_dir/corpora)"
    log = tmp / "verify.log"
    res = subprocess.run([python, "-c", VERIFY, str(iemocap[0]), str(libri[0])], cwd=repo,
                         env={**env, "FEDSER_IO_LOG": str(log)}, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        return f"marker check FAILED to run: {res.stderr.strip().splitlines()[-1:]}"
    _, events = read_log(log)
    counts = {k: Counter(p for _, kind, m, p in events if kind == k and m == "r") for k in ("emo", "trans")}
    bad = [f"{k}: {dict(c)}" for k, c in counts.items() if not c or set(c.values()) != {1}]
    if bad:
        return "marker check FAILED (each file should be opened once per scan): " + "; ".join(bad)
    return (f"marker check ok: one scan opens each of {len(counts['emo'])} EmoEvaluation and "
            f"{len(counts['trans'])} trans.txt files exactly once")


def summarize(log: Path, root_pid: int, cache_dir: str) -> tuple[dict[str, int], dict[str, dict[str, int]], dict]:
    procs, events = read_log(log)
    reads = [(pid, kind, p) for pid, kind, mode, p in events if mode == "r"]
    emo = sorted({p for _, k, p in reads if k == "emo"})
    trans = sorted({p for _, k, p in reads if k == "trans"})
    marker = {"emo": emo[0] if emo else None, "trans": trans[0] if trans else None}

    def metric(pid: int, kind: str, p: str) -> str | None:
        if kind == "ckpt":
            return "checkpoint reads"
        if kind == "emo" and p == marker["emo"]:
            return "labeled-corpus scans"
        if kind == "trans" and p == marker["trans"]:
            return "pre-training corpus scans"
        if kind == "feat":
            return "feature-cache reads"
        if kind == "wav":
            return "wav opens (python)"
        return None

    totals: Counter[str] = Counter()
    per_kind: dict[str, Counter[str]] = defaultdict(Counter)
    pids_by_kind: dict[str, set[int]] = defaultdict(set)
    for pid in procs:
        pids_by_kind[process_kind(pid, root_pid, procs)].add(pid)
    for pid, kind, p in reads:
        m = metric(pid, kind, p)
        if m:
            totals[m] += 1
            per_kind[process_kind(pid, root_pid, procs)][m] += 1
    totals["distinct wavs opened"] = len({p for _, k, p in reads if k == "wav"})
    for name, pids in pids_by_kind.items():
        per_kind[name]["distinct wavs opened"] = len({p for pid, k, p in reads if k == "wav" and pid in pids})
    # Federated runs: Ray processes name their session folder after the pid that called ray.init
    # (the flwr-simulation process); each simulation follows the `flwr run` of its regime.
    regime_of_sim: dict[int, str] = {}
    regime = "?"
    for pid, (_ppid, argv) in procs.items():  # in log (start) order
        if any(a.endswith(".toml") and "/run-" in a for a in argv) and "run" in argv:
            regime = next(a for a in argv if "/run-" in a).rsplit("/run-", 1)[1].removesuffix(".toml")
        elif process_kind(pid, root_pid, procs) == "simulation":
            regime_of_sim[pid] = regime
    by_run: dict[str, Counter[str]] = defaultdict(Counter)
    for pid, kind, p in reads:
        m = metric(pid, kind, p)
        argv = " ".join(procs.get(pid, (0, []))[1])
        sim = pid if pid in regime_of_sim else next(
            (s for s in regime_of_sim if f"_{s}/" in argv or argv.endswith(f"_{s}")), None)
        if m and sim is not None:
            by_run[f"{regime_of_sim[sim]} ({process_kind(pid, root_pid, procs)})"][m] += 1
    emo_files = len(emo)
    code = sorted({str(Path(p).parent).removesuffix("/__pycache__") for _, k, _m, p in events if k == "code"})
    info = {"processes": len(procs), "kinds": {k: len(v) for k, v in pids_by_kind.items()}, "code": code,
            "markers": marker, "sims": sorted(regime_of_sim), "by_run": {k: dict(v) for k, v in by_run.items()},
            "emo": (sum(1 for _, k, _p in reads if k == "emo"), emo_files)}
    return dict(totals), {k: dict(v) for k, v in per_kind.items()}, info


METRICS = ("checkpoint reads", "labeled-corpus scans", "pre-training corpus scans", "feature-cache reads",
           "wav opens (python)", "distinct wavs opened")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=HERE, help="checkout whose code runs (default: this one)")
    ap.add_argument("--work-dir", type=Path, help="study work_dir (default: a temporary folder, removed)")
    ap.add_argument("--config", type=Path, help="study TOML instead of the fast demo config")
    ap.add_argument("--python", default=str(HERE / ".venv" / "bin" / "python") if (HERE / ".venv").is_dir()
                    else sys.executable, help="interpreter with fedser's dependencies (default: this venv's)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per fedser command")
    ap.add_argument("--keep", action="store_true", help="keep the logs and the temporary work_dir")
    args = ap.parse_args()

    repo = args.repo.resolve()
    if not (repo / "simulations" / "cli.py").is_file():
        sys.exit(f"study_io: {repo} has no simulations/cli.py; --repo must be a fedser checkout")
    tmp = Path(tempfile.mkdtemp(prefix="study-io-"))
    work_dir = (args.work_dir or tmp / "work").resolve()
    data = tomllib.loads(args.config.read_text()) if args.config else FAST
    if args.config and not args.work_dir and "work_dir" in data:
        work_dir = (repo / data["work_dir"]).resolve()
    data = merge(data, {"work_dir": str(work_dir)})
    cache_dir = str((repo / data.get("features", {}).get("cache_dir", work_dir / "cache" / "features")).resolve())
    pretrained = data.get("model", {}).get("pretrained") or work_dir / "checkpoints" / "pretrained.pt"
    ckpt = str((repo / Path(pretrained).expanduser()).resolve())
    config = tmp / "study.toml"
    config.write_text(toml_dump(data))
    (tmp / "site").mkdir()
    (tmp / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k not in ("FEDSER_IO_LOG", "RAY_ADDRESS")}
    env.update(PYTHONPATH=os.pathsep.join([str(tmp / "site"), str(repo), *filter(None, [env.get("PYTHONPATH")])]),
               FEDSER_IO_CACHE=cache_dir + "/", FEDSER_IO_CKPT=ckpt, PYTHONUNBUFFERED="1")

    started = time.time()
    print(f"repo {repo} (commit {git_head(repo)}), python {args.python}, work_dir {work_dir}", flush=True)
    try:
        pre_s, pre_cli, pre_pid = run_cli(["pretrain", str(config)], python=args.python, repo=repo, env=env,
                                          log=tmp / "pretrain.log", timeout=args.timeout)
        check = verify_markers(args.python, repo, env, tmp, work_dir)
        print(f"pretrain: {pre_s:.0f} s; {check}", flush=True)
        study_s, study_cli, study_pid = run_cli(["study", str(config)], python=args.python, repo=repo, env=env,
                                                log=tmp / "study.log", timeout=args.timeout)
    finally:
        left = sweep(tmp / "study.log") + sweep(tmp / "pretrain.log")

    pre, _, _ = summarize(tmp / "pretrain.log", pre_pid, cache_dir)
    tot, per_kind, info = summarize(tmp / "study.log", study_pid, cache_dir)
    kinds = [k for k in ("study process", "pool worker", "superlink", "superexec", "serverapp", "simulation", "ray worker",
                         "flwr cli", "ray (other)", "other") if k in info["kinds"]]
    active = [k for k in kinds if any(per_kind.get(k, {}).values())]
    # What ran, from the config it ran (not what the fast config usually holds).
    regimes = ", ".join(data.get("regimes", ["the default regimes"]))
    folds = data.get("folds", {}).get("sessions", "all")
    print(f"\nfedser study I/O ({repo.name} @ {git_head(repo)}): regimes {regimes}; folds (test sessions) {folds}"
          + (", iteration counts cut to 1-2" if not args.config else ""))
    head = ["", "pretrain", "study (all)", *active]
    rows = [[m, str(pre.get(m, 0)), str(tot.get(m, 0)), *(str(per_kind.get(k, {}).get(m, 0)) for k in active)]
            for m in METRICS]
    rows.append(["processes (pids)", "", str(info["processes"]), *(str(info["kinds"][k]) for k in active)])
    rows.append(["wall time (s)", f"{pre_s:.0f}", f"{study_s:.0f}", *([""] * len(active))])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    print(f"\nprocesses started by the study, by kind: {info['kinds']}")
    for run, counts in info["by_run"].items():
        print(f"federated run {run}: " + ", ".join(f"{m} {counts[m]}" for m in METRICS if counts.get(m)))
    opens, files = info["emo"]
    print(f"EmoEvaluation opens: {opens} over {files} files = {opens / max(files, 1):g} full scans")
    print(f"code imported from: {', '.join(info['code'])}; CLI: {study_cli}")
    print(f"markers: {info['markers']['emo']}, {info['markers']['trans']}; checkpoint: {ckpt}; "
          f"feature cache: {cache_dir}")
    print("left running after the study (ended by pid): " + ("; ".join(left) if left else "none"))
    # Ray leaves a session folder per simulation (named after the pid that called ray.init).
    ray_tmp = Path(os.environ.get("RAY_TMPDIR", tempfile.gettempdir())) / "ray"
    for pid in info["sims"]:
        for session in ray_tmp.glob(f"session_*_{pid}"):
            if session.stat().st_mtime >= started and not args.keep:
                shutil.rmtree(session, ignore_errors=True)
    latest = ray_tmp / "session_latest"
    if latest.is_symlink() and not latest.exists():  # it pointed at a session removed above
        latest.unlink(missing_ok=True)
    if args.keep:
        print(f"kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
        if args.work_dir is None and not (args.config and "work_dir" in tomllib.loads(args.config.read_text())):
            shutil.rmtree(work_dir, ignore_errors=True)


def git_head(repo: Path) -> str:
    res = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return res.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
