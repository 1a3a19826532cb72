#!/usr/bin/env python3
"""Where the time goes: a whole-machine CPU profile of workload 1 (uncontended
acquire+release pairs) of the engines benchmark, for each engine and worker
count asked, written as Markdown.

    python3 benches/profile.py [--engines raft,paxos] [--workers 1,64]
                               [--seconds 7] [--out benches/results/PROFILE.md]

It builds the benchmark if needed (`cargo bench --bench engines --no-run`),
runs `--workloads=1 --repeat=1` of one engine at one worker count, and
samples every CPU with `perf record -a` (no call graphs: self time only)
inside the measured window. Samples are split by process (the benchmark,
which is the client, and each node) and, for the busiest node (the leader
under this workload) and the client, by component: the crate a Rust symbol
belongs to, libc, RocksDB, and the kernel by what it was doing. Needs `perf`
and the right to profile every CPU (root, or kernel.perf_event_paranoid <= 0).
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The benchmark's measured window follows a 2 s warm-up after the line that
# announces the workload; sampling starts this long after that line.
WINDOW_START_S = 3.5
SAMPLE_LINE = re.compile(r"^\s*(\S.*?)\s+(\d+)\s+([0-9a-f]+)\s+(.*) \((.*)\)$")
TOP_SYMBOLS = 12

# Kernel symbols by what the kernel was doing for the process. In a virtual
# machine perf samples on a timer, so time spent with interrupts off is
# charged to the point where they are switched back on: the spin unlocks
# that end a wake-up or a context switch.
KERNEL_KINDS = [
    ("kernel: wake-ups, context switches (where interrupts come back on)", ("_raw_spin_unlock_irqrestore", "_raw_spin_unlock_irq", "finish_task_switch")),
    ("kernel: interrupts and softirqs (loopback packets, timers)", ("handle_softirqs", "irqentry_", "__do_softirq", "do_softirq", "__irq_exit", "irq_exit", "asm_", "sysvec_", "hrtimer", "__hrtimer", "tick_")),
    ("kernel: network (TCP on loopback)", ("tcp_", "ip_", "__ip", "skb", "sock", "net_", "__net", "__dev", "dev_", "inet_", "loopback", "__skb", "napi", "__tcp", "__sys_sendmsg", "__sys_recvfrom", "sk_")),
    ("kernel: wake-ups and scheduling", ("schedule", "__schedule", "futex", "__futex", "try_to_wake_up", "ttwu", "pick_next", "__switch_to", "finish_task_switch", "ep_", "do_epoll", "enqueue_", "dequeue_", "update_curr", "psi_", "select_task_rq", "__wake_up", "wake_up")),
    ("kernel: disk (fsync, ext4, virtio)", ("ext4", "jbd2", "blk_", "__blk", "bio_", "iowrite", "virtqueue", "vring", "file_write", "filemap", "__filemap", "generic_perform_write", "fsync", "__x64_sys_fdatasync", "folio")),
    ("kernel: syscall entry and exit", ("entry_SYSCALL", "syscall_", "do_syscall", "__x64_sys", "exit_to_user", "syscall_exit", "entry_", "__entry")),
]


def component(symbol, dso):
    """The component a sample's symbol belongs to."""
    if dso == "[kernel.kallsyms]":
        for kind, prefixes in KERNEL_KINDS:
            if symbol.startswith(prefixes):
                return kind
        return "kernel: other"
    name = os.path.basename(dso)
    if name.startswith("libc.so") or name.startswith("libc-"):
        if re.match(r"_?_?(int_)?(malloc|free|realloc|calloc|cfree|_int_|tcache|unlink|malloc_consolidate)", symbol):
            return "libc: malloc and free"
        if symbol.startswith(("__memmove", "__memcpy", "__memset", "memcpy", "memmove", "memset", "__memcmp", "memcmp")):
            return "libc: memcpy, memset"
        return "libc: other"
    if name.startswith(("libstdc++", "libgcc")):
        return "C++ runtime"
    if name.startswith("libm.so") or name.startswith("libm-"):
        return "libm"
    if symbol.startswith("__vdso_"):
        return "clock reads (vDSO)"
    if "rocksdb" in symbol:
        return "RocksDB"
    if symbol == "[unknown]":
        return f"unknown ({name})"
    crate = re.sub(r"^(<|&|\*|mut |dyn |const )+", "", symbol).split("::", 1)[0]
    if crate in ("std", "core", "alloc", "__rustc"):
        return "Rust std (core, alloc)"
    if crate.startswith("quorumlock"):
        return "quorumlock crates"
    if crate in ("h2", "hyper", "hyper_util", "http", "http_body", "tonic", "tower", "tower_layer", "tower_service", "axum", "bytes", "prost", "prost_types"):
        return "gRPC stack (tonic, hyper, h2, tower, prost, bytes)"
    if crate in ("tokio", "tokio_stream", "tokio_util", "mio", "futures_util", "futures_core", "futures_channel", "futures"):
        return "tokio and futures"
    if crate in ("openraft",):
        return "openraft"
    if crate in ("bincode", "serde", "serde_json"):
        return "serialisation (bincode, serde)"
    if crate in ("rustls", "ring", "aws_lc_rs", "tokio_rustls"):
        return "TLS"
    if crate in ("tracing", "tracing_core", "tracing_subscriber"):
        return "tracing"
    if crate in ("prometheus_client",):
        return "metrics"
    return f"other Rust: {crate}"


