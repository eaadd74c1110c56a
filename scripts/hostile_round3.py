"""Hostile round 3 (issue 34): about 300 runs of the real command, as a careless user would.

Not part of the test suite. Run from a checkout after ``make env``::

    .venv/bin/python scripts/hostile_round3.py /tmp/hostile3

It builds a small world (a 300-row 7x7 PNG dataset, a trained logistic regression, a run's
output set), then runs each case and counts, per group, the runs that kept the promise of
docs/safety.md: the expected exit status; on a refusal one line and no traceback; no file
of the user's (data, model, other output sets) changed unless the case writes it.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]
CLI = os.path.join(os.path.dirname(sys.executable), "sgd-influence")
COUNTS = defaultdict(lambda: [0, 0])
FAILS = []


def digest_tree(*folders):
    """Path -> SHA-256 of every file under ``folders``."""
    out = {}
    for top in folders:
        for folder, _, files in os.walk(top):
            for name in files:
                p = os.path.join(folder, name)
                with open(p, "rb") as f:
                    out[p] = hashlib.sha256(f.read()).hexdigest()
    return out


def one_line(err: str) -> bool:
    """True when a refusal's stderr is one line and no traceback."""
    lines = [x for x in err.strip().splitlines() if x.strip()]
    lines = [x for x in lines if not x.startswith(("usage:", " "))]  # argparse's usage
    return len(lines) <= 1 and "Traceback" not in err


def case(group, name, argv, ok=(0, 2), guard=(), env=None, timeout=300, check=None, **kw):
    """Run ``argv``; kept when the status is in ``ok``, a refusal is one line, the files
    under ``guard`` are unchanged (refusals) and ``check(proc)`` (if given) holds.
    """
    before = digest_tree(*guard)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, **kw)
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired:
        rc, err, proc = "timeout", "", None
    kept = rc in ok and (rc != 2 or one_line(err)) and "Traceback" not in err
    if kept and rc != 0:
        kept = digest_tree(*guard) == before
    if kept and check is not None:
        kept = bool(check(proc))
    record(group, name, kept, f"rc={rc} {err.strip()[-300:]}")
    return proc


def record(group, name, kept, detail=""):
    """Count one case of ``group``; keep its detail when the promise broke."""
    COUNTS[group][0] += 1
    COUNTS[group][1] += int(kept)
    if not kept:
        FAILS.append(f"[{group}] {name}: {detail}")


def build(world):
    """Write the small world (data, trained model, an output set) under ``world``."""
    from support.fashion_mnist import make_png_dataset
    from support.netdef import NetSpec
    from support.results import train_result

    if os.path.exists(world):
        shutil.rmtree(world)
    os.makedirs(world)
    data = make_png_dataset(os.path.join(world, "data"), 300, 200, size=7, seed=1)
    spec = NetSpec(arch="logreg", batch_size=16, lr=0.1, max_epoch=3, weight_decay=0.01)
    train_result(os.path.join(world, "result"), data, spec)
    w = {
        "root": world,
        "data": os.path.join(world, "data"),
        "train": data["train"],
        "val": data["val"],
        "model": os.path.join(world, "result", "results.nnp"),
    }
    w["run"] = [CLI, "run", "--model", w["model"], "--train", w["train"], "--val", w["val"]]
    w["run"] += ["--quiet"]
    w["base"] = os.path.join(world, "base")
    subprocess.run(w["run"] + ["--output", os.path.join(w["base"], "influence.csv")], check=True)
    subprocess.run(
        w["run"] + ["--output", os.path.join(world, "r1000", "influence.csv"), "--seed", "7"],
        check=True,
    )
    return w


