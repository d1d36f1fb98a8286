#!/usr/bin/env python3
"""Aerospike CE and Bolide side by side on one machine, driven by the same client.

Run through bench/side-by-side.sh (it documents the options; bench/README.md the method).
Builds nothing: it is given the paths of `asd` (Aerospike CE, built as
../shared/peers/README.md says), `asbench` (Aerospike's benchmark) and a release `bolide`,
and optionally `bolide-bench` (this repository's load generator) to drive instead of asbench.

Modes:
  full   machine limits, then the unpinned section (RU,50 and RU,95 closed loop, then RU,50
         throttled to --fixed-rate), then the pinned section (each server confined to CPU 0,
         the client to CPU 1, Bolide with one worker). Within a section both servers run at
         once, each loaded once (`-w I`); the client runs alternate between them (CE first on
         odd repeats, Bolide first on even ones).
  soak   --soak-minutes of RU,50 per server (CE, then Bolide), as one-minute client runs back
         to back; after every minute the node's `statistics` and `namespace/<ns>` answers.
  limits only the machine's limits (loopback TCP, 4 KiB random device I/O through fio).

Per client run: ops/s, the client's HdrHistogram percentiles per operation kind (asbench's
cumulative `hdr:` lines, in µs), timeouts and errors, the server's CPU (utime + stime of
/proc/<pid>/stat over the run) per operation, its threads' run-queue wait
(/proc/<pid>/task/*/schedstat), the idle server's CPU over the same run, the client's own CPU
and the load average before and after. Output: <out>/<mode>.json and <out>/<mode>.md.
Standard library only.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERCENTILES = ["p50", "p90", "p99", "p99_9", "p99_99"]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- info protocol (wire §2.3)


def info(port, *cmds, timeout=5.0):
    """Sends info commands to 127.0.0.1:port; returns {command: answer}. Proto v2, type 1."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        body = "".join(c + "\n" for c in cmds).encode()
        s.sendall(struct.pack(">Q", (2 << 56) | (1 << 48) | len(body)) + body)

        def recvn(n):
            buf = b""
            while len(buf) < n:
                chunk = s.recv(n - len(buf))
                if not chunk:
                    raise ConnectionError("info: connection closed")
                buf += chunk
            return buf

        n = struct.unpack(">Q", recvn(8))[0] & ((1 << 48) - 1)
        out = {}
        for line in recvn(n).decode(errors="replace").split("\n"):
            if line:
                k, _, v = line.partition("\t")
                out[k] = v
        return out


def info_kv(answer):
    """'a=1;b=x' -> {'a': 1, 'b': 'x'} (numbers as int/float where they parse)."""
    out = {}
    for part in answer.split(";"):
        if "=" not in part:
            continue
        k, _, v = part.partition("=")
        for conv in (int, float):
            try:
                v = conv(v)
                break
            except ValueError:
                pass
        out[k] = v
    return out


def port_free(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return False
    except OSError:
        return True


# ---------------------------------------------------------------- /proc figures


def proc_cpu_s(pid):
    """utime + stime of a process (all its threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_runqueue_wait_s(pid):
    """Sum over the process's threads of the time runnable but not running, seconds."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
            except OSError:
                pass
    except OSError:
        return None
    return total / 1e9


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def cpu_pressure():
    """/proc/pressure/cpu `some avg10` (% of the last 10 s some task waited for a CPU)."""
    try:
        with open("/proc/pressure/cpu") as f:
            return float(re.search(r"some avg10=([\d.]+)", f.read()).group(1))
    except (OSError, AttributeError):
        return None


NICE = []  # ["nice", "-n", N] when --nice is given: servers and client alike


def prefix(cpus):
    return NICE + (["taskset", "-c", cpus] if cpus is not None else [])


def read_first(path, key):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[-1].split("=", 1)[-1].strip().strip('"')
    except OSError:
        pass
    return None


def machine(name):
    return {
        "name": name,
        "hostname": socket.gethostname(),
        "nproc": os.cpu_count(),
        "cpu_model": read_first("/proc/cpuinfo", "model name"),
        "mem_total": read_first("/proc/meminfo", "MemTotal"),
        "kernel": os.uname().release,
        "os": read_first("/etc/os-release", "PRETTY_NAME"),
        "loadavg_at_start": loadavg(),
    }


def git_commit():
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except OSError:
        return None


# ---------------------------------------------------------------- servers


class CE:
    """Aerospike CE through ../shared/peers/aerospike-ctl.sh, its PEERS dir a temp dir whose
    bin/asd links to the given binary (so its data and run state stay in our work dir)."""

    name = "ce"

    def __init__(self, asd, ctl, work, port):
        self.asd, self.ctl, self.port = asd, ctl, port
        self.peers = os.path.join(work, "ce-peers")
        os.makedirs(os.path.join(self.peers, "bin"), exist_ok=True)
        link = os.path.join(self.peers, "bin", "asd")
        if not os.path.exists(link):
            os.symlink(os.path.abspath(asd), link)
        self.pid = None

    def _ctl(self, verb, cpus=None):
        env = dict(os.environ, PEERS=self.peers, PORT=str(self.port))
        cmd = ["bash", self.ctl, verb]
        if verb == "start":
            cmd = prefix(cpus) + cmd
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"aerospike-ctl {verb} failed: {r.stdout}{r.stderr}")
        return r.stdout.strip()

    def start(self, cpus=None):
        shutil.rmtree(os.path.join(self.peers, f"data-{self.port}"), ignore_errors=True)
        log(self._ctl("start", cpus))
        with open(os.path.join(self.peers, "run", str(self.port), "asd.pid")) as f:
            self.pid = int(f.read())
        if cpus is not None:
            subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(self.pid)], capture_output=True, check=True)
        self.version = info(self.port, "build")["build"]

    def stop(self):
        if self.pid is not None:
            log(self._ctl("stop"))
            self.pid = None
        shutil.rmtree(os.path.join(self.peers, f"data-{self.port}"), ignore_errors=True)

    def log_path(self):
        return os.path.join(self.peers, "run", str(self.port), "asd.log")


