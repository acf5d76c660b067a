"""Checks of COCO files that pycocotools' C code does not make (it trusts its input).

    check_image_record    one record of a COCO "images" list (instances and panoptic alike)
    compressed_rle_total  the pixel count of a compressed RLE string (must be H * W)
    clip_far_polygon      polygons with far-away vertices clipped near the image
"""

import fractions

from kseg.data.errors import DataError, is_int

POLYGON_REACH = 8  # polygons are clipped this many image sizes outside the image


def check_image_record(json_path, i, img, seen):
    """Checks `images[i]` of a COCO JSON file.

    Args:
        json_path: the file, named in errors.
        i: the record's index in the "images" list.
        img: the record: a dict with an int or string "id", a non-empty "file_name" and int
            "height" and "width" >= 1.
        seen: the image ids already read (a container); a repeated id is an error.

    Raises:
        DataError: naming the file, the record, the value seen and the value expected.
    """
    missing = [k for k in ("id", "file_name", "height", "width") if not isinstance(img, dict) or k not in img]
    if missing:
        raise DataError(f"{json_path}: images[{i}] lacks field(s) {', '.join(missing)}, expected id, file_name, "
                        "height and width")
    for key, ok, expected in [
        ("id", is_int(img["id"]) or isinstance(img["id"], str), "an int or a string"),
        ("file_name", isinstance(img["file_name"], str) and img["file_name"] != "", "a non-empty string"),
        ("height", is_int(img["height"]) and img["height"] >= 1, "an int >= 1"),
        ("width", is_int(img["width"]) and img["width"] >= 1, "an int >= 1"),
    ]:
        if not ok:
            raise DataError(f"{json_path}: images[{i}] has {key} {repr(img[key])[:60]}, expected {expected}")
    if img["id"] in seen:
        raise DataError(f"{json_path}: images[{i}] repeats image id {img['id']!r}, expected unique ids")


def clip_far_polygon(xy, h, w):
    """A polygon with coordinates far outside the image clipped to the box reaching
    `POLYGON_REACH` image sizes around it (Sutherland-Hodgman, in exact fractions): the
    region inside the image is the same polygon, now with short edges; polygons within the box
    are returned as they are.

    pycocotools allocates a boundary point per 1/5 pixel of every edge and converts coordinates
    to C ints: a coordinate of 1e9 exhausts memory and crashes it.

    Args:
        xy: list of floats [x0, y0, x1, y1, ...], pixels.
        h, w: the image's height and width.

    Returns:
        list of floats [x0, y0, ...]: `xy` itself, or the clipped polygon (fewer than 6
        values when nothing of it is left).
    """
    reach = POLYGON_REACH * max(h, w)
    box = ((0, -reach, True), (0, w + reach, False), (1, -reach, True), (1, h + reach, False))
    if all(-reach <= v <= (w if i % 2 == 0 else h) + reach for i, v in enumerate(xy)):
        return xy
    points = [(fractions.Fraction(x), fractions.Fraction(y)) for x, y in zip(xy[0::2], xy[1::2])]
    for axis, bound, low in box:
        def inside(p, axis=axis, bound=bound, low=low):
            return p[axis] >= bound if low else p[axis] <= bound

        kept = []
        for k, point in enumerate(points):
            before = points[k - 1]
            if inside(point) != inside(before):
                t = (bound - before[axis]) / (point[axis] - before[axis])
                cross = [None, None]
                cross[axis], cross[1 - axis] = bound, before[1 - axis] + t * (point[1 - axis] - before[1 - axis])
                kept.append(tuple(cross))
            if inside(point):
                kept.append(point)
        points = kept
    return [float(v) for point in points for v in point]


def compressed_rle_total(text):
    """The pixel count of a COCO compressed RLE string: the sum of its run lengths, or None when a
    character is outside '0'..'o' or a run length is negative.

    The format (pycocotools' maskApi): each run length is 5-bit groups, least significant first,
    each group a character '0' + value with 0x20 set while more groups follow; the last group's
    0x10 bit is the sign; from the fourth run on, the value is a difference to the run two before.
    Checked before pycocotools decodes it: its decoder trusts the runs to fill exactly H * W pixels.

    Args:
        text: str, the RLE's "counts".

    Returns:
        int, or None.
    """
    runs, value, shift = [], 0, 0
    for char in text:
        code = ord(char) - 48
        if not 0 <= code < 64:
            return None
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:
            continue
        if code & 0x10:
            value -= 1 << shift  # two's complement of the groups read
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return None
        runs.append(value)
        value, shift = 0, 0
    return None if shift else sum(runs)
