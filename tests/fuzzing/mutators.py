"""Input mutators of the parser fuzzer: bytes, JSON trees and PNG files with valid CRCs.

Every mutator takes a `random.Random` and returns new data; none touches its input. They
import nothing beyond the standard library, so the fuzzer's parent process stays small.
"""

import copy
import json
import math
import struct
import zlib

# Values that break parsers more often than random ones: sizes at type limits, signs, NaN.
INTERESTING_8 = (0, 1, 0x7F, 0x80, 0xFF)
INTERESTING_32 = (0, 1, 2, 0x7F, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
JSON_JUNK = (
    None, True, False, 0, -1, 1, 3, 2**31, 2**63, 10**30, -(10**30), 1e308, -1e308, 0.5, -0.0,
    math.nan, math.inf, -math.inf, "", "x", "0", "1", "-1", "NaN", " \t", "\u00e9\u0000\ud7ff", "a" * 300,
    "../../../etc/passwd", [], {}, [[[]]], [None], [1, 2, 3], [0.5, "x", None], {"": None}, {"a": {"b": [None, {}]}},
)


# ----------------------------------------------------------------------------- bytes


def mutate_bytes(rng, data, others=(), region=None, max_ops=4):
    """`data` (bytes) after 1..`max_ops` random edits.

    Edits: flip a bit, set a random or boundary byte, write a boundary 16/32-bit integer
    (either byte order), truncate, insert random bytes, delete or duplicate a range, splice
    with another seed of `others`.

    Args:
        rng: random.Random.
        data: the seed bytes.
        others: further seeds to splice from.
        region: (start, stop) byte range most point edits fall in (e.g. one chunk), or None.
        max_ops: most edits applied.

    Returns:
        bytes.
    """
    out = bytearray(data)
    for _ in range(rng.randint(1, max_ops)):
        if not out:
            out += rng.randbytes(rng.randint(1, 16))
            continue
        low, high = (0, len(out)) if region is None or region[0] >= len(out) else (region[0], min(region[1], len(out)))
        pos = rng.randrange(low, max(high, low + 1))
        op = rng.randrange(10)
        if op == 0:
            out[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[pos] = rng.randrange(256)
        elif op == 2:
            out[pos] = rng.choice(INTERESTING_8)
        elif op == 3 and pos + 4 <= len(out):
            order = rng.choice("<>")
            out[pos:pos + 4] = struct.pack(order + "I", rng.choice(INTERESTING_32))
        elif op == 4 and pos + 2 <= len(out):
            out[pos:pos + 2] = struct.pack(rng.choice("<>") + "H", rng.choice((0, 1, 0x7FFF, 0x8000, 0xFFFF)))
        elif op == 5:
            del out[rng.randrange(len(out) + 1):]  # truncate
        elif op == 6:
            out[pos:pos] = rng.randbytes(rng.choice((1, 2, 4, 16, 256)))
        elif op == 7:
            del out[pos:pos + rng.choice((1, 4, 16, 256))]
        elif op == 8:
            chunk = out[pos:pos + rng.choice((4, 16, 256))]
            out[pos:pos] = chunk * rng.choice((1, 2, 16))
        elif others:
            other = rng.choice(others)
            cut = rng.randrange(len(other) + 1)
            out = out[:pos] + bytearray(other[cut:])
    return bytes(out)


# ----------------------------------------------------------------------------- JSON


def _paths(tree, prefix=()):
    """Every (path, value) of a JSON tree, the root included."""
    yield prefix, tree
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _paths(value, prefix + (i,))


def _replace(tree, path, value):
    if not path:
        return value
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return tree


def _delete(tree, path):
    if not path:
        return tree
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return tree


def _tweak_number(rng, value):
    return rng.choice((value + 1, value - 1, -value, value * 1000003, value / 3 if value else 0.1, 2**64 - value,
                       str(value), [value], float(value)))


def mutate_tree(rng, tree, max_ops=3):
    """A deep copy of JSON tree `tree` with 1..`max_ops` structural edits.

    Edits: a value replaced by junk of another type (None, huge or negative numbers, NaN,
    infinities, strings, nested lists and dicts), a key or item deleted, a number nudged,
    a string emptied or made long, an item duplicated, a junk key added, a value moved from
    elsewhere in the tree, a list made very long.
    """
    tree = copy.deepcopy(tree)
    for _ in range(rng.randint(1, max_ops)):
        paths = list(_paths(tree))
        path, value = rng.choice(paths)
        op = rng.randrange(9)
        if op in (0, 1):
            tree = _replace(tree, path, copy.deepcopy(rng.choice(JSON_JUNK)))
        elif op == 2 and path:
            tree = _delete(tree, path)
        elif op == 3 and isinstance(value, (int, float)) and not isinstance(value, bool):
            tree = _replace(tree, path, _tweak_number(rng, value))
        elif op == 4 and isinstance(value, str):
            tree = _replace(tree, path, rng.choice(("", value * 50, value[::-1], value + "\u0000", value.upper())))
        elif op == 5 and isinstance(value, list) and value:
            value.insert(rng.randrange(len(value) + 1), copy.deepcopy(rng.choice(value)))
        elif op == 6 and isinstance(value, dict):
            value[rng.choice(("", "id", "junk", "0", "\u00e9"))] = copy.deepcopy(rng.choice(JSON_JUNK))
        elif op == 7:
            _, donor = rng.choice(paths)
            if donor is not tree:
                tree = _replace(tree, path, copy.deepcopy(donor))
        elif op == 8 and isinstance(value, list) and value:
            value.extend(copy.deepcopy(value[-1]) for _ in range(rng.choice((10, 1000))))
        else:
            tree = _replace(tree, path, copy.deepcopy(rng.choice(JSON_JUNK)))
    return tree


def mutate_json_text(rng, tree, others=()):
    """JSON text of `tree` mutated: mostly structurally (`mutate_tree`, NaN and Infinity
    written as JavaScript does), sometimes as bytes, sometimes nested very deep.

    Returns:
        bytes (UTF-8, or invalid UTF-8 after a byte edit).
    """
    roll = rng.random()
    if roll < 0.65:
        return json.dumps(mutate_tree(rng, tree), allow_nan=True).encode("utf-8")
    if roll < 0.9:
        text = json.dumps(tree).encode("utf-8")
        return mutate_bytes(rng, text, others=[json.dumps(o).encode("utf-8") for o in others])
    depth = rng.choice((100, 1000, 100000))  # deep nesting: recursion limits of parsers and checkers
    opening, closing = rng.choice((("[", "]"), ('{"a":', "}")))
    text = json.dumps(tree)
    if rng.random() < 0.5:
        return (opening * depth + text + closing * depth).encode("utf-8")
    cut = text.rfind("}")
    return (text[:cut] + ', "deep": ' + opening * depth + "1" + closing * depth + text[cut:]).encode("utf-8")


# ----------------------------------------------------------------------------- PNG


def png_chunk(kind, data):
    """One PNG chunk with its length and a valid CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


def odd_png(rng):
    """A PNG whose every chunk has a valid CRC but whose header may be odd.

    Width and height up to 2^31 - 1 (or 0), bit depths 1..16 and invalid ones, every colour
    type (grey, RGB, palette, grey + alpha, RGBA) and invalid ones, interlacing, a palette
    of any length (or none), tRNS, and pixel data of the right size, too short or too long.

    Returns:
        bytes.
    """
    width = rng.choice((1, 2, 3, 7, 16, 33, 255, 4096, 65535, 100000, 2**31 - 1, 0))
    height = rng.choice((1, 2, 5, 16, 31, 4096, 65535, 2**31 - 1, 0))
    if rng.random() < 0.6:  # mostly small images, whose pixel data can be complete
        width, height = rng.randint(1, 40), rng.randint(1, 40)
    color = rng.choice((0, 0, 2, 2, 3, 3, 4, 6, 6, 1, 5, 7))
    depth = rng.choice({0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}.get(color, (8,)))
    if rng.random() < 0.1:
        depth = rng.choice((0, 3, 5, 32, 255))
    interlace = 1 if rng.random() < 0.15 else rng.choice((0, 0, 0, 0, 2))
    header = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, interlace)
    chunks = [png_chunk(b"IHDR", header)]
    if color == 3 or (color in (2, 6) and rng.random() < 0.2):
        entries = rng.choice((0, 1, 2, 16, 256, 257))
        palette = rng.randbytes(3 * entries + rng.choice((0, 0, 0, 1, 2)))
        if rng.random() < 0.9:
            chunks.append(png_chunk(b"PLTE", palette))
    if rng.random() < 0.2:
        chunks.append(png_chunk(b"tRNS", rng.randbytes(rng.choice((1, 2, 6, 255, 300)))))
    row = 1 + (width * _CHANNELS.get(color, 1) * max(depth, 1) + 7) // 8
    raw_size = row * height if width * height <= 1 << 16 else rng.randint(0, 1 << 16)
    raw_size = min(int(raw_size * rng.choice((1, 1, 1, 0.5, 0, 1.5))), 1 << 20)
    raw = bytearray(rng.randbytes(raw_size))
    for r in range(0, len(raw), row):  # filter bytes 0..4 mostly (5..255 are invalid)
        raw[r] = rng.randrange(5) if rng.random() < 0.95 else rng.randrange(256)
    data = zlib.compress(bytes(raw))
    if rng.random() < 0.3:  # pixel data split over several IDAT chunks
        cut = rng.randrange(len(data) + 1)
        chunks += [png_chunk(b"IDAT", data[:cut]), png_chunk(b"IDAT", data[cut:])]
    elif rng.random() < 0.9:
        chunks.append(png_chunk(b"IDAT", data))
    if rng.random() < 0.9:
        chunks.append(png_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)