class Bolide:
    """`bolide serve` with its own config and data dir under the work dir, ended by its pid."""

    name = "bolide"

    def __init__(self, binary, work, port, extra_config):
        self.binary, self.port, self.extra = binary, port, extra_config
        self.dir = os.path.join(work, "bolide")
        self.proc = None
        self.pid = None
        self.log_lines = []

    def start(self, cpus=None, workers=None, total_file_bytes=4 << 30):
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        workers = workers or len(os.sched_getaffinity(0))
        cfg = (f'listen = "127.0.0.1:{self.port}"\n'
               f'data_dir = "{self.dir}/data"\n'
               f"workers = {workers}\n"
               f"shard_file_bytes = {total_file_bytes // workers}\n")
        if self.extra:
            with open(self.extra) as f:
                cfg += f.read()
        self.config = cfg
        with open(os.path.join(self.dir, "bolide.toml"), "w") as f:
            f.write(cfg)
        cmd = prefix(cpus) + [os.path.abspath(self.binary), "serve", "--config", "bolide.toml"]
        self.logf = open(os.path.join(self.dir, "node.log"), "w")
        self.proc = subprocess.Popen(cmd, cwd=self.dir, stdout=self.logf, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid  # nice and taskset exec the node: same pid
        for _ in range(300):
            if self.proc.poll() is not None:
                raise RuntimeError(f"bolide exited at start: {open(self.log_path()).read()[-2000:]}")
            try:
                info(self.port, "status")
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("bolide did not answer info within 30 s")
        if cpus is not None:
            subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(self.pid)], capture_output=True, check=True)
        self.version = info(self.port, "build").get("build")

    def stop(self):
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.logf.close()
            self.log_lines = [l.rstrip() for l in open(self.log_path()) if re.search(r"WARN|ERROR|panic", l)]
            self.proc = self.pid = None
        shutil.rmtree(os.path.join(self.dir, "data"), ignore_errors=True)

    def log_path(self):
        return os.path.join(self.dir, "node.log")


# ---------------------------------------------------------------- clients


def parse_asbench(text):
    """asbench -L output -> {ops: {read|write: {count, min_us, max_us, p50_us..}}, elapsed_s,
    timeouts, errors, per_second_total: [...]}. The `hdr:` lines are cumulative over the stage:
    the last one of each kind is the run's total."""
    hdr = {}
    elapsed = 0
    timeouts = errors = 0
    per_s = []
    for line in text.splitlines():
        m = re.match(r"hdr: (\w+)\s+\S+ (\d+), (\d+), (\d+), (\d+), (.*)$", line)
        if m:
            kind = m.group(1)
            vals = [int(x) for x in m.group(6).split(",")]
            elapsed = max(elapsed, int(m.group(2)))
            hdr[kind] = {"count": int(m.group(3)), "min_us": int(m.group(4)), "max_us": int(m.group(5)),
                         **{f"{p}_us": v for p, v in zip(PERCENTILES, vals)}}
            continue
        m = re.search(r"total\(tps=(\d+) .*timeouts=(\d+) errors=(\d+)\)", line)
        if m:
            per_s.append(int(m.group(1)))
            timeouts += int(m.group(2))
            errors += int(m.group(3))
    return {"ops": hdr, "elapsed_s": elapsed, "timeouts": timeouts, "errors": errors, "per_second_total": per_s}


def parse_bolide_bench(path):
    with open(path) as f:
        doc = json.load(f)
    p = doc["phases"][-1]
    ops = {}
    for kind, k in p["ops"].items():
        lat = k["latency"]
        ops["write" if kind in ("update", "insert") else kind] = {
            "count": k["ok"], "min_us": lat.get("min_us"), "max_us": lat.get("max_us"),
            **{f"{q}_us": lat.get(f"{q}_us") for q in PERCENTILES}}
    return {"ops": ops, "elapsed_s": p["measured_s"], "timeouts": 0,
            "errors": p["failed"], "per_second_total": [s["ok_per_s_total"] for s in p["series"]]}


