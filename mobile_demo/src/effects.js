// AR-style effects drawn on a 2D canvas from a segmentation at the model's resolution.
// Same meaning as `kseg demo-video` (export/video.py):
// The background class is the model entry's `background` (default 0).
//   blur     background blurred, foreground sharp, blended by the foreground probability;
//   replace  background replaced by a colour, blended by the class mask (soft across one
//            model pixel, exact elsewhere);
//   classes  class-colour overlay, alpha 0.5, the background left clear (kseg.viz.overlay);
//   outlines every connected region of a non-background class outlined in its colour, labelled.
// For an instance model (a result with `instances` and `instanceIds`, see engine.js) colours go
// by instance (kseg.viz.instance_colors: detection slot i has colour i), as in kseg.viz's
// instance_overlay:
//   classes  each instance's pixels tinted in its colour, alpha 0.5;
//   outlines each instance's outline (its pixels with a 4-neighbour of another instance or of
//            none; the frame edge is no border) in its colour, and a label "name 0.93" on a
//            patch of that colour at its box's top-left corner (above the box when there is room);
//   blur and replace act on the instances' union, as on a class mask.
// For a panoptic model (a result with `segments` and `panopticIds`) the effect `panoptic` draws
// what kseg.viz.panoptic_overlay draws (demo-video's panoptic effect): every segment tinted at
// the entry's `alpha` (0.5) in its colour (stuff: its category's colour, the entry's
// `categories[].color`; things: kseg.viz.instance_colors in ascending segment id order), a white
// outline on each thing (its pixels with a 4-neighbour of another id; the frame edge is no border)
// and a label "name 0.93" on a patch of its colour at the top-left corner of its pixels' box.
// blur and replace keep the things.

export const EFFECTS = ['blur', 'replace', 'classes', 'outlines', 'panoptic'];
export const OVERLAY_ALPHA = 0.5;
export const REPLACE_COLOR = [0, 177, 64];
export const BLUR_PX = 12;
export const THING_OUTLINE = [255, 255, 255]; // kseg.viz.panoptic's outline colour
const UNKNOWN_CATEGORY_COLOR = [128, 128, 128]; // kseg.viz.panoptic_colors: a category not in the list
const MIN_REGION_FRACTION = 0.005; // regions under 0.5 % of the frame get no outline

/** The effects that make sense for a model with `numClasses` classes, default first. */
export function effectsFor(numClasses, task = 'semantic') {
  if (task === 'instance') return ['outlines', 'classes', 'blur', 'replace'];
  if (task === 'panoptic') return ['panoptic', 'blur', 'replace'];
  return numClasses === 2 ? ['blur', 'replace', 'classes', 'outlines'] : ['classes', 'outlines', 'blur', 'replace'];
}

const GOLDEN = 0.6180339887498949;

/** kseg.viz.instance_colors(count): a golden-ratio walk around the hue circle (for models
 * picked from disk; index entries carry the list as `instance_colors`). */
export function instanceColors(count) {
  return Array.from({ length: count }, (_, i) => {
    const h = ((0.07 + i * GOLDEN) % 1) * 6, v = [0.9, 0.75][Math.floor(i / 5) % 2], s = 0.8;
    const k = Math.floor(h) % 6, f = h - Math.floor(h);
    const p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
    const rgb = [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][k];
    return rgb.map(c => Math.round(255 * c));
  });
}

/** The colour of instance `id` (1-based) of `model`. */
export function instanceColor(model, id) {
  const colors = model.instance_colors?.length ? model.instance_colors : (model.instanceColorsFallback ??= instanceColors(100));
  return colors[(id - 1) % colors.length];
}

function scratch(width, height) {
  const canvas = new OffscreenCanvas(width, height);
  return [canvas, canvas.getContext('2d', { willReadFrequently: true })];
}

/** A model-size canvas (white RGB) whose alpha is the foreground probability, or with `hard`
 * 1 where the class is not `background` and 0 where it is. */
function alphaMask(segmentation, width, height, hard, background) {
  const [canvas, ctx] = scratch(width, height);
  const image = ctx.createImageData(width, height);
  const { foreground, classes } = segmentation;
  for (let i = 0; i < foreground.length; i++) {
    const alpha = hard ? (classes[i] === background ? 0 : 1) : Math.min(1, Math.max(0, foreground[i]));
    image.data.set([255, 255, 255, Math.round(255 * alpha)], 4 * i);
  }
  ctx.putImageData(image, 0, 0);
  return canvas;
}

