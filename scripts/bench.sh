#!/usr/bin/env bash
# Performance harness (issue 16): each row against its peer tool in the same run, runs
# interleaved (peer, imgctl, peer, imgctl ...), medians and the ratio imgctl/peer; outputs are
# checked equal to the peer's on every run. Prints one table; --json FILE writes it as JSON.
#
# Usage: scripts/bench.sh [--quick] [--json FILE] [--only ROW,...]
#   rows: verity predict eventlog verify tlog initrd uki ext serve (a row left out by --only is
#   printed as "not run", so the table always has every row of issue 16)
#   --quick: smaller inputs and fewer runs, about a minute.
# Inputs are generated once under $IMGCTL_BENCH_DIR (default .cache/bench); nothing is committed.
# Needs: veritysetup, systemd-measure (252 on the host, 257 in .cache/trixie-257), tpm2_eventlog,
# GNU cpio, mkfs.erofs, python3; ukify and systemd-repart 257 in .cache/trixie-257. Run it on an otherwise idle machine; the load average is printed with it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
quick=0; json=""; only="verity,predict,eventlog,verify,tlog,initrd,uki,ext,serve"
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1; shift ;;
    --json) json=$(realpath -m "$2"); shift 2 ;;
    --only) only=$2; shift 2 ;;
    --build-rows) shift ;;   # accepted for old callers: the build rows always run now
    *) echo "usage: scripts/bench.sh [--quick] [--json FILE] [--only ROW,...]" >&2; exit 2 ;;
  esac
done
want() { [[ ",$only," == *",$1,"* ]]; }
shared=$(realpath -m "${IMGCTL_SHARED:-../shared}")
bench=$(realpath -m "${IMGCTL_BENCH_DIR:-.cache/bench}")
t257=$root/.cache/trixie-257
mkdir -p "$bench"
tool() { python3 "$root/scripts/benchtool.py" "$@"; }
if [ $quick = 1 ]; then
  verity_mib=256; verity_runs=3; predict_runs=5; ev_rounds=3; ev_n=20000; tlog_n=100000; verify_n=300
  tree_mib=64; tree_files=1250; build_runs=1
else
  verity_mib=1024; verity_runs=7; predict_runs=11; ev_rounds=5; ev_n=200000; tlog_n=1000000; verify_n=3000
  tree_mib=1024; tree_files=20000; build_runs=3
fi
echo "building release binaries ..." >&2
cargo build --release -q --bin imgctl --example bench_eventlog --example bench_verify
cargo build --release -q -p imgctl-tlog --example bench
imgctl=${IMGCTL:-$root/target/release/imgctl}   # IMGCTL=path times another build (e.g. the base of a change)
work=$(mktemp -d "$bench/run.XXXXXX")
chroot_dirs=()   # temporary folders inside the chroot, removed on exit
cleanup() { rm -rf "$work" "${chroot_dirs[@]}"; }
trap cleanup EXIT
rows=$work/rows.jsonl; : > "$rows"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
# time_of CMD... -> "WALL CPU MAXRSS" (seconds, seconds, KiB); stdout of CMD to $out if set.
time_of() { tool time --stdout "${out:-/dev/null}" -- "$@"; }

# --- dm-verity ---------------------------------------------------------------------------------
if want verity; then
  data=$bench/verity-${verity_mib}M.img
  if [ ! -s "$data" ] || [ "$(stat -c %s "$data")" != $((verity_mib << 20)) ]; then
    echo "generating $data ..." >&2
    openssl enc -aes-128-ctr -pass pass:imgctl -nosalt -pbkdf2 </dev/zero 2>/dev/null | head -c $((verity_mib << 20)) >"$data.tmp" || true
    mv "$data.tmp" "$data"
  fi
  cat "$data" >/dev/null   # page cache warm for both tools
  salt=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
  uuid=11111111-2222-3333-4444-555555555555
  ps=(); os=()
  for i in $(seq $verity_runs); do
    rm -f "$work/vs.hash" "$work/ours.hash"
    read -r w c _ < <(time_of veritysetup format --salt=$salt --uuid=$uuid "$data" "$work/vs.hash"); ps+=("$w,$c")
    read -r w c _ < <(time_of "$imgctl" ext verity --salt $salt --uuid $uuid "$data" "$work/ours.hash"); os+=("$w,$c")
    cmp -s "$work/vs.hash" "$work/ours.hash" || { echo "bench: run $i: hash devices differ ($work/vs.hash, $work/ours.hash)" >&2; exit 1; }
  done
  tool row "$rows" work="dm-verity tree, ${verity_mib} MiB (byte-identical)" peer="veritysetup format 2.6.1" \
    target="≥ 2.4x faster" peer_samples="${ps[*]}" ours_samples="${os[*]}" \
    note="hash devices byte-identical on all $verity_runs runs ($(stat -c %s "$work/ours.hash") bytes)"
  rm -f "$work/vs.hash" "$work/ours.hash"
