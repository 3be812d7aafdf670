#!/usr/bin/env python3
"""Writes the lossless JPEGs (SOF3) of test-data/: no tool this project's machines
install writes one (libjpeg-turbo 2's cjpeg cannot; 3's `cjpeg -lossless` can), so this
is a minimal encoder of ITU T.81 annex H: one scan, predictor 1 (the sample to the
left), no point transform, one Huffman table of 5-bit codes.

Their pixels are computed here and again in `tests/codings.rs` from the same formulas, so
that the test checks the decode sample by sample.

    python3 crates/imaging/tests/make_lossless_jpeg.py test-data
"""

import struct
import sys
from pathlib import Path

W, H = 64, 48


def rgb_pixels():
    """Red across, green down, and a blue pattern: gradients and sharp edges."""
    return [
        [((x * 255) // (W - 1), (y * 255) // (H - 1), ((x ^ y) * 4) & 0xFF) for x in range(W)]
        for y in range(H)
    ]


def grey12_pixels():
    """A 12-bit ramp with a step every eighth row."""
    return [[((x * 4095) // (W - 1) + (y // 8) * 300) % 4096 for x in range(W)] for y in range(H)]


def segment(marker, body):
    return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body


class Bits:
    def __init__(self):
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def put(self, value, count):
        for i in range(count - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> i) & 1)
            self.n += 1
            if self.n == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0)  # byte stuffing
                self.acc, self.n = 0, 0

    def flush(self):
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)  # pad with ones
        return bytes(self.out)


def encode(rows, precision, components, rgb_ids):
    """A lossless JPEG of `rows` (lists of tuples, one sample per component)."""
    # 17 categories (0..16), each a 5-bit code: the code is the category itself.
    counts = [0] * 16
    counts[4] = 17
    dht = bytes([0x00]) + bytes(counts) + bytes(range(17))
    ids = [ord("R"), ord("G"), ord("B")] if rgb_ids else list(range(1, components + 1))
    sof = struct.pack(">BHHB", precision, H, W, components)
    sof += b"".join(bytes([i, 0x11, 0]) for i in ids)
    sos = bytes([components]) + b"".join(bytes([i, 0x00]) for i in ids)
    sos += bytes([1, 0, 0])  # predictor 1, Se 0, Ah/Al 0
    bits = Bits()
    for y in range(H):
        for x in range(W):
            for c in range(components):
                if x == 0 and y == 0:
                    pred = 1 << (precision - 1)
                elif y == 0:
                    pred = rows[y][x - 1][c]
                elif x == 0:
                    pred = rows[y - 1][x][c]
                else:
                    pred = rows[y][x - 1][c]
                diff = (rows[y][x][c] - pred) % 65536
                if diff >= 32768:
                    diff -= 65536
                size = 0 if diff == 0 else abs(diff).bit_length()
                bits.put(size, 5)
                if 0 < size < 16:
                    bits.put(diff if diff > 0 else diff + (1 << size) - 1, size)
    data = b"\xff\xd8" + segment(0xC4, dht) + segment(0xC3, sof)
    data += segment(0xDA, sos) + bits.flush() + b"\xff\xd9"
    return data


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "test-data")
    rgb = encode(rgb_pixels(), 8, 3, rgb_ids=True)
    (out / "lossless-rgb.jpg").write_bytes(rgb)
    grey = encode([[(v,) for v in row] for row in grey12_pixels()], 12, 1, rgb_ids=False)
    (out / "lossless-grey12.jpg").write_bytes(grey)


if __name__ == "__main__":
    main()