/** The frame cut out by the foreground mask, upsampled bilinearly (soft edges). */
function foregroundLayer(frame, segmentation, layout, width, height, hard, background) {
  const [canvas, ctx] = scratch(width, height);
  ctx.drawImage(frame, 0, 0, width, height);
  ctx.globalCompositeOperation = 'destination-in';
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(alphaMask(segmentation, layout.width, layout.height, hard, background), 0, 0, width, height);
  return canvas;
}

/** A model-size canvas with each class but `background` in its colour at `alpha`. */
function colourLayer(classes, colors, background, width, height, alpha) {
  const [canvas, ctx] = scratch(width, height);
  const image = ctx.createImageData(width, height);
  const a = Math.round(255 * alpha);
  for (let i = 0; i < classes.length; i++) {
    const c = classes[i];
    if (c === background) continue;
    const [r, g, b] = colors[c % colors.length];
    image.data.set([r, g, b, a], 4 * i);
  }
  ctx.putImageData(image, 0, 0);
  return canvas;
}

/** A model-size canvas with each instance's pixels in its colour at `alpha`. */
function instanceLayer(ids, model, width, height, alpha) {
  const [canvas, ctx] = scratch(width, height);
  const image = ctx.createImageData(width, height);
  const a = Math.round(255 * alpha);
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] === 0) continue;
    const [r, g, b] = instanceColor(model, ids[i]);
    image.data.set([r, g, b, a], 4 * i);
  }
  ctx.putImageData(image, 0, 0);
  return canvas;
}

/** {segment id: [r, g, b]} as kseg.viz.panoptic_colors: things instance colours in ascending id
 * order, stuff its category's colour (the entry's categories, else its class colour). */
export function panopticColors(segments, model) {
  const colors = new Map();
  const byId = new Map((model.categories ?? []).map(c => [c.id, c.color]));
  let things = 0;
  for (const s of [...segments].sort((a, b) => a.id - b.id)) {
    if (s.isthing) colors.set(s.id, instanceColor(model, ++things));
    else colors.set(s.id, byId.get(s.category) ?? model.colors?.[s.category] ?? UNKNOWN_CATEGORY_COLOR);
  }
  return colors;
}

/** The label of a panoptic segment: "name 0.93" (kseg.viz.panoptic_overlay's text). */
export function segmentText(model, segment) {
  return `${model.labels?.[segment.category] ?? `class ${segment.category}`} ${segment.score.toFixed(2)}`;
}

/** A model-size canvas: every segment in its colour at `alpha`, things' outlines in white (opaque);
 * returns it and each thing's pixel box {x1, y1} (model pixels). */
function panopticLayer(ids, segments, colors, width, height, alpha) {
  const [canvas, ctx] = scratch(width, height);
  const image = ctx.createImageData(width, height);
  const a = Math.round(255 * alpha);
  const thing = new Uint8Array(segments.length + 1);
  for (const s of segments) thing[s.id] = s.isthing ? 1 : 0;
  const corners = new Map();
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const p = y * width + x;
      const l = ids[p];
      if (l === 0) continue;
      if (thing[l]) {
        const c = corners.get(l);
        if (!c) corners.set(l, { x1: x, y1: y });
        else if (x < c.x1) c.x1 = x;
        const edge = (x > 0 && ids[p - 1] !== l) || (x < width - 1 && ids[p + 1] !== l) ||
          (y > 0 && ids[p - width] !== l) || (y < height - 1 && ids[p + width] !== l);
        if (edge) {
          image.data.set([...THING_OUTLINE, 255], 4 * p);
          continue;
        }
      }
      image.data.set([...colors.get(l), a], 4 * p);
    }
  }
  ctx.putImageData(image, 0, 0);
  return [canvas, corners];
}

/** Outline pixels of the instances: an instance pixel whose 4-neighbour (inside the image) has
 * another id, in the instance's colour. */
function instanceOutlineLayer(ids, model, width, height) {
  const [canvas, ctx] = scratch(width, height);
  const image = ctx.createImageData(width, height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const p = y * width + x;
      const l = ids[p];
      if (l === 0) continue;
      const edge = (x > 0 && ids[p - 1] !== l) || (x < width - 1 && ids[p + 1] !== l) ||
        (y > 0 && ids[p - width] !== l) || (y < height - 1 && ids[p + width] !== l);
      if (!edge) continue;
      const [r, g, b] = instanceColor(model, l);
      image.data.set([r, g, b, 255], 4 * p);
    }
  }
  ctx.putImageData(image, 0, 0);
  return canvas;
}