def build():
    """Builds the benchmark; its executable's path."""
    done = subprocess.run(
        ["cargo", "bench", "--bench", "engines", "--no-run"],
        cwd=REPO, capture_output=True, text=True, check=True)
    found = re.search(r"Executable .*\((.*engines-[0-9a-f]+)\)", done.stderr)
    if not found:
        sys.exit(f"profile.py: no benchmark executable in cargo's output:\n{done.stderr}")
    return found.group(1)


def children_serving(parent):
    """PIDs of the `serve` processes the benchmark started, with their node id."""
    nodes = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                args = cmdline.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"serve" in args and b"--id" in args:
            nodes[int(entry)] = args[args.index(b"--id") + 1].decode()
    return nodes


def profile_one(bench, engine, workers, seconds, scratch):
    """Runs one engine at one worker count under perf; its samples and the processes."""
    log_path = os.path.join(scratch, f"{engine}-{workers}.log")
    data = os.path.join(scratch, f"{engine}-{workers}.perf")
    with open(log_path, "w") as log:
        run = subprocess.Popen(
            [bench, "--bench", f"--systems=quorumlock-{engine}", "--workloads=1",
             f"--workers={workers}", "--repeat=1", f"--out={os.path.join(scratch, 'report')}"],
            stdout=log, stderr=subprocess.STDOUT)
    announced = f"1 uncontended, {workers} workers ..."
    while True:
        if run.poll() is not None:
            sys.exit(f"profile.py: the benchmark ended before the workload; see {log_path}")
        with open(log_path) as log:
            if announced in log.read():
                break
        time.sleep(0.1)
    nodes = children_serving(run.pid)
    time.sleep(WINDOW_START_S)
    subprocess.run(["perf", "record", "-a", "-F", "999", "-o", data, "--", "sleep", str(seconds)],
                   check=True, capture_output=True)
    if run.wait() != 0:
        sys.exit(f"profile.py: the benchmark failed; see {log_path}")
    script = subprocess.run(["perf", "script", "-i", data, "-F", "comm,pid,ip,sym,dso"],
                            capture_output=True, text=True, check=True).stdout
    samples = []
    for line in script.splitlines():
        parsed = SAMPLE_LINE.match(line)
        if parsed:
            _, pid, _, symbol, dso = parsed.groups()
            samples.append((int(pid), symbol or "[unknown]", dso))
    return samples, run.pid, nodes


def share(count, total):
    return f"{100.0 * count / total:.1f} %" if total else "0 %"