def edited(w, name, changes):
    """A copy of the base influence CSV with ``changes``: row -> {column: value}."""
    src = os.path.join(w["base"], "influence.csv")
    with open(src, newline="") as f:
        rows = list(csv.reader(f))
    for r, cells in changes.items():
        for col, value in cells.items():
            rows[r][rows[0].index(col)] = value
    dst = os.path.join(w["root"], "edits", name)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(dst, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    return dst


def group_cleanse(w):
    """Cleanse with odd labels and actions written into the influence CSV."""
    g = "cleanse and actions"
    guard = (w["data"], w["base"], os.path.join(w["root"], "r1000"))
    base_csv = os.path.join(w["base"], "influence.csv")
    cl = [CLI, "cleanse", "--train", w["train"]]
    n = 0
    for label in ["abc", "99", "-1", "3.5", "1e39", "10", "nan", "inf", "", " ", "1e400"]:
        for keep_settings in (True, False):
            src = edited(w, f"e{n}.csv", {2: {"action": "relabel", "suggested_label": label}})
            if keep_settings:
                shutil.copy(
                    os.path.join(w["base"], "influence_settings.yaml"),
                    src[:-4] + "_settings.yaml",
                )
            out = os.path.join(w["root"], "cl", f"bad{n}.csv")
            case(g, f"relabel {label!r}", cl + ["--influence", src, "--output", out], (2,), guard)
            n += 1
    for label in ["0", "9", "7", " 3 "]:
        src = edited(w, f"g{n}.csv", {2: {"action": "relabel", "suggested_label": label}})
        out = os.path.join(w["root"], "cl", f"good{n}.csv")
        case(g, f"relabel {label!r}", cl + ["--influence", src, "--output", out], (0,), guard)
        n += 1
    for action in ["KEEP", "delete", "", "remove ", "relabel"]:
        src = edited(w, f"a{n}.csv", {3: {"action": action, "suggested_label": ""}})
        ok = (0,) if action == "remove " else (2,)
        out = os.path.join(w["root"], "cl", f"act{n}.csv")
        case(g, f"action {action!r}", cl + ["--influence", src, "--output", out], ok, guard)
        n += 1
    targets = {
        "another run's influence.csv": (os.path.join(w["root"], "r1000", "influence.csv"), 2),
        "another run's trials": (os.path.join(w["root"], "r1000", "influence_trials.csv"), 2),
        "another run's summary": (os.path.join(w["root"], "r1000", "influence_summary.txt"), 2),
        "another run's cleansed": (os.path.join(w["root"], "r1000", "influence_cleansed.csv"), 2),
        "own influence csv": (base_csv, 2),
        "own cleansed": (os.path.join(w["base"], "influence_cleansed.csv"), 0),
        "the training csv": (w["train"], 2),
        "image folder": (os.path.join(w["data"], "train", "x.csv"), 2),
        "a folder": (w["base"], 2),
        "a .txt": (os.path.join(w["root"], "cl", "x.txt"), 2),
        "new": (os.path.join(w["root"], "cl", "new.csv"), 0),
        "new again": (os.path.join(w["root"], "cl", "new.csv"), 0),
    }
    for name, (out, rc) in targets.items():
        g_guard = guard if rc == 2 else (w["data"], os.path.join(w["root"], "r1000"))
        case(g, name, cl + ["--influence", base_csv, "--output", out], (rc,), g_guard)
    for extra, rc in [
        (["--remove", "0"], 0), (["--remove", "1"], 0), (["--remove", "299"], 0),
        (["--remove", "300"], 2), (["--remove", "-1"], 2), (["--remove", "abc"], 2),
        (["--remove", "1e9"], 2), (["--remove-ratio", "0"], 0), (["--remove-ratio", "0.5"], 0),
        (["--remove-ratio", "1"], 2), (["--remove-ratio", "-0.1"], 2),
        (["--remove-ratio", "nan"], 2), (["--remove", "1", "--remove-ratio", "0.1"], 2),
    ]:  # fmt: skip
        out = os.path.join(w["root"], "cl", f"rm{n}.csv")
        case(g, " ".join(extra), cl + ["--influence", base_csv, "--output", out] + extra, (rc,),
             (w["data"], w["base"]))  # fmt: skip
        n += 1
    src = edited(w, "allremove.csv", {r: {"action": "remove"} for r in range(1, 301)})
    out = os.path.join(w["root"], "cl", "all.csv")
    case(g, "every row remove", cl + ["--influence", src, "--output", out], (2,), guard)
    mism = os.path.join(w["root"], "edits", "short.csv")
    with open(base_csv) as f, open(mism, "w") as o:
        o.writelines(f.readlines()[:100])
    case(g, "influence of another size", cl + ["--influence", mism, "--output", out], (2,), guard)
    # run writing into another set's names
    for out in [os.path.join(w["base"], "influence_cleansed.csv"),
                os.path.join(w["base"], "influence_trials.csv")]:  # fmt: skip
        case(g, f"run --output {os.path.basename(out)}", w["run"] + ["--output", out], (2,),
             guard)  # fmt: skip
    thumbs_user = os.path.join(w["root"], "tu")
    os.makedirs(thumbs_user, exist_ok=True)
    with open(os.path.join(thumbs_user, "influence_cleansed.csv"), "w") as f:
        f.write("mine\n")
    case(g, "user file at cleansed name", w["run"] + ["--output", os.path.join(thumbs_user,
         "influence.csv")], (2,), guard + (thumbs_user,))  # fmt: skip


class Peer:
    """A loopback TCP peer that accepts and then misbehaves, for the cluster cases."""

    def __init__(self, greeting=b""):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.address = f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        self.greeting, self.conns, self.done = greeting, [], threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        """Accept connections until closed."""
        while not self.done.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(c)
            if self.greeting:
                c.sendall(self.greeting)

    def close(self):
        """Stop serving and close the socket."""
        self.done.set()
        self.sock.close()


def free_port():
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dask(workers):
    """Start a loopback Dask scheduler and ``workers`` workers; return the processes."""
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=ROOT)
    logs = open(os.devnull, "w")  # noqa: SIM115
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], stdout=logs, stderr=logs, env=env)]  # fmt: skip
    if workers:
        procs.append(subprocess.Popen([dask, "worker", address, "--nworkers", str(workers),
                                       "--nthreads", "1", "--no-dashboard"], stdout=logs,
                                      stderr=logs, env=env))  # fmt: skip
    import distributed

    with distributed.Client(address, timeout=30) as c:
        if workers:
            c.wait_for_workers(workers, timeout=60)
    return address, procs