class Client:
    def __init__(self, a):
        self.a = a
        self.kind = a.client
        self.binary = a.asbench if self.kind == "asbench" else a.bolide_bench
        if not self.binary:
            sys.exit(f"--client {self.kind} needs its binary's path")

    def command(self, port, workload, duration, rate, cpus, json_out):
        a = self.a
        if self.kind == "asbench":
            cmd = [self.binary, "-h", "127.0.0.1", "-p", str(port), "-n", a.namespace, "-s", "testset",
                   "-k", str(a.keys), "-o", a.object, "-w", workload, "-z", str(a.threads), "-L"]
            if workload != "I":
                cmd += ["-t", str(duration)]
            if rate:
                cmd += ["-g", str(rate)]
        else:
            cmd = [self.binary, "-h", f"127.0.0.1:{port}", "-n", a.namespace, "-s", "testset",
                   "-k", str(a.keys), "-o", a.object, "-w", workload, "-c", str(a.threads),
                   "--key-dist", "uniform", "--quiet", "--output-json", json_out]
            if cpus is not None:
                cmd += ["-z", str(len(cpus.split(",")))]
            if workload != "I":
                cmd += ["-t", str(duration)]
            if rate:
                cmd += ["-g", str(rate)]
        return prefix(cpus) + cmd


def run_client(client, server, other, workload, duration, rate, cpus, logs, tag):
    """One client run against `server`, measured around it."""
    json_out = os.path.join(logs, f"{tag}.bolide-bench.json")
    cmd = client.command(server.port, workload, duration, rate, cpus, json_out)
    log(f"{tag}: {' '.join(cmd)}")
    before = {"cpu": proc_cpu_s(server.pid), "rq": proc_runqueue_wait_s(server.pid),
              "other": proc_cpu_s(other.pid) if other and other.pid else None, "load": loadavg(),
              "psi": cpu_pressure()}
    t0 = time.monotonic()
    with open(os.path.join(logs, f"{tag}.log"), "w+") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    wall = time.monotonic() - t0
    after = {"cpu": proc_cpu_s(server.pid), "rq": proc_runqueue_wait_s(server.pid),
             "other": proc_cpu_s(other.pid) if other and other.pid else None, "load": loadavg(),
             "psi": cpu_pressure()}
    res = parse_asbench(text) if client.kind == "asbench" else parse_bolide_bench(json_out)
    ops = sum(k["count"] for k in res["ops"].values())
    # asbench's elapsed seconds are whole seconds: fine for -t runs, coarse for a load phase.
    elapsed = wall if workload == "I" else (res["elapsed_s"] or wall)
    cpu = after["cpu"] - before["cpu"]
    r = {
        "tag": tag, "server": server.name, "workload": workload, "target_rate_per_s": rate,
        "client": client.kind, "client_cpus": cpus, "command": cmd, "exit_code": p.returncode,
        "ops": ops, "elapsed_s": elapsed, "wall_s": round(wall, 3),
        "ops_per_s": round(ops / elapsed, 1) if elapsed else None,
        "latency_us": res["ops"], "timeouts": res["timeouts"], "errors": res["errors"],
        # the first and last per-second lines cover partial seconds: left out
        "per_second_ops_min_max": [min(res["per_second_total"][1:-1]), max(res["per_second_total"][1:-1])]
        if len(res["per_second_total"]) > 2 else None,
        "server_cpu_s": round(cpu, 3), "server_cpu_cores": round(cpu / wall, 3),
        "server_cpu_us_per_op": round(cpu * 1e6 / ops, 2) if ops else None,
        "server_runqueue_wait_s": round(after["rq"] - before["rq"], 3) if before["rq"] is not None else None,
        "other_server_cpu_s": round(after["other"] - before["other"], 3) if before["other"] is not None else None,
        "client_cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
        "client_cpu_us_per_op": round((ru.ru_utime + ru.ru_stime) * 1e6 / ops, 2) if ops else None,
        "loadavg_before": before["load"], "loadavg_after": after["load"],
        "cpu_pressure_some_avg10_before_after": [before["psi"], after["psi"]],
    }
    rd, wr = res["ops"].get("read", {}), res["ops"].get("write", {})
    log(f"{tag}: {r['ops_per_s']} ops/s, cpu {r['server_cpu_us_per_op']} us/op, read p99 {rd.get('p99_us')} "
        f"write p99 {wr.get('p99_us')} us, timeouts {r['timeouts']} errors {r['errors']} exit {p.returncode}")
    return r


# ---------------------------------------------------------------- machine limits