fi

# --- UKI inputs (predict-pcrs, UKI build) -------------------------------------------------------
uki=$bench/bench-uki.efi
make_uki() {
  [ -s "$bench/initrd64.img" ] || head -c $((64 << 20)) /dev/urandom >"$bench/initrd64.img"
  kernel=$root/.cache/demo/vmlinuz
  [ -f "$kernel" ] || { [ -s "$bench/vmlinuz" ] || head -c $((8 << 20)) /dev/urandom >"$bench/vmlinuz"; kernel=$bench/vmlinuz; }
  cat >"$bench/bench.yaml" <<EOR
name: bench
version: "1"
os-release: { ID: bench, VERSION_ID: "1" }
kernel: $kernel
initrd: { archives: [$bench/initrd64.img] }
cmdline: console=ttyS0 quiet
EOR
  "$imgctl" build "$bench/bench.yaml" -o "$work/uki" >/dev/null
  cp "$work/uki/bench.efi" "$uki"
}
if want predict || want initrd || want uki || want ext; then make_uki; fi

# --- predict-pcrs -------------------------------------------------------------------------------
if want predict; then
  tool pesections "$uki" "$work/sec" >"$work/sections"
  opts252=(); opts257=()
  chroot_tmp=$(mktemp -d "$t257/tmp/imgctl-bench.XXXXXX"); chroot_dirs+=("$chroot_tmp")
  for s in linux osrel cmdline initrd splash dtb pcrpkey ucode uname sbat; do
    [ -s "$work/sec/$s" ] || continue
    case $s in ucode|uname|sbat) ;; *) opts252+=("--$s=$work/sec/$s") ;; esac
    cp "$work/sec/$s" "$chroot_tmp/$s"
    opts257+=("--$s=/tmp/$(basename "$chroot_tmp")/$s")
  done
  mib=$(( $(stat -c %s "$uki") >> 20 ))
  # systemd-measure's default phases (imgctl's defaults add ":", right after the stub).
  phases=(--phase=enter-initrd --phase=enter-initrd:leave-initrd --phase=enter-initrd:leave-initrd:sysinit --phase=enter-initrd:leave-initrd:sysinit:ready)
  for v in 252 257; do
    ps=(); os=()
    for i in $(seq $predict_runs); do
      if [ $v = 252 ]; then
        read -r w c _ < <(out=$work/peer.json time_of /lib/systemd/systemd-measure calculate "${opts252[@]}" --json=short)
      else
        read -r w c _ < <(out=$work/peer.json time_of chroot "$t257" /usr/lib/systemd/systemd-measure calculate "${opts257[@]}" --json=short)
      fi
      ps+=("$w,$c")
      read -r w c _ < <(out=$work/ours.json time_of "$imgctl" predict-pcrs "$uki" --stub-semantics $v --json "${phases[@]}"); os+=("$w,$c")
      tool jsoneq "$work/peer.json" "$work/ours.json" || { echo "bench: predict-pcrs run $i differs from systemd-measure $v" >&2; exit 1; }
    done
    tool row "$rows" work="predict-pcrs, ${mib} MiB UKI, 4 banks x 4 default phases" peer="systemd-measure calculate $v" \
      target="wall ≤ 0.55, CPU ≤ 1.1" peer_samples="${ps[*]}" ours_samples="${os[*]}" \
      note="JSON equal to systemd-measure $v's on all $predict_runs runs"
  done