def render(engine, workers, seconds, samples, client, nodes):
    """The Markdown of one profile."""
    total = len(samples)
    by_pid = collections.Counter(pid for pid, _, _ in samples)
    busiest = max(nodes, key=lambda pid: by_pid[pid]) if nodes else None
    lines = [f"### quorumlock-{engine}, {workers} worker{'s' if workers != 1 else ''}", ""]
    lines.append(f"{total} samples over {seconds} s on both CPUs (999 Hz each); a CPU with "
                 "nothing to run counts as idle.")
    lines.append("")
    lines.append("| process | share of samples |")
    lines.append("|---|---|")
    lines.append(f"| the benchmark (client) | {share(by_pid[client], total)} |")
    for pid, node in sorted(nodes.items(), key=lambda item: item[1]):
        role = " (busiest: the leader)" if pid == busiest else ""
        lines.append(f"| node {node}{role} | {share(by_pid[pid], total)} |")
    others = total - by_pid[client] - by_pid[0] - sum(by_pid[pid] for pid in nodes)
    lines.append(f"| everything else (kernel threads, other processes) | {share(others, total)} |")
    lines.append(f"| idle (nothing to run) | {share(by_pid[0], total)} |")
    lines.append("")
    for title, pid in (("the leader", busiest), ("the client", client)):
        if pid is None:
            continue
        own = [(symbol, dso) for p, symbol, dso in samples if p == pid]
        if not own:
            continue
        components = collections.Counter(component(symbol, dso) for symbol, dso in own)
        lines.append(f"Where {title}'s CPU goes ({len(own)} samples):")
        lines.append("")
        lines.append("| component | share |")
        lines.append("|---|---|")
        for name, count in components.most_common():
            if count * 200 < len(own):
                continue
            lines.append(f"| {name} | {share(count, len(own))} |")
        rest = sum(count for count in components.values() if count * 200 < len(own))
        if rest:
            lines.append(f"| (components under 0.5 % each) | {share(rest, len(own))} |")
        lines.append("")
        if title == "the leader":
            symbols = collections.Counter(symbol for symbol, _ in own)
            lines.append(f"The leader's {TOP_SYMBOLS} busiest symbols:")
            lines.append("")
            lines.append("| symbol | share |")
            lines.append("|---|---|")
            for symbol, count in symbols.most_common(TOP_SYMBOLS):
                shown = symbol if len(symbol) <= 90 else symbol[:87] + "..."
                lines.append(f"| `{shown.replace('|', '/')}` | {share(count, len(own))} |")
            lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="raft,paxos")
    parser.add_argument("--workers", default="1,64")
    parser.add_argument("--seconds", type=int, default=7)
    parser.add_argument("--out", default=os.path.join(REPO, "benches", "results", "PROFILE.md"))
    args = parser.parse_args()
    engines = args.engines.split(",")
    if any(engine not in ("raft", "paxos") for engine in engines):
        sys.exit("profile.py: --engines takes raft and paxos")
    workers = [int(count) for count in args.workers.split(",")]
    if not 1 <= args.seconds <= 9:
        sys.exit("profile.py: --seconds must be between 1 and 9 (inside the 10 s window)")
    bench = build()
    rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip() or "unknown"
    sections = []
    with tempfile.TemporaryDirectory(prefix="quorumlock-profile-") as scratch:
        for engine in engines:
            for count in workers:
                print(f"profiling quorumlock-{engine} at {count} workers ...", file=sys.stderr)
                samples, client, nodes = profile_one(bench, engine, count, args.seconds, scratch)
                sections.append(render(engine, count, args.seconds, samples, client, nodes))
    header = [
        "# Where the time goes",
        "",
        f"Generated by `python3 benches/profile.py` on {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
        f"at git {rev}: workload 1 of the engines benchmark (uncontended acquire+release pairs, "
        "3 nodes on 127.0.0.1, heartbeat 50 ms, election timeout 300 ms, fsync on), sampled "
        f"with `perf record -a -F 999` for {args.seconds} s inside the measured window. "
        "Self time only: a symbol's share is the time spent in it, not in what it calls. "
        "Components group Rust symbols by crate, libc by function, the kernel by what it "
        "was doing.",
        "",
    ]
    with open(args.out, "w") as out:
        out.write("\n".join(header + sections).rstrip() + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