def limits(work, logs, port):
    out = {}
    # Loopback bandwidth: iperf3, one stream.
    if shutil.which("iperf3"):
        srv = subprocess.Popen(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        r = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", "5", "-J"], capture_output=True, text=True)
        srv.wait(timeout=10)
        try:
            e = json.loads(r.stdout)["end"]
            out["loopback_tcp_gbit_s"] = round(e["sum_received"]["bits_per_second"] / 1e9, 2)
            out["loopback_tcp_tool"] = "iperf3 -c 127.0.0.1 -t 5 (one stream)"
        except (ValueError, KeyError) as err:
            out["loopback_tcp_error"] = f"iperf3: {err}"
    # Loopback round trip: sockperf ping-pong if present, else a Python echo (a ceiling on
    # request/response rate per connection with no server work).
    if shutil.which("sockperf"):
        srv = subprocess.Popen(["sockperf", "server", "--tcp", "-i", "127.0.0.1", "-p", str(port + 1)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        r = subprocess.run(["sockperf", "ping-pong", "--tcp", "-i", "127.0.0.1", "-p", str(port + 1), "-t", "5",
                            "-m", "64"], capture_output=True, text=True)
        srv.terminate()
        srv.wait()
        txt = r.stdout + r.stderr
        m = re.search(r"avg-latency=([\d.]+)", txt)
        pct = {f"p{k.rstrip('0').rstrip('.')}": float(v)
               for k, v in re.findall(r"---> percentile ([\d.]+) =\s+([\d.]+)", txt)}
        out["loopback_rtt_us"] = {"tool": "sockperf ping-pong --tcp -m 64 -t 5 (half round trip, usec)",
                                  "avg": float(m.group(1)) if m else None,
                                  **{k: pct[k] for k in ("p50", "p99", "p99.9") if k in pct}}
    else:
        out["loopback_rtt_us"] = python_echo_rtt(port + 1)
    # Device: fio 4 KiB random read and write, O_DIRECT, on a file in the work dir.
    if shutil.which("fio"):
        path = os.path.join(work, "fio.dat")
        fio = {}
        for rw, qd in (("randread", 1), ("randread", 32), ("randwrite", 1), ("randwrite", 32)):
            r = subprocess.run(["fio", "--name=lim", f"--filename={path}", "--size=1G", f"--rw={rw}", "--bs=4k",
                                "--direct=1", "--ioengine=io_uring", f"--iodepth={qd}", "--time_based",
                                "--runtime=8", "--output-format=json"], capture_output=True, text=True)
            try:
                j = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
                side = j["read" if rw == "randread" else "write"]
                pc = side["clat_ns"].get("percentile", {})
                fio[f"{rw}_4k_qd{qd}"] = {"iops": round(side["iops"]), "clat_p50_us": pc.get("50.000000", 0) / 1e3,
                                         "clat_p99_us": pc.get("99.000000", 0) / 1e3}
            except (ValueError, KeyError, IndexError) as err:
                fio[f"{rw}_4k_qd{qd}"] = {"error": str(err), "stderr": r.stderr[-500:]}
        os.unlink(path) if os.path.exists(path) else None
        out["device_fio"] = fio
        out["device_fio_cmd"] = "fio --size=1G --bs=4k --direct=1 --ioengine=io_uring --runtime=8 (file in the work dir)"
    log(f"limits: {json.dumps(out)}")
    return out


def python_echo_rtt(port, n=20000):
    import threading
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(1)

    def serve():
        c, _ = ls.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            d = c.recv(64)
            if not d:
                break
            c.sendall(d)
        c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t0 = time.perf_counter()
    for _ in range(n):
        s.sendall(b"x" * 64)
        s.recv(64)
    dt = time.perf_counter() - t0
    s.close()
    ls.close()
    return {"tool": "python echo, 64 B, one connection (full round trip, usec, Python overhead included)",
            "avg": round(dt / n * 1e6, 2)}


# ---------------------------------------------------------------- summary


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rng(xs):
    xs = [x for x in xs if x is not None]
    return [min(xs), max(xs)] if xs else None


def summarize(runs):
    """Rows per (section, workload, rate): medians and ranges per server, CE/Bolide ratios per
    repeat (adjacent runs of the same repeat) and their median."""
    rows = []
    keys = []
    for r in runs:
        k = (r["section"], r["workload"], r["target_rate_per_s"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        rs = [r for r in runs if (r["section"], r["workload"], r["target_rate_per_s"]) == k]
        row = {"section": k[0], "workload": k[1], "target_rate_per_s": k[2]}
        for srv in ("ce", "bolide"):
            s = [r for r in rs if r["server"] == srv]
            row[srv] = {
                "repeats": len(s),
                "ops_per_s_median": med([r["ops_per_s"] for r in s]),
                "ops_per_s_range": rng([r["ops_per_s"] for r in s]),
                "server_cpu_us_per_op_median": med([r["server_cpu_us_per_op"] for r in s]),
                "server_cpu_us_per_op_range": rng([r["server_cpu_us_per_op"] for r in s]),
                "server_cpu_cores_median": med([r["server_cpu_cores"] for r in s]),
                "timeouts": sum(r["timeouts"] for r in s), "errors": sum(r["errors"] for r in s),
            }
            for kind in ("read", "write"):
                for p in ("p50_us", "p99_us", "p99_9_us"):
                    vals = [r["latency_us"].get(kind, {}).get(p) for r in s]
                    row[srv][f"{kind}_{p}_median"] = med(vals)
                    row[srv][f"{kind}_{p}_range"] = rng(vals)
        ratios, cpu_ratios = [], []
        for rep in sorted({r["repeat"] for r in rs}):
            ce = [r for r in rs if r["repeat"] == rep and r["server"] == "ce"]
            bo = [r for r in rs if r["repeat"] == rep and r["server"] == "bolide"]
            if ce and bo and ce[0]["ops_per_s"] and bo[0]["ops_per_s"]:
                ratios.append(round(bo[0]["ops_per_s"] / ce[0]["ops_per_s"], 3))
                if ce[0]["server_cpu_us_per_op"] and bo[0]["server_cpu_us_per_op"]:
                    cpu_ratios.append(round(bo[0]["server_cpu_us_per_op"] / ce[0]["server_cpu_us_per_op"], 3))
        row["bolide_over_ce_ops_per_repeat"] = ratios
        row["bolide_over_ce_ops_median"] = med(ratios)
        row["bolide_over_ce_cpu_per_op_per_repeat"] = cpu_ratios
        row["bolide_over_ce_cpu_per_op_median"] = med(cpu_ratios)
        rows.append(row)
    return rows


def compact_soak(soak):
    """Keeps every minute's `statistics` whole, but of `namespace/<ns>` (CE's answer is 13 KB,
    mostly config) only minute 1 whole and, later, the keys whose value changed since the
    minute before (`namespace_changed`)."""
    for mins in soak.values():
        prev = None
        for mn in mins:
            full = mn.get("namespace")
            if full is None:
                full = dict(prev or {}, **mn.get("namespace_changed", {}))
            if prev is not None:
                mn.pop("namespace", None)
                mn["namespace_changed"] = {k: v for k, v in full.items() if prev.get(k) != v}
            prev = full


SOAK_KEYS = ["cache_read_pct", "record_cache_hit_pct", "defrag_reads", "defrag_q", "write_amplification",
             "free_wblocks", "data_avail_pct", "device_queue_depth", "write_q", "writes_refused_overload",
             "cross_core_messages"]


def fmt(x, nd=0):
    if x is None:
        return "–"
    if isinstance(x, list):
        return "–".join(fmt(v, nd) for v in x)
    return f"{x:,.{nd}f}"


def markdown(doc):
    m = doc["machine"]
    lines = [f"# Side by side, {doc['mode']}: Aerospike CE vs Bolide, client {doc['params']['client']}", "",
             f"- Started {doc['started_utc']}, finished {doc.get('finished_utc')}; machine `{m['name']}` "
             f"({m['nproc']} × {m['cpu_model']}, {m['mem_total']}, kernel {m['kernel']}).",
             f"- CE: `{doc['servers'].get('ce_version')}` ({doc['binaries']['asd']}); Bolide commit "
             f"`{doc['binaries']['bolide_commit']}` ({doc['binaries']['bolide']}, build `{doc['servers'].get('bolide_version')}`).",
             f"- Client: `{doc['params']['client']}` -z/-c {doc['params']['threads']}, -k {doc['params']['keys']} "
             f"-o {doc['params']['object']}, {doc['params']['duration_s']} s per run, {doc['params']['repeats']} repeats "
             f"interleaved, nice {doc['params'].get('nice')}, autogroup nice {doc['params'].get('autogroup_nice')}. Medians, ranges in brackets; ratios taken per repeat, "
             f"then the median. Load average {' '.join(m['loadavg_at_start'])} at the start, "
             f"{' '.join(m.get('loadavg_at_end', []))} at the end.", ""]
    lim = doc.get("limits")
    if lim:
        rtt = lim.get("loopback_rtt_us", {})
        lines += ["Machine limits:", "",
                  f"- loopback TCP, one stream: {lim.get('loopback_tcp_gbit_s')} Gbit/s ({lim.get('loopback_tcp_tool')})",
                  f"- loopback latency: avg {rtt.get('avg')} µs, p50 {rtt.get('p50')}, p99 {rtt.get('p99')}, "
                  f"p99.9 {rtt.get('p99.9')} ({rtt.get('tool')})", ""]
        if lim.get("device_fio"):
            lines += [f"| fio ({lim.get('device_fio_cmd')}) | IOPS | clat p50 µs | clat p99 µs |", "|---|---:|---:|---:|"]
            for k, v in lim["device_fio"].items():
                lines.append(f"| {k} | {fmt(v.get('iops'))} | {fmt(v.get('clat_p50_us'), 1)} | {fmt(v.get('clat_p99_us'), 1)} |")
            lines.append("")
    if doc.get("summary"):
        lines += ["| section | workload | CE ops/s | Bolide ops/s | Bolide/CE | CPU µs/op CE / Bolide | "
                  "read p50 / p99 / p99.9 µs CE | read p50 / p99 / p99.9 µs Bolide | write p99 µs CE / Bolide | "
                  "timeouts+errors CE / Bolide |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in doc["summary"]:
            ce, bo = r["ce"], r["bolide"]
            wl = r["workload"] + (f" at {r['target_rate_per_s']:,}/s" if r["target_rate_per_s"] else "")

            def pct(s):
                return " / ".join(fmt(s[f"read_{p}_median"]) for p in ("p50_us", "p99_us", "p99_9_us"))

            lines.append(
                f"| {r['section']} | {wl} | {fmt(ce['ops_per_s_median'])} ({fmt(ce['ops_per_s_range'])}) | "
                f"{fmt(bo['ops_per_s_median'])} ({fmt(bo['ops_per_s_range'])}) | "
                f"{fmt(r['bolide_over_ce_ops_median'], 2)} ({fmt(rng(r['bolide_over_ce_ops_per_repeat']), 2)}) | "
                f"{fmt(ce['server_cpu_us_per_op_median'], 1)} / {fmt(bo['server_cpu_us_per_op_median'], 1)} | "
                f"{pct(ce)} | {pct(bo)} | {fmt(ce['write_p99_us_median'])} / {fmt(bo['write_p99_us_median'])} | "
                f"{ce['timeouts'] + ce['errors']} / {bo['timeouts'] + bo['errors']} |")
        lines.append("")
    if doc.get("runs"):
        lines += ["Every run, in order:", "",
                  "| # | section | workload | server | rep | ops/s | per-second min–max | CPU µs/op | server cores | "
                  "run-queue wait s | idle server CPU s | read p50 / p99 / p99.9 µs | write p99 µs | to+err | load avg, CPU PSI % |",
                  "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for i, r in enumerate(doc["runs"], 1):
            rd, wr = r["latency_us"].get("read", {}), r["latency_us"].get("write", {})
            wl = r["workload"] + (f"@{r['target_rate_per_s']}" if r["target_rate_per_s"] else "")
            lines.append(
                f"| {i} | {r['section']} | {wl} | {r['server']} | {r['repeat']} | {fmt(r['ops_per_s'])} | "
                f"{fmt(r['per_second_ops_min_max'])} | {fmt(r['server_cpu_us_per_op'], 1)} | {fmt(r['server_cpu_cores'], 2)} | "
                f"{fmt(r['server_runqueue_wait_s'], 1)} | {fmt(r['other_server_cpu_s'], 2)} | "
                f"{fmt(rd.get('p50_us'))} / {fmt(rd.get('p99_us'))} / {fmt(rd.get('p99_9_us'))} | {fmt(wr.get('p99_us'))} | "
                f"{r['timeouts'] + r['errors']} | {r['loadavg_before'][0]}→{r['loadavg_after'][0]}, "
                f"PSI {'→'.join(fmt(x, 0) for x in r['cpu_pressure_some_avg10_before_after'])} |")
        lines.append("")
    if doc.get("soak"):
        lines += ["| server | minute | ops/s | read p99 µs | write p99 µs | vs minute 1 (ops / read p99) | "
                  "CPU µs/op | to+err | load avg |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for srv, mins in doc["soak"].items():
            first = mins[0]["run"] if mins else None
            for i, mn in enumerate(mins, 1):
                r = mn["run"]
                rp99 = r["latency_us"].get("read", {}).get("p99_us")
                f99 = first["latency_us"].get("read", {}).get("p99_us")
                rel = (f"{r['ops_per_s'] / first['ops_per_s']:.2f} / {rp99 / f99:.2f}"
                       if first["ops_per_s"] and rp99 and f99 else "–")
                lines.append(f"| {srv} | {i} | {fmt(r['ops_per_s'])} | {fmt(rp99)} | "
                             f"{fmt(r['latency_us'].get('write', {}).get('p99_us'))} | {rel} | "
                             f"{fmt(r['server_cpu_us_per_op'], 1)} | {r['timeouts'] + r['errors']} | "
                             f"{r['loadavg_after'][0]} |")
        lines.append("")
        lines += ["Data-path figures after each minute (`statistics`, else `namespace/<ns>`, for CE's device "
                  "figures `storage-engine.file[0].<name>`; Aerospike's names where both have the figure):", "",
                  "| server | minute | " + " | ".join(SOAK_KEYS) + " |", "|---|---:|" + "---:|" * len(SOAK_KEYS)]
        for srv, mins in doc["soak"].items():
            ns = {}
            for i, mn in enumerate(mins, 1):
                ns = dict(ns, **mn.get("namespace", mn.get("namespace_changed", {})))
                # CE keeps per-device figures as storage-engine.file[0].<name>
                vals = [mn["statistics"].get(k, ns.get(k, ns.get(f"storage-engine.file[0].{k}", "–")))
                        for k in SOAK_KEYS]
                lines.append(f"| {srv} | {i} | " + " | ".join(str(v) for v in vals) + " |")
        lines += ["", "The whole `statistics` answer per minute is in the JSON (`soak.<server>[i].statistics`); "
                  "`namespace/<ns>` whole at minute 1, then what changed (`namespace_changed`)."]
    for k, v in doc.get("server_log_warnings", {}).items():
        if v:
            lines += [f"{k} log warnings/errors ({len(v)}; first 5):", "", *[f"    {l}" for l in v[:5]], ""]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def own_autogroup(nice):
    """With CONFIG_SCHED_AUTOGROUP every session is one scheduling entity: CPU is shared fairly
    between sessions first, and `nice` only orders threads within a session. On a machine shared
    with other sessions a pinned single-threaded server then gets a fraction of its core. A new
    session (setsid) holds only this benchmark; its autogroup nice sets its weight against the
    others (/proc/self/autogroup, sched(7))."""
    try:
        os.setsid()
    except PermissionError:  # already a process group leader: re-exec in a fresh session
        if os.environ.get("SIDE_BY_SIDE_SETSID"):
            sys.exit("setsid failed")
        os.environ["SIDE_BY_SIDE_SETSID"] = "1"
        os.execvp("setsid", ["setsid", "-w", sys.executable] + sys.argv)
    with open("/proc/self/autogroup", "w") as f:
        f.write(str(nice))
    with open("/proc/self/autogroup") as f:
        log(f"scheduler autogroup: {f.read().strip()}")


def pick_ce_port(want):
    for p in ([want] if want else []) + list(range(3100, 3197, 4)):
        if all(port_free(p + i) for i in range(4)):
            return p
    sys.exit("no free CE port block in 3100-3199")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--asd", required=True)
    ap.add_argument("--asbench")
    ap.add_argument("--bolide", required=True)
    ap.add_argument("--bolide-bench")
    ap.add_argument("--client", choices=["asbench", "bolide-bench"], default="asbench")
    ap.add_argument("--mode", choices=["full", "soak", "limits"], default="full")
    ap.add_argument("--sections", default="unpinned,fixed,pinned", help="full mode: which sections")
    ap.add_argument("--ctl", default=os.path.join(REPO, "..", "shared", "peers", "aerospike-ctl.sh"))
    ap.add_argument("--machine", default=socket.gethostname().split(".")[0])
    ap.add_argument("--out", help="default bench/results/<date>-<machine>")
    ap.add_argument("--work-dir", help="parent of the temp dir with data and raw logs (default /var/tmp)")
    ap.add_argument("--ce-port", type=int, default=0, help="default: first free block of 4 in 3100-3199")
    ap.add_argument("--bolide-port", type=int, default=3050)
    ap.add_argument("--bolide-config-extra", help="TOML appended to Bolide's generated config")
    ap.add_argument("--bolide-commit", help="default: HEAD of this repository (+-dirty)")
    ap.add_argument("--namespace", default="test")
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--object", default="B1024")
    ap.add_argument("--threads", type=int, default=16, help="asbench -z (sync threads) / bolide-bench -c")
    ap.add_argument("--duration", type=int, default=30, help="seconds per client run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workloads", default="RU,50;RU,95")
    ap.add_argument("--fixed-rate", type=int, default=20000)
    ap.add_argument("--soak-minutes", type=int, default=10)
    ap.add_argument("--soak-servers", default="ce,bolide")
    ap.add_argument("--tag", default="", help="suffix of the output file names (--tag=-run2)")
    ap.add_argument("--autogroup-nice", type=int,
                    help="run in a new session (its own scheduler autogroup) with this autogroup nice (-20..19)")
    ap.add_argument("--nice", type=int, help="run servers and client under nice -n N (e.g. -10 on a shared machine)")
    ap.add_argument("--no-limits", action="store_true", help="full mode: skip the machine limits")
    a = ap.parse_args()

    if a.autogroup_nice is not None:
        own_autogroup(a.autogroup_nice)
    if a.nice is not None:
        NICE[:] = ["nice", "-n", str(a.nice)]
    out = a.out or os.path.join(REPO, "bench", "results", f"{datetime.date.today().isoformat()}-{a.machine}")
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="side-by-side.", dir=a.work_dir or "/var/tmp")
    logs = os.path.join(work, "logs")
    os.makedirs(logs)
    log(f"work dir (data, raw logs) {work}; results to {out}")
    client = Client(a)
    ce = CE(a.asd, os.path.abspath(a.ctl), work, pick_ce_port(a.ce_port))
    bo = Bolide(a.bolide, work, a.bolide_port, a.bolide_config_extra)
    if any(not port_free(a.bolide_port + i) for i in range(len(os.sched_getaffinity(0)))):
        sys.exit(f"port {a.bolide_port} (or the next per-core ports) is in use")
    doc = {
        "bench": "side-by-side", "mode": a.mode, "started_utc": datetime.datetime.utcnow().strftime("%FT%TZ"),
        "machine": machine(a.machine), "command": sys.argv,
        "binaries": {"asd": os.path.abspath(a.asd), "asbench": a.asbench and os.path.abspath(a.asbench),
                     "bolide": os.path.abspath(a.bolide), "bolide_bench": a.bolide_bench and os.path.abspath(a.bolide_bench),
                     "bolide_commit": a.bolide_commit or git_commit()},
        "params": {k: getattr(a, k) for k in ("client", "keys", "object", "threads", "duration", "repeats",
                                              "workloads", "fixed_rate", "soak_minutes", "namespace", "nice",
                                              "autogroup_nice")},
        "servers": {"ce_port": ce.port, "bolide_port": bo.port}, "runs": [], "server_log_warnings": {},
    }
    doc["params"]["duration_s"] = a.duration
    name = a.mode + (f"-{a.client}" if a.client != "asbench" else "") + a.tag
    json_path, md_path = os.path.join(out, f"{name}.json"), os.path.join(out, f"{name}.md")

    def save():
        doc["finished_utc"] = datetime.datetime.utcnow().strftime("%FT%TZ")
        doc["machine"]["loadavg_at_end"] = loadavg()
        if doc["runs"]:
            doc["summary"] = summarize(doc["runs"])
        if doc.get("soak"):
            compact_soak(doc["soak"])
        with open(json_path, "w") as f:
            json.dump(doc, f, indent=1)
        with open(md_path, "w") as f:
            f.write(markdown(doc))

    def stop_all():
        for s in (ce, bo):
            try:
                s.stop()
            except Exception as e:  # keep stopping the other one
                log(f"stopping {s.name}: {e}")
        if bo.log_lines:
            doc["server_log_warnings"].setdefault("bolide", []).extend(bo.log_lines[:50])

    def on_signal(sig, _):
        raise KeyboardInterrupt(f"signal {sig}")

    signal.signal(signal.SIGTERM, on_signal)
    workloads = a.workloads.split(";")
    try:
        if a.mode == "limits" or (a.mode == "full" and not a.no_limits):
            doc["limits"] = limits(work, logs, 3190)
            save()
        if a.mode == "full":
            for section in ("unpinned", "pinned"):
                if section == "unpinned" and not ({"unpinned", "fixed"} & set(a.sections.split(","))):
                    continue
                if section == "pinned" and "pinned" not in a.sections.split(","):
                    continue
                srv_cpus, cli_cpus, workers = (None, None, None) if section == "unpinned" else ("0", "1", 1)
                ce.start(srv_cpus)
                bo.start(srv_cpus, workers)
                doc["servers"]["ce_version"], doc["servers"]["bolide_version"] = ce.version, bo.version
                doc["servers"][f"bolide_config_{section}"] = bo.config
                for s, o in ((ce, bo), (bo, ce)):
                    r = run_client(client, s, o, "I", 0, 0, cli_cpus, logs, f"{section}-load-{s.name}")
                    r.update(section=f"{section}-load", repeat=0)
                    doc.setdefault("loads", []).append(r)
                plan = []
                if section == "pinned" or "unpinned" in a.sections.split(","):
                    plan += [(wl, 0) for wl in workloads]
                if section == "unpinned" and "fixed" in a.sections.split(","):
                    plan += [("RU,50", a.fixed_rate)]
                for wl, rate in plan:
                    for rep in range(1, a.repeats + 1):
                        order = (ce, bo) if rep % 2 else (bo, ce)
                        for s in order:
                            o = bo if s is ce else ce
                            tag = f"{section}-{wl.replace(',', '')}{'-g' + str(rate) if rate else ''}-{s.name}-{rep}"
                            r = run_client(client, s, o, wl, a.duration, rate, cli_cpus, logs, tag)
                            r.update(section=section, repeat=rep)
                            doc["runs"].append(r)
                            save()
                stop_all()
        if a.mode == "soak":
            doc["soak"] = {}
            for sname in a.soak_servers.split(","):
                s = ce if sname == "ce" else bo
                s.start()
                doc["servers"][f"{s.name}_version"] = s.version
                r = run_client(client, s, None, "I", 0, 0, None, logs, f"soak-load-{s.name}")
                doc.setdefault("loads", []).append(r)
                mins = doc["soak"][s.name] = []
                for i in range(1, a.soak_minutes + 1):
                    r = run_client(client, s, None, "RU,50", 60, 0, None, logs, f"soak-{s.name}-min{i}")
                    stats = info(s.port, "statistics", f"namespace/{a.namespace}")
                    mins.append({"minute": i, "run": r, "statistics": info_kv(stats.get("statistics", "")),
                                 "namespace": info_kv(stats.get(f"namespace/{a.namespace}", ""))})
                    save()
                s.stop()
                if s is bo and bo.log_lines:
                    doc["server_log_warnings"]["bolide"] = bo.log_lines[:50]
    except KeyboardInterrupt as e:
        log(f"interrupted: {e}")
        doc["interrupted"] = str(e)
    finally:
        stop_all()
        save()
        shutil.rmtree(os.path.join(work, "ce-peers", f"data-{ce.port}"), ignore_errors=True)
        log(f"wrote {json_path} and {md_path}; raw logs in {logs}")


if __name__ == "__main__":
    main()