/** A label on a patch of `color` with its top-left at (x, y) (above it when there is room), kept
 * on the canvas; returns the patch {x, y, width, height} in canvas pixels. */
function drawCornerLabel(ctx, text, x, y, color) {
  const size = Math.max(12, Math.round(ctx.canvas.width / 40));
  ctx.font = `600 ${size}px system-ui, sans-serif`;
  const w = Math.ceil(ctx.measureText(text).width) + 8, h = size + 6;
  let top = Math.round(y) - h >= 0 ? Math.round(y) - h : Math.round(y);
  let left = Math.round(x);
  left = Math.max(0, Math.min(left, ctx.canvas.width - w));
  top = Math.max(0, Math.min(top, ctx.canvas.height - h));
  ctx.fillStyle = `rgb(${color.join(',')})`;
  ctx.fillRect(left, top, w, h);
  const luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2];
  ctx.fillStyle = luminance > 140 ? 'rgb(0, 0, 0)' : 'rgb(255, 255, 255)';
  ctx.textAlign = 'left';
  ctx.textBaseline = 'middle';
  ctx.fillText(text, left + 4, top + h / 2);
  return { x: left, y: top, width: w, height: h };
}

/** The label of an instance: "name 0.93". */
export function instanceText(model, instance) {
  return `${model.labels?.[instance.cls] ?? `class ${instance.cls}`} ${instance.score.toFixed(2)}`;
}

/**
 * Connected regions (4-neighbour) of each non-background class: a label image and, per region,
 * its class, area and centroid. Regions smaller than `minArea` pixels are dropped.
 */
export function regions(classes, width, height, minArea, background = 0) {
  const labels = new Int32Array(classes.length);
  const found = [];
  const stack = new Int32Array(classes.length);
  let next = 0;
  for (let start = 0; start < classes.length; start++) {
    const c = classes[start];
    if (c === background || labels[start] !== 0) continue;
    next += 1;
    let top = 0, area = 0, sx = 0, sy = 0;
    stack[top++] = start;
    labels[start] = next;
    const members = [];
    while (top > 0) {
      const p = stack[--top];
      members.push(p);
      const x = p % width, y = (p - x) / width;
      area += 1; sx += x; sy += y;
      const neighbours = [x > 0 ? p - 1 : -1, x < width - 1 ? p + 1 : -1, y > 0 ? p - width : -1, y < height - 1 ? p + width : -1];
      for (const q of neighbours) {
        if (q >= 0 && labels[q] === 0 && classes[q] === c) {
          labels[q] = next;
          stack[top++] = q;
        }
      }
    }
    if (area < minArea) {
      for (const p of members) labels[p] = -1;
      continue;
    }
    found.push({ id: next, cls: c, area, cx: sx / area, cy: sy / area });
  }
  return { labels, regions: found };
}

/** Boundary pixels of kept regions: a pixel whose 4-neighbour has another label (or the border). */
function outlineLayer(labeled, colors, classes, width, height) {
  const [canvas, ctx] = scratch(width, height);
  const image = ctx.createImageData(width, height);
  const { labels } = labeled;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const p = y * width + x;
      const l = labels[p];
      if (l <= 0) continue;
      const edge = x === 0 || y === 0 || x === width - 1 || y === height - 1 ||
        labels[p - 1] !== l || labels[p + 1] !== l || labels[p - width] !== l || labels[p + width] !== l;
      if (!edge) continue;
      const [r, g, b] = colors[classes[p] % colors.length];
      image.data.set([r, g, b, 255], 4 * p);
    }
  }
  ctx.putImageData(image, 0, 0);
  return canvas;
}

function drawLabel(ctx, text, x, y, color) {
  ctx.font = `600 ${Math.max(12, Math.round(ctx.canvas.width / 40))}px system-ui, sans-serif`;
  const w = ctx.measureText(text).width + 8;
  const h = parseInt(ctx.font.split(' ')[1], 10) + 6;
  ctx.fillStyle = 'rgba(0, 0, 0, 0.6)';
  ctx.fillRect(x - w / 2, y - h / 2, w, h);
  ctx.fillStyle = `rgb(${color.join(',')})`;
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  ctx.fillText(text, x, y);
}

/**
 * Draws `frame` (a canvas/video/bitmap of the display size) with `effect` onto `ctx`.
 * `segmentation` is an engine result; `layout` its {width, height}; `model` the index entry.
 * Returns what `outlines` drew (else null): {minArea, regions} for a semantic result;
 * {instances: [{id, cls, score, box, color, text, label: {x, y, width, height}}]} for an
 * instance result (label: the patch in canvas pixels). `panoptic` returns {segments: [{id,
 * category, isthing, score, color, text, label}]} (text and label null for stuff and for things
 * with no pixel).
 */
