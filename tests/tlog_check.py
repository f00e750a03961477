#!/usr/bin/env python3
"""Independent checker for a C2SP tlog-tiles log folder written by imgctl.

Written from the specs (RFC 6962 §2.1, C2SP signed-note, tlog-checkpoint, tlog-tiles, tlog-cosignature),
not from imgctl's Rust code. Usage: tlog_check.py DIR VKEY [WITNESS_VKEY...]
Each WITNESS_VKEY (type 0x04, cosignature/v1) must have cosigned the checkpoint: a signature
line whose bytes are key ID, 8-byte big-endian timestamp, Ed25519 signature over
"cosignature/v1\ntime <T>\n" followed by the checkpoint text.
Checks: the checkpoint's Ed25519 signature by VKEY (key ID rule included), every entry bundle
hashes to its level-0 tile, every full tile's root appears one level up, and the tree root
equals the checkpoint's. Prints "ok SIZE ROOTHEX" and exits 0, or prints why and exits 1.
"""
import base64
import hashlib
import os
import struct
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def leaf(data):
    return hashlib.sha256(b"\x00" + data).digest()


def node(l, r):
    return hashlib.sha256(b"\x01" + l + r).digest()


def mth(hashes):
    """RFC 6962 MTH over a list of subtree hashes of equal height (split at largest 2^k < n)."""
    n = len(hashes)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashes[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node(mth(hashes[:k]), mth(hashes[k:]))


def tile_path(level, n, width):
    s = "%03d" % (n % 1000)
    n //= 1000
    while n > 0:
        s = "x%03d/" % (n % 1000) + s
        n //= 1000
    p = "tile/%s/%s" % (level, s)
    if width < 256:
        p += ".p/%d" % width
    return p


def read(d, path):
    full = os.path.join(d, path)
    if not os.path.exists(full):
        fail("missing " + path)
    with open(full, "rb") as f:
        return f.read()


def check_note(data, vkey):
    name, key_id_hex, key_b64 = vkey.split("+", 2)
    key = base64.b64decode(key_b64, validate=True)
    if key[0] != 0x01 or len(key) != 33:
        fail("vkey is not an Ed25519 key")
    key_id = hashlib.sha256(name.encode() + b"\n" + key).digest()[:4]
    if key_id.hex() != key_id_hex:
        fail("vkey key ID does not match SHA-256(name || 0x0A || 0x01 || key)[:4]")
    text = data.decode("utf-8")
    i = text.rfind("\n\n")
    if i < 0:
        fail("checkpoint has no signature block")
    body, sigs = text[: i + 1], text[i + 2 :]
    ok = False
    for line in sigs.splitlines():
        if not line.startswith("\u2014 "):
            fail("bad signature line %r" % line)
        sname, sig_b64 = line[2:].split(" ", 1)
        sig = base64.b64decode(sig_b64, validate=True)
        if sname == name and sig[:4] == key_id:
            try:
                Ed25519PublicKey.from_public_bytes(key[1:]).verify(sig[4:], body.encode())
            except Exception:
                fail("checkpoint signature by %s does not verify" % name)
            ok = True
    if not ok:
        fail("checkpoint not signed by " + name)
    lines = body.split("\n")
    origin, size, root = lines[0], int(lines[1]), base64.b64decode(lines[2], validate=True)
    if origin != name:
        fail("origin %r is not the key name %r" % (origin, name))
    return size, root


def check_cosignature(data, wvkey):
    name, key_id_hex, key_b64 = wvkey.split("+", 2)
    key = base64.b64decode(key_b64, validate=True)
    if key[0] != 0x04 or len(key) != 33:
        fail("witness vkey %s is not an Ed25519 cosignature/v1 key" % name)
    key_id = hashlib.sha256(name.encode() + b"\n" + key).digest()[:4]
    if key_id.hex() != key_id_hex:
        fail("witness vkey key ID does not match SHA-256(name || 0x0A || 0x04 || key)[:4]")
    text = data.decode("utf-8")
    i = text.rfind("\n\n")
    body, sigs = text[: i + 1], text[i + 2 :]
    for line in sigs.splitlines():
        sname, sig_b64 = line[2:].split(" ", 1)
        sig = base64.b64decode(sig_b64, validate=True)
        if sname == name and sig[:4] == key_id:
            if len(sig) != 4 + 8 + 64:
                fail("cosignature by %s has %d bytes" % (name, len(sig)))
            (ts,) = struct.unpack(">Q", sig[4:12])
            msg = ("cosignature/v1\ntime %d\n" % ts).encode() + body.encode()
            try:
                Ed25519PublicKey.from_public_bytes(key[1:]).verify(sig[12:], msg)
            except Exception:
                fail("cosignature by %s does not verify" % name)
            return
    fail("checkpoint not cosigned by witness " + name)


def main():
    d, vkey = sys.argv[1], sys.argv[2]
    note = read(d, "checkpoint")
    size, root = check_note(note, vkey)
    for w in sys.argv[3:]:
        check_cosignature(note, w)
    # Level 0 from the entry bundles.
    level_hashes = []  # all hashes of tree level 8*L, recomputed bottom-up
    entries = 0
    n_tiles = (size + 255) // 256
    for n in range(n_tiles):
        width = min(256, size - n * 256)
        bundle = read(d, tile_path("entries", n, width))
        pos, got = 0, []
        for _ in range(width):
            if pos + 2 > len(bundle):
                fail("bundle %d truncated" % n)
            (ln,) = struct.unpack(">H", bundle[pos : pos + 2])
            if pos + 2 + ln > len(bundle):
                fail("bundle %d truncated" % n)
            got.append(leaf(bundle[pos + 2 : pos + 2 + ln]))
            pos += 2 + ln
        if pos != len(bundle):
            fail("bundle %d has trailing bytes" % n)
        tile = read(d, tile_path(0, n, width))
        if tile != b"".join(got):
            fail("level-0 tile %d does not match the hashes of its entries" % n)
        level_hashes.extend(got)
        entries += width
    # Higher levels: level L+1 tile holds MTH of each full level-L tile.
    level = 0
    count = size
    all_levels = [level_hashes]
    while count >= 256:
        below = all_levels[-1]
        up = [mth(below[i * 256 : (i + 1) * 256]) for i in range(len(below) // 256)]
        level += 1
        count = len(up)
        for n in range((count + 255) // 256):
            width = min(256, count - n * 256)
            tile = read(d, tile_path(level, n, width))
            if tile != b"".join(up[n * 256 : n * 256 + width]):
                fail("level-%d tile %d does not match the level below" % (level, n))
        all_levels.append(up)
    computed = mth(level_hashes)
    if computed != root:
        fail("root %s from entries != checkpoint root %s" % (computed.hex(), root.hex()))
    print("ok %d %s" % (size, root.hex()) + (" cosigned by %d" % len(sys.argv[3:]) if sys.argv[3:] else ""))


if __name__ == "__main__":
    main()