def stop(procs):
    """Terminate ``procs`` and wait for them."""
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def group_cluster(w):
    """Cluster addresses that are silent, or speak SSH, HTTP or junk, and real Dask ones."""
    g = "cluster"
    guard = (w["data"], w["base"])
    out = os.path.join(w["root"], "clu", "influence.csv")
    silent, ssh = Peer(), Peer(b"SSH-2.0-OpenSSH_9.2\r\n")
    http = Peer(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    junk = Peer(b"\xff" * 64)
    addresses = [silent.address, ssh.address, http.address, junk.address,
                 silent.address.replace("tcp://", ""), "http://127.0.0.1:8786",
                 "tls://127.0.0.1:8786", "inproc://x", "ucx://127.0.0.1:8786", "ws://h:1",
                 "tcp://127.0.0.1:1", "tcp://127.0.0.1:0", "tcp://127.0.0.1:99999",
                 "tcp://nohost.invalid:8786", "tcp://", "tcp://127.0.0.1", "", " ",
                 "tcp://[::1]:1", "127.0.0.1:abc"]  # fmt: skip
    for a in addresses:
        case(g, f"--cluster {a!r}", w["run"] + ["--output", out, "--cluster", a], (2,), guard,
             timeout=120)  # fmt: skip
    for delay in (1.0, 2.0, 4.0):
        proc = subprocess.Popen(w["run"] + ["--output", out, "--cluster", silent.address],
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
            kept = proc.returncode == 130 and one_line(err)
        except subprocess.TimeoutExpired:
            proc.kill()
            kept, err = False, "no exit"
        record(g, f"Ctrl-C after {delay}s on a silent port", kept, err)
    for p in (silent, ssh, http, junk):
        p.close()
    address, procs = start_dask(0)
    try:
        case(g, "scheduler without workers", w["run"] + ["--output", out, "--cluster", address],
             (2,), guard, timeout=120)  # fmt: skip
    finally:
        stop(procs)
    address, procs = start_dask(2)
    try:
        here = os.path.join(w["root"], "clu_here", "influence.csv")
        subprocess.run(w["run"] + ["--output", here, "--trials", "2"], check=True)
        for k in range(3):
            there = os.path.join(w["root"], f"clu_there{k}", "influence.csv")
            case(g, f"cluster run {k} equals local", w["run"] + ["--output", there, "--trials",
                 "2", "--cluster", address], (0,), guard, timeout=300,
                 check=lambda p, t=there: open(t).read() == open(here).read())  # fmt: skip
        proc = subprocess.Popen(w["run"][:-1] + ["--output", out, "--trials", "3", "--epochs",
                                "40", "--cluster", address], stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
        seen = ""
        t0 = time.monotonic()
        while "trial" not in seen and time.monotonic() - t0 < 120 and proc.poll() is None:
            seen += proc.stderr.readline()
        procs[0].kill()
        _, err = proc.communicate(timeout=200)
        errs = [x for x in err.splitlines() if "error" in x]
        kept = proc.returncode == 2 and len(errs) == 1 and "lost" in errs[0]
        record(g, "scheduler killed mid-run", kept and "Traceback" not in err, err[-300:])
    finally:
        stop(procs)


def group_concurrency(w):
    """Many cleanses at once beside one influence CSV."""
    g = "concurrency"
    base_csv = os.path.join(w["base"], "influence.csv")
    for rnd in range(3):
        folder = os.path.join(w["root"], f"lg{rnd}")
        procs = [subprocess.Popen([CLI, "cleanse", "--influence", base_csv, "--train", w["train"],
                                   "--output", os.path.join(folder, f"a{i}.csv")],
                                  stderr=subprocess.PIPE, text=True) for i in range(10)]  # fmt: skip  # noqa: E501
        for i, p in enumerate(procs):
            _, err = p.communicate(timeout=300)
            record(g, f"round {rnd} cleanse {i}", p.returncode == 0 and one_line(err), err)
        import json

        with open(os.path.join(folder, ".sgd_influence_written.json")) as f:
            listed = json.load(f)["files"]
        record(g, f"round {rnd} ledger lists all 10", len(listed) == 10, str(sorted(listed)))
        record(g, f"round {rnd} no lock left",
               not os.path.exists(os.path.join(folder, ".sgd_influence_ledger.lock")))  # fmt: skip
    out = os.path.join(w["root"], "same", "influence.csv")
    procs = [subprocess.Popen(w["run"] + ["--output", out, "--seed", str(i)],
                              stderr=subprocess.PIPE, text=True) for i in range(4)]  # fmt: skip
    for i, p in enumerate(procs):
        _, err = p.communicate(timeout=300)
        record(g, f"same output {i}", p.returncode in (0, 2) and one_line(err), err)
    from sgd_influence_plugin import ownership

    names = ["influence.csv", "influence_summary.txt", "influence_settings.yaml"]
    consistent = all(ownership.written_by_tool(os.path.join(os.path.dirname(out), n))
                     for n in names)  # fmt: skip
    record(g, "same output: the set on disk is the ledger's", consistent)
    rerun = subprocess.run(w["run"] + ["--output", out], capture_output=True, text=True)
    record(g, "same output: rerun replaces it", rerun.returncode == 0, rerun.stderr)


def group_inputs(w):
    """Malformed and borderline inputs, batch sizes and row counts."""
    g = "inputs"
    guard = (w["data"], w["base"])
    lines = open(w["train"]).read().splitlines(keepends=True)
    head, rows = lines[0], lines[1:]
    out = lambda k: os.path.join(w["root"], "in", f"o{k}", "influence.csv")  # noqa: E731
    k = 0

    def make(name, text):
        p = os.path.join(w["data"], name)
        with open(p, "w", newline="") as f:
            f.write(text)
        return p

    for n, extra, rc in [(0, [], 2), (1, [], 2), (2, [], 2), (5, [], 2), (15, [], 2),
                         (16, [], 0), (17, [], 0), (50, [], 0), (99, [], 0), (100, [], 0),
                         (2, ["--batch-size", "2"], 0), (1, ["--batch-size", "1"], 2),
                         (10, ["--batch-size", "10"], 0), (10, ["--batch-size", "11"], 2),
                         (10, ["--batch-size", "0"], 2), (10, ["--batch-size", "-3"], 2)]:  # fmt: skip  # noqa: E501
        t = make(f"t{k}.csv", head + "".join(rows[:n]))
        argv = [CLI, "run", "--model", w["model"], "--train", t, "--val", w["val"], "--quiet"]

        def no_rec(p, o=out(k), n=n):  # noqa: B008 (bound per case on purpose)
            if p.returncode != 0 or n >= 100:
                return True
            return "remove 0 of" in open(o[:-4] + "_summary.txt").read()

        case(g, f"{n} train rows {extra}", argv + ["--output", out(k)] + extra, (rc,), guard,
             check=no_rec)  # fmt: skip
        k += 1
    vlines = open(w["val"]).read().splitlines(keepends=True)
    for n, rc in [(0, 2), (1, 0), (10, 0), (50, 0), (199, 0), (200, 0)]:
        v = make(f"v{k}.csv", vlines[0] + "".join(vlines[1 : n + 1]))
        argv = [CLI, "run", "--model", w["model"], "--train", w["train"], "--val", v, "--quiet"]
        case(g, f"{n} val rows", argv + ["--output", out(k)], (rc,), guard)
        k += 1
    label_rows = [r.rsplit(",", 1)[0] for r in rows]
    variants = {
        "BOM": ("\ufeff" + head + "".join(rows), 0),
        "CRLF": ((head + "".join(rows)).replace("\n", "\r\n"), 0),
        "empty": ("", 2),
        "header only": (head, 2),
        "no label column": ("x:image\n" + "\n".join(label_rows) + "\n", 2),
        "label abc": (head + rows[0].rsplit(",", 1)[0] + ",abc\n" + "".join(rows[1:]), 2),
        "label -1": (head + rows[0].rsplit(",", 1)[0] + ",-1\n" + "".join(rows[1:]), 2),
        "label 10": (head + rows[0].rsplit(",", 1)[0] + ",10\n" + "".join(rows[1:]), 2),
        "label 3.5": (head + rows[0].rsplit(",", 1)[0] + ",3.5\n" + "".join(rows[1:]), 2),
        "label 1e39": (head + rows[0].rsplit(",", 1)[0] + ",1e39\n" + "".join(rows[1:]), 2),
        "missing image": (head + "train/nope.png,1\n" + "".join(rows[1:]), 2),
        "image is a csv": (head + "train.csv,1\n" + "".join(rows[1:]), 2),
        "blank lines": (head + "\n\n" + "".join(rows) + "\n\n", 0),
        "label first": ("y:label,x:image\n" + "".join(
            f"{r.rsplit(',', 1)[1].strip()},{r.rsplit(',', 1)[0]}\n" for r in rows), 0),
        "# column": ("#note," + head + "".join("n," + r for r in rows), 0),
        "spaces in cells": (head + "".join(r.replace(",", " , ") for r in rows), 0),
        "wide": (",".join(f"x__{i}" for i in range(783)) + "\n" + "0\n" * 300, 2),
        "binary junk": ("\x00\x01\x02" * 100, 2),
        "quoted newline": (head + '"train/00\n0000.png",1\n' + "".join(rows[1:]), 2),
    }  # fmt: skip
    for name, (text, rc) in variants.items():
        t = make(f"t{k}.csv", text)
        argv = [CLI, "run", "--model", w["model"], "--train", t, "--val", w["val"], "--quiet"]
        case(g, f"train CSV {name}", argv + ["--output", out(k)], (rc,), guard)
        k += 1
    for name in ("nope.csv", w["data"], os.path.join(w["data"], "train", "000000.png")):
        argv = [CLI, "run", "--model", w["model"], "--train", name, "--val", w["val"], "--quiet"]
        case(g, f"train {os.path.basename(name)}", argv + ["--output", out(k)], (2,), guard)
        k += 1
    for model in ("nope.nnp", w["train"], w["data"]):
        argv = [CLI, "run", "--model", model, "--train", w["train"], "--val", w["val"], "--quiet"]
        case(g, f"model {os.path.basename(model)}", argv + ["--output", out(k)], (2,), guard)
        k += 1


def group_signals(w):
    """SIGINT and SIGTERM at many moments of a run; nothing half-written may remain."""
    g = "resources and signals"
    out = os.path.join(w["root"], "sig", "influence.csv")
    for signum in (signal.SIGINT, signal.SIGTERM):
        for delay in (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0, 1.5):
            if os.path.exists(os.path.dirname(out)):
                shutil.rmtree(os.path.dirname(out))
            proc = subprocess.Popen(w["run"] + ["--output", out, "--epochs", "3"],
                                    stderr=subprocess.PIPE, text=True)  # fmt: skip
            time.sleep(delay)
            proc.send_signal(signum)
            _, err = proc.communicate(timeout=120)
            if proc.returncode == 0:
                kept = os.path.exists(out) and not err.strip()
            else:
                kept = proc.returncode == 130 and one_line(err) and not os.path.exists(out)
            record(g, f"signal {signum} after {delay}s", kept, f"rc={proc.returncode} {err}")
    import resource

    for kb in (8, 20, 50):

        def limit(kb=kb):
            resource.setrlimit(resource.RLIMIT_FSIZE, (kb * 1024, kb * 1024))

        cache = os.path.join(w["root"], "sig", f"cache{kb}")
        case(g, f"ulimit -f {kb}", w["run"] + ["--output", os.path.join(w["root"], "uf",
             f"{kb}.csv"), "--cache-dir", cache], (0, 2), (w["data"], w["base"]),
             preexec_fn=limit)  # fmt: skip
    for size in (200, 230, 236, 240, 244, 246, 250, 256, 300):
        name = "a" * (size - 4) + ".csv"
        case(g, f"name of {size} bytes", w["run"] + ["--output", os.path.join(w["root"], "ln",
             name)], (0, 2), (w["data"], w["base"]),
             check=lambda p: p.returncode == 0 or ".tmp" not in p.stderr)  # fmt: skip
    links = os.path.join(w["root"], "links")
    os.makedirs(links, exist_ok=True)
    dang, loop = os.path.join(links, "dang"), os.path.join(links, "loop")
    if not os.path.lexists(dang):
        os.symlink("/nonexistent/x", dang)
        os.symlink(loop, loop)
    afile = os.path.join(links, "afile")
    open(afile, "w").close()
    full = os.path.join(links, "full")
    os.makedirs(full, exist_ok=True)
    open(os.path.join(full, "x"), "w").close()
    for cache in (dang, loop, afile, full, w["data"], ""):
        case(g, f"cache-dir {os.path.basename(cache)!r}", w["run"] + ["--output",
             os.path.join(w["root"], "cd", "i.csv"), "--cache-dir", cache], (2,),
             (w["data"], w["base"], full),
             check=lambda p: "is a file" not in p.stderr or "afile" in p.stderr)  # fmt: skip
    for where in (dang, loop):
        case(g, f"output in {os.path.basename(where)}", w["run"] + ["--output",
             os.path.join(where, "i.csv")], (2,), (w["data"], w["base"]),
             check=lambda p: "is a file" not in p.stderr)  # fmt: skip
    imm = os.path.join(w["root"], "imm")
    os.makedirs(imm, exist_ok=True)
    if subprocess.run(["chattr", "+i", imm], capture_output=True).returncode == 0:
        case(g, "immutable output folder", w["run"] + ["--output", os.path.join(imm, "i.csv")],
             (2,), (w["data"],))  # fmt: skip
        subprocess.run(["chattr", "-i", imm])


def group_install(w):
    """Installing the console plugin into odd folders."""
    g = "install-plugin"
    target = os.path.join(w["root"], "plugins")
    pkg = os.path.join(target, "_Post_Process", "_XAI", "_Image", "sgd_influence_plugin")
    entry = os.path.dirname(pkg)
    ip = [CLI, "install-plugin"]
    case(g, "fresh", ip + [target], (0,))
    case(g, "again", ip + [target], (0,))
    os.makedirs(os.path.join(pkg, "__pycache__"), exist_ok=True)
    open(os.path.join(pkg, "__pycache__", "cli.cpython-39.pyc"), "wb").close()
    case(g, "with python's cache", ip + [target], (0,))
    for name in ("my_notes.txt", "nnabla_adapter/mine.py", "extra/deep/file.bin"):
        p = os.path.join(pkg, name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write("mine")
        case(g, f"user file {name}", ip + [target], (2,), (p,),
             check=lambda r, p=p: os.path.exists(p))  # fmt: skip
        os.remove(p)
    shutil.rmtree(os.path.join(pkg, "extra"), ignore_errors=True)
    for name in ("cli.py", "nnabla_adapter/model.py", ".sgd_influence_folder", "__init__.py"):
        p = os.path.join(pkg, name)
        with open(p, "rb") as f:
            original = f.read()
        with open(p, "ab") as f:
            f.write(b"\n# edit\n")
        case(g, f"edited {name}", ip + [target], (2,), (pkg,))
        with open(p, "wb") as f:
            f.write(original)
    case(g, "restored", ip + [target], (0,))
    console = os.path.join(entry, "SGD_influence.py")
    with open(console, "w") as f:
        f.write("# the console's own\n")
    case(g, "console's own plugin present", ip + [target], (0,),
         check=lambda r: open(console).read() == "# the console's own\n")  # fmt: skip
    with open(os.path.join(entry, "SGD_Influence_Cleansing.py"), "a") as f:
        f.write("# edited entry\n")
    case(g, "edited entry script", ip + [target], (2,), (entry,))
    links = os.path.join(w["root"], "links")
    for t in ("", " ", os.path.join(links, "afile"), os.path.join(links, "dang"),
              os.path.join(links, "loop"), os.path.join(w["root"], "new_plugins")):  # fmt: skip
        case(g, f"target {t!r}", ip + [t], (0, 2),
             check=lambda r: "is a file" not in r.stderr or "afile" in r.stderr)  # fmt: skip
    imm = os.path.join(w["root"], "imm_plugins")
    os.makedirs(imm, exist_ok=True)
    if subprocess.run(["chattr", "+i", imm], capture_output=True).returncode == 0:
        case(g, "immutable plugins folder", ip + [imm], (2,),
             check=lambda r: ".sgd_influence_probe_" not in r.stderr)  # fmt: skip
        subprocess.run(["chattr", "-i", imm])
    case(g, "case-only twin", ip + [os.path.join(w["root"], "twin")], (0,))
    twin = os.path.join(w["root"], "twin", "_Post_Process", "_XAI", "_Image")
    os.rename(os.path.join(twin, "SGD_Influence_Check.py"),
              os.path.join(twin, "sgd_influence_check.py"))  # fmt: skip
    case(g, "case-only twin refused", ip + [os.path.join(w["root"], "twin")], (2,), (twin,))


def group_messages(w):
    """Every refusal is one line naming the file and the fix."""
    g = "messages"
    guard = (w["data"], w["base"])
    out = os.path.join(w["root"], "msg", "influence.csv")
    bad = [["--trials", "0"], ["--trials", "1001"], ["--lr", "-1"], ["--lr", "0"],
           ["--lr", "1e-13"], ["--lr", "abc"], ["--lr", "nan"], ["--seed", "-1"],
           ["--seed", "4294967296"], ["--thumb-size", "8"], ["--thumb-size", "1000"],
           ["--context", "cuda"], ["--context", "cudnn:x"], ["--weight-decay", "-1"],
           ["--weight-decay", "1e9"], ["--remove-ratio", "1.5"], ["--remove-ratio", "abc"],
           ["--cache", "some"], ["--jobs", "0"], ["--epochs", "0"], ["--batch-size", "0"],
           ["--label-names", "nope.txt"], ["--unknown"], ["--lr", "inf"],
           ["--weight-decay", "100"]]  # fmt: skip
    for extra in bad:
        case(g, " ".join(extra), w["run"] + ["--output", out] + extra, (2,), guard)
    outs = ["", ".", w["data"] + "/", os.path.join(w["root"], "x.txt"), w["train"], w["val"],
            w["model"], os.path.join(w["data"], "train", "o.csv"), os.path.join(w["root"],
            ".csv")]  # fmt: skip
    for o in outs:
        case(g, f"--output {o!r}", w["run"] + ["--output", o], (2,), guard)
    for argv in ([CLI], [CLI, "nope"], [CLI, "run"], [CLI, "cleanse"], [CLI, "check"],
                 [CLI, "evaluate"], [CLI, "run", "--model", w["model"]]):  # fmt: skip
        case(g, " ".join(argv[1:]) or "no command", argv, (2,), guard)
    case(g, "--help", [CLI, "run", "--help"], (0,))


def main():
    """Build the world, run every group and print the counts."""
    world = sys.argv[1] if len(sys.argv) > 1 else "/tmp/hostile3"
    w = build(world)
    for fn in (group_cleanse, group_cluster, group_concurrency, group_inputs, group_signals,
               group_install, group_messages):  # fmt: skip
        t0 = time.time()
        try:
            fn(w)
        except Exception as e:  # noqa: BLE001 - the script reports and goes on
            record(fn.__name__, "script error", False, repr(e))
        print(f"{fn.__name__}: {time.time() - t0:.0f} s", file=sys.stderr)
    total = [0, 0]
    print("| group | runs | kept the promise |\n|---|---|---|")
    for group, (n, kept) in COUNTS.items():
        print(f"| {group} | {n} | {kept} |")
        total[0] += n
        total[1] += kept
    print(f"| **all** | {total[0]} | {total[1]} |")
    print("\n".join(FAILS))


if __name__ == "__main__":
    main()