export function drawEffect(ctx, frame, segmentation, layout, model, effect, options = {}) {
  const { width, height } = ctx.canvas;
  const colors = model.colors;
  ctx.save();
  ctx.globalCompositeOperation = 'source-over';
  ctx.filter = 'none';
  let drawn = null;
  const instances = segmentation.instanceIds ? segmentation.instances : null;
  if (effect === 'panoptic') {
    if (!segmentation.panopticIds) {
      ctx.restore();
      throw new Error(`effect panoptic: ${model.name} is not a panoptic model (Panoptic FPN, MaskFormer)`);
    }
    ctx.drawImage(frame, 0, 0, width, height);
    ctx.imageSmoothingEnabled = false;
    const { segments, panopticIds } = segmentation;
    const colors = panopticColors(segments, model);
    const [layer, corners] = panopticLayer(panopticIds, segments, colors, layout.width, layout.height,
      model.alpha ?? OVERLAY_ALPHA);
    ctx.drawImage(layer, 0, 0, width, height);
    const sx = width / layout.width, sy = height / layout.height;
    drawn = { segments: [] };
    for (const s of segments) {
      const color = colors.get(s.id);
      const corner = corners.get(s.id);
      const text = s.isthing ? segmentText(model, s) : null;
      const label = corner ? drawCornerLabel(ctx, text, corner.x1 * sx, corner.y1 * sy, color) : null;
      drawn.segments.push({ ...s, color, text, label });
    }
  } else if (instances && (effect === 'classes' || effect === 'outlines')) {
    ctx.drawImage(frame, 0, 0, width, height);
    ctx.imageSmoothingEnabled = false;
    const ids = segmentation.instanceIds;
    if (effect === 'classes') {
      ctx.drawImage(instanceLayer(ids, model, layout.width, layout.height, OVERLAY_ALPHA), 0, 0, width, height);
    } else {
      ctx.drawImage(instanceOutlineLayer(ids, model, layout.width, layout.height), 0, 0, width, height);
      const sx = width / layout.width, sy = height / layout.height;
      drawn = { instances: [] };
      for (const inst of [...instances].reverse()) { // the best last, on top
        const color = instanceColor(model, inst.id);
        const text = instanceText(model, inst);
        const label = drawCornerLabel(ctx, text, inst.box[1] * sx, inst.box[0] * sy, color);
        drawn.instances.unshift({ ...inst, color, text, label });
      }
    }
  } else if (effect === 'blur' || effect === 'replace') {
    const person = foregroundLayer(frame, segmentation, layout, width, height, effect === 'replace', model.background ?? 0);
    if (effect === 'blur') {
      ctx.filter = `blur(${options.blurPx ?? BLUR_PX}px)`;
      ctx.drawImage(frame, 0, 0, width, height);
      ctx.filter = 'none';
    } else {
      ctx.fillStyle = `rgb(${(options.replaceColor ?? REPLACE_COLOR).join(',')})`;
      ctx.fillRect(0, 0, width, height);
    }
    ctx.drawImage(person, 0, 0);
  } else if (effect === 'classes') {
    ctx.drawImage(frame, 0, 0, width, height);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(colourLayer(segmentation.classes, colors, model.background ?? 0, layout.width, layout.height, OVERLAY_ALPHA), 0, 0, width, height);
  } else if (effect === 'outlines') {
    ctx.drawImage(frame, 0, 0, width, height);
    const minArea = Math.max(4, MIN_REGION_FRACTION * layout.width * layout.height);
    const labeled = regions(segmentation.classes, layout.width, layout.height, minArea, model.background ?? 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(outlineLayer(labeled, colors, segmentation.classes, layout.width, layout.height), 0, 0, width, height);
    const sx = width / layout.width, sy = height / layout.height;
    const largest = [...labeled.regions].sort((a, b) => b.area - a.area).slice(0, options.maxLabels ?? 12);
    for (const r of largest) drawLabel(ctx, model.labels[r.cls] ?? `class ${r.cls}`, (r.cx + 0.5) * sx, (r.cy + 0.5) * sy, colors[r.cls % colors.length]);
    drawn = { minArea, regions: labeled.regions };
  } else {
    ctx.restore();
    throw new Error(`effect ${JSON.stringify(effect)}: expected one of ${EFFECTS.join(', ')}`);
  }
  ctx.restore();
  return drawn;
}