fi

# --- event log parse + replay -------------------------------------------------------------------
if want eventlog; then
  mapfile -t logs < <(find "$shared/testdata/eventlogs" -type f \( -name '*.bin' -o -name 'binary_bios_measurements*' -o -name '*_eventlog' \) -size +0 | sort)
  ok=()
  for f in "${logs[@]}"; do
    # Logs tpm2_eventlog 5.4 refuses or crashes on are not compared.
    if timeout 10 tpm2_eventlog "$f" >/dev/null 2>&1; then ok+=("$f"); fi
  done
  printf '%s\n' "${ok[@]}" >"$work/logs"
  ps=(); os=()
  for i in $(seq $ev_rounds); do
    read -r w _ _ < <(time_of bash -c 'while read -r f; do tpm2_eventlog "$f" >/dev/null 2>&1; done <"$1"' _ "$work/logs")
    ps+=("$(python3 -c "print(${#ok[@]} / $w)")")
    r=$("$root/target/release/examples/bench_eventlog" --batch $ev_n "${ok[@]}" | sed -n 's/.*= \([0-9.]*\) logs\/s.*/\1/p')
    os+=("$r")
  done
  tool row "$rows" work="event log parse + replay (${#ok[@]} logs)" peer="tpm2_eventlog 5.4 (a run per log)" unit=/s \
    target="≥ 10,000 logs/s in one process" peer_samples="${ps[*]}" ours_samples="${os[*]}" \
    note="imgctl: $ev_n logs in one process, cycled over the corpus (the logs imgctl rejects are left out)"
fi

# --- verify one demo boot -----------------------------------------------------------------------
# Firmware log + systemd userspace log + TPM quote, verified in one process from their bytes
# (examples/bench_verify.rs says which captures); every run must accept.
if want verify; then
  os=()
  for i in $(seq 3); do
    r=$("$root/target/release/examples/bench_verify" "$shared" $verify_n | sed -n 's/.*median \([0-9.]*\) µs.*/\1/p')
    [ -n "$r" ] || { echo "bench: bench_verify printed no median" >&2; exit 1; }
    os+=("$r")
  done
  tool row "$rows" work="verify one demo boot (firmware + userspace log + quote)" peer="—" unit=us \
    target="≤ 5 ms (5000 µs)" ours_samples="${os[*]}" \
    note="median of $verify_n runs in one process, 3 rounds; OVMF + stub 252 firmware log and pcrphase userspace log accepted against policy + reference record; the quote: go-attestation's GCE TPM2_Quote against its log"
fi

# --- transparency log ---------------------------------------------------------------------------
if want tlog; then
  d=$(mktemp -d "$work/tlog.XXXXXX")
  "$root/target/release/examples/bench" "$d" $tlog_n 10000 200 >"$work/tlog.txt"
  rm -rf "$d"
  rate=$(sed -n 's/^batched:.*= \([0-9.]*\) entries\/s.*/\1/p' "$work/tlog.txt")
  proof=$(sed -n 's/^inclusion proof at size [0-9]*: \([0-9.]*\) µs.*/\1/p' "$work/tlog.txt")
  tool row "$rows" work="transparency log: $tlog_n entries batched" peer="-" unit=/s \
    target="≥ 300k entries/s" ours_samples="$rate"
  tool row "$rows" work="transparency log: inclusion proof at $tlog_n" peer="-" unit=us \
    target="< 1 ms (1000 µs)" ours_samples="$proof"
fi

# --- initrd, UKI build and extension image ------------------------------------------------------
# The tree of generated files (random, incompressible; sizes Pareto-distributed) shared by the
# initrd and extension rows.
tree=$bench/tree-${tree_mib}M-$tree_files
if { want initrd || want ext; } && [ ! -f "$tree/.done" ]; then
  echo "generating $tree ..." >&2
  rm -rf "$tree"; mkdir -p "$tree"
  python3 - "$tree" $((tree_mib << 20)) $tree_files <<'EOP'
import os, random, sys
root, total, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(16)
sizes = [min(rnd.paretovariate(1.2), 2000.0) for _ in range(n)]
scale = total / sum(sizes)
for i, s in enumerate(sizes):
    d = os.path.join(root, f"d{i % 97:02d}", f"s{i % 13}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
        f.write(os.urandom(max(1, int(s * scale))))
EOP
  touch "$tree/.done"
fi
if want initrd; then
  largest=$(find "$tree" -type f -printf '%s\n' | sort -n | tail -1)
  cat >"$work/tree.yaml" <<EOR
name: tree
version: "1"
os-release: { ID: bench, VERSION_ID: "1" }
kernel: ${kernel}
initrd: { tree: $tree }
cmdline: console=ttyS0 quiet
EOR
  ps=(); os=(); rss=0
  for i in $(seq $build_runs); do
    read -r w c _ < <(time_of bash -c 'cd "$1" && find . ! -name .done | cpio -o -H newc --quiet >"$2"' _ "$tree" "$work/peer.cpio"); ps+=("$w,$c")
    rm -rf "$work/tree-out"
    read -r w c m < <(time_of "$imgctl" build "$work/tree.yaml" -o "$work/tree-out"); os+=("$w,$c")
    [ "$m" -le "$rss" ] || rss=$m
  done
  rm -f "$work/peer.cpio"; rm -rf "$work/tree-out"
  tool row "$rows" work="initrd + UKI, ${tree_mib} MiB tree of $tree_files files" peer="find | cpio -o -H newc" \
    target="≤ 1.0; RSS ≤ 64 MiB + largest" peer_samples="${ps[*]}" ours_samples="${os[*]}" \
    note="imgctl peak RSS $((rss / 1024)) MiB (limit $(( 64 + (largest >> 20) )) MiB: 64 MiB + the largest file, $((largest >> 20)) MiB)"
fi
if want uki; then
  d=$(mktemp -d "$t257/tmp/imgctl-bench-uki.XXXXXX"); chroot_dirs+=("$d")
  inside=/tmp/$(basename "$d")
  cp "$kernel" "$d/vmlinuz"; cp "$bench/initrd64.img" "$d/initrd"
  printf 'ID=bench\nVERSION_ID=1\n' >"$d/os-release"
  ps=(); os=()
  for i in $(seq $build_runs); do
    rm -f "$d/out.efi"; rm -rf "$work/uki-out"
    read -r w c _ < <(time_of chroot "$t257" env SOURCE_DATE_EPOCH=0 ukify build --linux "$inside/vmlinuz" --initrd "$inside/initrd" \
      --cmdline "console=ttyS0 quiet" --os-release "@$inside/os-release" --output "$inside/out.efi"); ps+=("$w,$c")
    read -r w c _ < <(time_of "$imgctl" build "$bench/bench.yaml" -o "$work/uki-out"); os+=("$w,$c")
  done
  [ -s "$d/out.efi" ] || { echo "bench: ukify 257 wrote no UKI" >&2; exit 1; }
  rm -rf "$d" "$work/uki-out"
  tool row "$rows" work="UKI build, $(( $(stat -c %s "$uki") >> 20 )) MiB inputs" peer="ukify 257 build" \
    target="≤ 0.5" peer_samples="${ps[*]}" ours_samples="${os[*]}" \
    note="timing only; byte identity with ukify 257 is tests/systemd257.rs's"
fi
if want ext; then
  # The same tree as /usr of a sysext, erofs + dm-verity, unsigned: imgctl ext build against
  # systemd-repart 257 (in the chroot) with the equivalent definitions. Both run the host's
  # mkfs.erofs (the chroot has no erofs-utils; its libraries are in the chroot), so the row
  # compares everything around the file system writer.
  d=$(mktemp -d "$t257/tmp/imgctl-bench-ext.XXXXXX"); chroot_dirs+=("$d")
  inside=/tmp/$(basename "$d")
  mkdir -p "$d/bin" "$d/defs" "$d/src/usr/lib/extension-release.d" "$work/ext/usr"
  cp /usr/bin/mkfs.erofs "$d/bin/"
  cp -al "$tree" "$d/src/usr/tree"; rm -f "$d/src/usr/tree/.done"
  printf 'ID=_any\nARCHITECTURE=x86-64\n' >"$d/src/usr/lib/extension-release.d/extension-release.bench"
  cp -al "$tree" "$work/ext/usr/tree"; rm -f "$work/ext/usr/tree/.done"
  printf '[Partition]\nType=root\nFormat=erofs\nCopyFiles=%s/src:/\nVerity=data\nVerityMatchKey=root\nMinimize=best\n' "$inside" >"$d/defs/10-root.conf"
  printf '[Partition]\nType=root-verity\nVerity=hash\nVerityMatchKey=root\nMinimize=best\n' >"$d/defs/20-root-verity.conf"
  cat >"$work/ext-bench.yaml" <<EOR
kind: sysext
name: bench
version: "1"
tree: ext
release: { ID: _any, ARCHITECTURE: x86-64 }
filesystem: erofs
EOR
  ps=(); os=()
  for i in $(seq $build_runs); do
    rm -f "$d/out.raw"; rm -rf "$work/ext-out"
    # repart needs /proc and /dev: mounted in a private mount namespace, gone when it exits.
    read -r w c _ < <(time_of unshare --mount --propagation private sh -c 'mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" && shift && exec chroot "$@"' _ \
      "$t257" "$t257" env PATH="$inside/bin:/usr/bin:/usr/sbin:/bin:/sbin" SOURCE_DATE_EPOCH=0 \
      systemd-repart --definitions="$inside/defs" --empty=create --size=auto --dry-run=no --offline=yes \
      --seed=0fda5ba1-2a3e-4b3a-9c5a-3e3b8c1d2f10 --json=short "$inside/out.raw"); ps+=("$w,$c")
    read -r w c _ < <(time_of "$imgctl" ext build "$work/ext-bench.yaml" -o "$work/ext-out"); os+=("$w,$c")
  done
  [ -s "$d/out.raw" ] || { echo "bench: systemd-repart 257 wrote no image" >&2; exit 1; }
  ours=$(find "$work/ext-out" -name '*.raw' -printf '%s\n' | head -1)
  note="image sizes: repart $(( $(stat -c %s "$d/out.raw") >> 20 )) MiB, imgctl $(( ${ours:-0} >> 20 )) MiB; same tree, same mkfs.erofs; timing only"
  rm -rf "$d" "$work/ext" "$work/ext-out" "$work/ext-bench.yaml"
  tool row "$rows" work="extension image (erofs + verity), ${tree_mib} MiB tree" peer="systemd-repart 257" \
    target="≤ 0.7" peer_samples="${ps[*]}" ours_samples="${os[*]}" note="$note"
fi

# --- serve: the attestation service under load (scripts/bench-serve.sh) ---------------------------
if want serve; then
  if [ $quick = 1 ]; then serve_args=(--machines 50 --rounds 2); else serve_args=(--machines 200 --rounds 5); fi
  scripts/bench-serve.sh "${serve_args[@]}" --row "$rows" >&2
fi

# Rows of issue 16's table that --only left out: printed as not run.
skip() { want "$1" || tool row "$rows" work="$2" peer="$3" skipped="not run (--only)"; }
skip verity "dm-verity tree (byte-identical)" "veritysetup format 2.6.1"
skip predict "predict-pcrs, 4 banks x 4 default phases" "systemd-measure calculate 252, 257"
skip eventlog "event log parse + replay" "tpm2_eventlog 5.4"
skip verify "verify one demo boot (firmware + userspace log + quote)" "—"
skip tlog "transparency log: entries batched / proofs" "—"
skip initrd "initrd + UKI from a tree" "find | cpio -o -H newc"
skip uki "UKI build" "ukify 257 build"
skip ext "extension image (erofs + verity)" "systemd-repart 257"
skip serve "attestation service under load (2 replicas, kill -9)" "—"

echo
echo "load average at the start: $load_start"
tool table "$rows" ${json:+--json "$json"}
