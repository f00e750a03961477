#!/usr/bin/env python3
"""Helper for scripts/bench.sh: times one command, extracts PE sections, compares JSON, and
prints the table and JSON from the rows the script collected. Not a test; run by bench.sh.

  benchtool.py time [--stdout FILE] -- CMD...   prints "WALL_S CPU_S MAXRSS_KIB" of CMD
  benchtool.py pesections UKI DIR               writes each section's VirtualSize bytes
  benchtool.py jsoneq A B                       exit 1 (naming both) when the JSON differs
  benchtool.py row ROWS KEY=VALUE...            appends one row (samples as "w,c w,c ...")
  benchtool.py table ROWS [--json FILE]         prints the table (and writes the JSON)
"""

import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time


def cmd_time(args):
    out = "/dev/null"
    if args[:1] == ["--stdout"]:
        out, args = args[1], args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    with open(out, "wb") as f:
        t0 = time.perf_counter()
        p = subprocess.Popen(args, stdout=f, stderr=subprocess.PIPE)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"benchtool: {args[0]} exited {p.returncode}: {err.strip()[:400]}")
    print(f"{wall:.6f} {ru.ru_utime + ru.ru_stime:.6f} {ru.ru_maxrss}")


def cmd_pesections(uki, outdir):
    """VirtualSize bytes of each section (zero-filled past the raw data, as the loader does and
    the stub measures), read with this small independent PE reader."""
    data = open(uki, "rb").read()
    if data[:2] != b"MZ":
        sys.exit(f"benchtool: {uki}: no MZ")
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    if data[pe : pe + 4] != b"PE\0\0":
        sys.exit(f"benchtool: {uki}: no PE signature")
    nsec, = struct.unpack_from("<H", data, pe + 6)
    opt_size, = struct.unpack_from("<H", data, pe + 20)
    sec = pe + 24 + opt_size
    os.makedirs(outdir, exist_ok=True)
    for i in range(nsec):
        name, vsize, _va, rawsize, rawptr = struct.unpack_from("<8sIIII", data, sec + 40 * i)
        name = name.rstrip(b"\0").decode()
        body = data[rawptr : rawptr + min(vsize, rawsize)].ljust(vsize, b"\0")
        with open(os.path.join(outdir, name.lstrip(".")), "wb") as f:
            f.write(body)
        print(name)


def cmd_jsoneq(a, b):
    ja, jb = json.load(open(a)), json.load(open(b))
    if ja != jb:
        sys.exit(f"benchtool: outputs differ: {a} vs {b}")


def cmd_row(rows, kv):
    row = {}
    for item in kv:
        k, _, v = item.partition("=")
        if k.endswith("_samples"):
            row[k] = [[float(x) for x in s.split(",")] for s in v.split()]
        else:
            row[k] = v
    with open(rows, "a") as f:
        f.write(json.dumps(row) + "\n")


def med(samples, i):
    return statistics.median(s[i] for s in samples) if samples else None


def fmt(x, unit):
    if x is None:
        return "-"
    if unit == "s":
        return f"{x:.3f} s" if x >= 1 else f"{x * 1000:.0f} ms"
    if unit == "/s":
        return f"{x:,.0f}/s"
    if unit == "us":
        return f"{x:.1f} µs"
    return f"{x:g}"


def machine():
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        flags = open("/proc/cpuinfo").read()
        feats = [f for f in ("sha_ni", "avx2", "avx512f") if f" {f}" in flags]
    except OSError:
        feats = []
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "features": feats,
        "kernel": platform.release(),
    }


def cmd_table(rows_path, json_out):
    rows = [json.loads(line) for line in open(rows_path) if line.strip()]
    out = []
    print(f"{'work':<44} {'peer':<30} {'peer':>11} {'imgctl':>11} {'ratio':>7} "
          f"{'peer CPU':>9} {'imgctl CPU':>10} {'CPU ratio':>9}  target")
    for r in rows:
        unit = r.get("unit", "s")
        rec = dict(r)
        if "skipped" in r:
            print(f"{r['work']:<44} {r.get('peer', ''):<30} skipped: {r['skipped']}")
            out.append(rec)
            continue
        ps, os_ = r.get("peer_samples", []), r["ours_samples"]
        pw, ow = med(ps, 0), med(os_, 0)
        pc = med(ps, 1) if ps and len(ps[0]) > 1 else None
        oc = med(os_, 1) if os_ and len(os_[0]) > 1 else None
        ratio = ow / pw if pw else None
        cratio = oc / pc if pc and oc is not None else None
        rec.update(peer_median=pw, ours_median=ow, ratio=ratio,
                   peer_cpu_median=pc, ours_cpu_median=oc, cpu_ratio=cratio,
                   runs=len(os_))
        out.append(rec)
        rs = f"{ratio:.2f}" if ratio is not None else "-"
        if unit == "s" and ratio:
            rs += f" ({1 / ratio:.2f}x)"
        cs = f"{cratio:.2f}" if cratio is not None else "-"
        print(f"{r['work']:<44} {r.get('peer', '-'):<30} {fmt(pw, unit):>11} {fmt(ow, unit):>11} "
              f"{rs:>7} {fmt(pc, 's'):>9} {fmt(oc, 's'):>10} {cs:>9}  {r.get('target', '')}")
        if r.get("note"):
            print(f"{'':<44} {r['note']}")
    info = machine()
    info["loadavg"] = open("/proc/loadavg").read().split()[:3]
    info["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{info['date']}; {info['cpu']}, {info['cores']} cores ({' '.join(info['features'])}), "
          f"kernel {info['kernel']}; load average at the end {' '.join(info['loadavg'])}")
    print("ratio = imgctl / peer (time: lower is better, (Nx) = times faster; rates: higher is better)")
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"machine": info, "rows": out}, f, indent=1)
            f.write("\n")


def main():
    a = sys.argv[1:]
    if not a:
        sys.exit(__doc__)
    if a[0] == "time":
        cmd_time(a[1:])
    elif a[0] == "pesections":
        cmd_pesections(a[1], a[2])
    elif a[0] == "jsoneq":
        cmd_jsoneq(a[1], a[2])
    elif a[0] == "row":
        cmd_row(a[1], a[2:])
    elif a[0] == "table":
        json_out = a[3] if len(a) > 3 and a[2] == "--json" else None
        cmd_table(a[1], json_out)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
