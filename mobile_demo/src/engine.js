// Runs a kseg segmentation .tflite on one frame: LiteRT.js (WASM/XNNPACK or WebGPU) or
// MediaPipe's Image Segmenter on the same file. Both give the same result object:
//   {classes: Uint8Array [H*W], foreground: Float32Array [H*W] (probability of "not background"),
//    scores: Float32Array [H*W*K] or null (the model's raw float output), ms}
// Models are described by an entry of models/index.json (written by `python -m export.webdemo`).
//
// Instance models (kseg's Mask R-CNN, LiteRT.js only) have five outputs, found by signature
// name or else by shape and dtype (D detection slots, H x W the input size):
//   boxes [1, D, 4] (y1, x1, y2, x2) pixels, scores [1, D], classes [1, D] int32 (1..K, 0 pads),
//   masks [1, D, H, W] probabilities, num_detections [1] int32.
// Their result adds, at the input size H x W:
//   instances    [{id, cls, score, box}] the detections scoring >= the entry's score_threshold
//                (0.5), best first; id = detection slot + 1
//   instanceIds  Int32Array [H*W]: the id of the highest-scoring kept detection whose mask is
//                >= mask_threshold (0.5) at the pixel (ties: the lower id), else 0
//   classes      that detection's class (0 where none)
//   foreground   that detection's mask probability; where none, the largest mask probability of
//                any kept detection (below the threshold), so blur and replace get soft edges
//
// Panoptic models (kseg's Panoptic FPN and MaskFormer, LiteRT.js only) are found by signature
// name (N segment slots): panoptic [1, H, W] int32 segment ids (0 void, 1..num_segments),
// segment_category [1, N] int32, segment_is_thing [1, N] bool, segment_score [1, N] float32,
// num_segments [1] int32 (export.video_detections.PANOPTIC_OUTPUTS; a Panoptic FPN also has the
// instance outputs: it is read as panoptic). Their result adds, at the input size H x W:
//   segments     [{id, category, isthing, score}] for ids 1..num_segments, in id order
//   panopticIds  Int32Array [H*W]: the model's segment id (ids outside 1..num_segments read 0)
//   classes      the category of the thing segment at the pixel (0 elsewhere)
//   foreground   1 on thing pixels, 0 elsewhere (blur and replace keep the things)
// Only these five outputs are copied out of the runtime; the others (masks, logits) are not read.

import { getGlobalLiteRt, isWebGPUSupported, loadAndCompile, loadLiteRt, Tensor } from '@litertjs/core';
import { FilesetResolver, ImageSegmenter } from '@mediapipe/tasks-vision';

const BASE = import.meta.env.BASE_URL;
let liteRtReady = null;

/** Loads the LiteRT.js WASM runtime once (threaded when the page is cross-origin isolated). */
export function initLiteRt() {
  if (!liteRtReady) {
    const threads = self.crossOriginIsolated === true;
    liteRtReady = loadLiteRt(`${BASE}vendor/litert/`, { threads }).then(() => ({ threads }));
  }
  return liteRtReady;
}

/** Bytes of LiteRT.js's WASM memory (it only grows), or null before the runtime is loaded. */
export function liteRtHeapBytes() {
  try {
    return getGlobalLiteRt().liteRtWasm.HEAPU8.length;
  } catch {
    return null;
  }
}

export function webGpuAvailable() {
  return typeof navigator !== 'undefined' && 'gpu' in navigator && isWebGPUSupported();
}

/** A model file's bytes, with an error that names the file and the HTTP status. */
export async function fetchModel(url) {
  let response;
  try {
    response = await fetch(url);
  } catch (err) {
    throw new Error(`${url}: could not be fetched (${err.message})`);
  }
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}; expected the .tflite file`);
  return new Uint8Array(await response.arrayBuffer());
}

/** Throws unless `bytes` look like a TFLite flatbuffer (file identifier "TFL3" at offset 4). */
export function checkTflite(bytes, name) {
  const id = bytes.length >= 8 ? String.fromCharCode(...bytes.subarray(4, 8)) : '';
  if (id !== 'TFL3') {
    const seen = bytes.length < 8 ? `${bytes.length} bytes` : `file identifier ${JSON.stringify(id)}`;
    throw new Error(`${name}: not a TFLite model (${seen}; expected "TFL3" at byte 4)`);
  }
}

function shapeOf(detail) {
  return Array.from(detail.shape);
}

export const INSTANCE_OUTPUTS = ['boxes', 'scores', 'classes', 'masks', 'num_detections'];
export const PANOPTIC_OUTPUTS = ['panoptic', 'segment_category', 'segment_is_thing', 'segment_score', 'num_segments'];

/**
 * The outputs of a panoptic model: {index: {panoptic, segment_category, ...} (output positions),
 * segments: N, by: "name"}, or null when it lacks one of the five names.
 */
export function panopticLayout(outputs, height, width, name) {
  const index = {};
  outputs.forEach((o, i) => { if (PANOPTIC_OUTPUTS.includes(o.name)) index[o.name] = i; });
  if (!PANOPTIC_OUTPUTS.every(k => k in index)) return null;
  const shapes = outputs.map(shapeOf);
  const n = shapes[index.segment_category][1];
  const expected = {
    panoptic: [1, height, width], segment_category: [1, n], segment_is_thing: [1, n], segment_score: [1, n],
    num_segments: [1],
  };
  for (const [key, want] of Object.entries(expected)) {
    const seen = shapes[index[key]];
    if (seen.length !== want.length || seen.some((v, i) => v !== want[i])) {
      throw new Error(`${name}: panoptic output ${key} has shape [${seen}]; expected [${want}] (kseg's Panoptic FPN or MaskFormer at batch 1)`);
    }
  }
  return { index, segments: n, by: 'name' };
}

/**
 * The outputs of a Mask R-CNN: {index: {boxes, scores, classes, masks, num_detections} (output
 * positions), detections: D, by: "name" | "shape"}, or null when the outputs are not those.
 */
export function instanceLayout(outputs, height, width, name) {
  const shapes = outputs.map(shapeOf);
  const named = {};
  outputs.forEach((o, i) => { if (INSTANCE_OUTPUTS.includes(o.name)) named[o.name] = i; });
  let index = null, by = 'name';
  if (INSTANCE_OUTPUTS.every(k => k in named)) {
    index = named;
  } else {
    const only = test => {
      const hits = outputs.map((o, i) => (test(o, shapes[i]) ? i : -1)).filter(i => i >= 0);
      return hits.length === 1 ? hits[0] : -1;
    };
    const masks = only((o, s) => o.dtype === 'float32' && s.length === 4 && s[0] === 1 && s[2] === height && s[3] === width);
    if (masks < 0 || outputs.length !== 5) return null;
    const d = shapes[masks][1];
    index = {
      boxes: only((o, s) => o.dtype === 'float32' && s.length === 3 && s[1] === d && s[2] === 4),
      scores: only((o, s) => o.dtype === 'float32' && s.length === 2 && s[1] === d),
      classes: only((o, s) => o.dtype === 'int32' && s.length === 2 && s[1] === d),
      masks,
      num_detections: only((o, s) => o.dtype === 'int32' && s.length === 1),
    };
    if (Object.values(index).some(i => i < 0)) return null;
    by = 'shape';
  }
  const d = shapes[index.scores][1];
  const expected = {
    boxes: [1, d, 4], scores: [1, d], classes: [1, d], masks: [1, d, height, width], num_detections: [1],
  };
  for (const [key, want] of Object.entries(expected)) {
    const seen = shapes[index[key]];
    if (seen.length !== want.length || seen.some((v, i) => v !== want[i])) {
      throw new Error(`${name}: instance output ${key} has shape [${seen}]; expected [${want}] (kseg's Mask R-CNN at batch 1)`);
    }
  }
  return { index, detections: d, by };
}

/** Checks the tensors of a compiled model against what a kseg segmenter has; returns its layout. */
export function segmenterLayout(inputs, outputs, name) {
  if (inputs.length !== 1) throw new Error(`${name}: ${inputs.length} inputs; expected one image input`);
  const shape = shapeOf(inputs[0]);
  if (shape.length !== 4 || shape[0] !== 1 || ![1, 3].includes(shape[3])) {
    throw new Error(`${name}: input shape [${shape}]; expected [1, H, W, 1 or 3]`);
  }
  if (!['float32', 'uint8'].includes(inputs[0].dtype)) {
    throw new Error(`${name}: input dtype ${inputs[0].dtype}; expected float32 or uint8`);
  }
  const [, height, width, channels] = shape;
  const panoptic = panopticLayout(outputs, height, width, name);
  if (panoptic) {
    return {
      height, width, channels, dtype: inputs[0].dtype, task: 'panoptic', panoptic,
      scoreIndex: -1, mapIndex: -1, numClasses: null, read: Object.values(panoptic.index),
    };
  }
  const instance = instanceLayout(outputs, height, width, name);
  if (instance) {
    return {
      height, width, channels, dtype: inputs[0].dtype, task: 'instance', instance,
      scoreIndex: -1, mapIndex: -1, numClasses: null,
    };
  }
  const outShapes = outputs.map(shapeOf);
  const scoreIndex = outShapes.findIndex(s => s.length === 4 && s[1] === height && s[2] === width);
  const mapIndex = outputs.findIndex((o, i) => o.dtype === 'int32' && outShapes[i].length === 3);
  if (scoreIndex < 0 && mapIndex < 0) {
    const seen = outShapes.map(s => `[${s}]`).join(', ');
    throw new Error(`${name}: outputs ${seen}; expected [1, ${height}, ${width}, K] scores or a [1, ${height}, ${width}] class map`);
  }
  return {
    height, width, channels, dtype: inputs[0].dtype, task: 'semantic',
    scoreIndex, mapIndex,
    numClasses: scoreIndex >= 0 ? outShapes[scoreIndex][3] : null,
  };
}

/** RGBA pixels (ImageData.data) -> the model's input array (raw [0, 255] pixels, kseg's convention). */
export function toInput(rgba, layout, quantization) {
  const n = layout.height * layout.width;
  const out = layout.dtype === 'uint8' ? new Uint8Array(n * layout.channels) : new Float32Array(n * layout.channels);
  const [scale, zero] = quantization || [0, 0];
  const put = scale ? v => Math.round(v / scale + zero) : v => v;
  for (let i = 0; i < n; i++) {
    const r = rgba[4 * i], g = rgba[4 * i + 1], b = rgba[4 * i + 2];
    if (layout.channels === 3) {
      out[3 * i] = put(r); out[3 * i + 1] = put(g); out[3 * i + 2] = put(b);
    } else {
      out[i] = put(0.299 * r + 0.587 * g + 0.114 * b);
    }
  }
  return out;
}

/** Per-pixel class (argmax) and foreground probability (1 - p(background)) from [H*W*K] scores. */
export function decodeScores(scores, numClasses, activation, quantization, background = 0) {
  const n = scores.length / numClasses;
  const classes = new Uint8Array(n);
  const foreground = new Float32Array(n);
  const [scale, zero] = quantization || [0, 0];
  const value = scale ? v => (v - zero) * scale : v => v;
  for (let i = 0; i < n; i++) {
    const base = i * numClasses;
    let best = 0, bestValue = -Infinity;
    for (let k = 0; k < numClasses; k++) {
      const v = value(scores[base + k]);
      if (v > bestValue) { bestValue = v; best = k; }
    }
    classes[i] = best;
    if (numClasses === 1) {
      const p = activation === 'none' ? bestValue : 1 / (1 + Math.exp(-bestValue));
      classes[i] = p > 0.5 ? 1 : 0;
      foreground[i] = p;
    } else if (activation === 'softmax') {
      let sum = 0;
      for (let k = 0; k < numClasses; k++) sum += Math.exp(value(scores[base + k]) - bestValue);
      foreground[i] = 1 - Math.exp(value(scores[base + background]) - bestValue) / sum;
    } else {
      foreground[i] = 1 - value(scores[base + background]);
    }
  }
  return { classes, foreground };
}

/** Instances, the instance id map and per-pixel class/foreground from a Mask R-CNN's outputs
 * (typed arrays in output order; see the top of this file). */
export function decodeInstances(arrays, layout, { scoreThreshold = 0.5, maskThreshold = 0.5 } = {}) {
  const { index, detections } = layout.instance;
  const boxes = arrays[index.boxes], scores = arrays[index.scores], labels = arrays[index.classes];
  const masks = arrays[index.masks];
  const count = Math.max(0, Math.min(detections, arrays[index.num_detections][0]));
  const instances = [];
  for (let d = 0; d < count; d++) {
    if (labels[d] < 1 || !(scores[d] >= scoreThreshold)) continue;
    instances.push({ id: d + 1, cls: labels[d], score: scores[d], box: Array.from(boxes.subarray(4 * d, 4 * d + 4)) });
  }
  instances.sort((a, b) => b.score - a.score || a.id - b.id);
  const n = layout.height * layout.width;
  const instanceIds = new Int32Array(n);
  const classes = new Uint8Array(n);
  const foreground = new Float32Array(n);
  for (const { id, cls } of instances) { // best first: a pixel keeps the first detection that claims it
    const mask = masks.subarray((id - 1) * n, id * n);
    for (let p = 0; p < n; p++) {
      if (instanceIds[p] !== 0) continue;
      const m = mask[p];
      if (m >= maskThreshold) {
        instanceIds[p] = id; classes[p] = cls; foreground[p] = m;
      } else if (m > foreground[p]) {
        foreground[p] = m;
      }
    }
  }
  return { classes, foreground, scores: null, instances, instanceIds };
}

/** Segments, the segment id map and per-pixel thing class/foreground from a panoptic model's
 * outputs (typed arrays by output position; see the top of this file). */
export function decodePanoptic(arrays, layout) {
  const { index, segments: slots } = layout.panoptic;
  const count = Math.max(0, Math.min(slots, arrays[index.num_segments][0]));
  const category = arrays[index.segment_category], thing = arrays[index.segment_is_thing];
  const score = arrays[index.segment_score];
  const segments = [];
  for (let k = 0; k < count; k++) {
    segments.push({ id: k + 1, category: category[k], isthing: thing[k] !== 0, score: score[k] });
  }
  const map = arrays[index.panoptic];
  const n = layout.height * layout.width;
  const panopticIds = new Int32Array(n);
  const classes = new Uint8Array(n);
  const foreground = new Float32Array(n);
  for (let p = 0; p < n; p++) {
    const id = map[p];
    if (id < 1 || id > count) continue;
    panopticIds[p] = id;
    if (segments[id - 1].isthing) {
      classes[p] = segments[id - 1].category;
      foreground[p] = 1;
    }
  }
  return { classes, foreground, scores: null, segments, panopticIds };
}

/** A kseg model compiled by LiteRT.js for `accelerator` ("wasm" or "webgpu"). */
export class LiteRtSegmenter {
  static async create(entry, bytes, accelerator) {
    const { threads } = await initLiteRt();
    checkTflite(bytes, entry.file);
    if (accelerator === 'webgpu' && !webGpuAvailable()) {
      throw new Error('accelerator webgpu: this browser has no WebGPU adapter; use wasm');
    }
    let model;
    try {
      model = await loadAndCompile(bytes, { accelerator });
    } catch (err) {
      const text = String(err.message || err);
      const hint = /BOOL/.test(text) ? '; a kseg panoptic export has a bool output (segment_is_thing): add it with '
        + 'python3 -m export.webdemo --panoptic, which gives it as int32' : '';
      throw new Error(`${entry.file}: LiteRT.js could not load it (${text})${hint}`);
    }
    const layout = segmenterLayout(model.getInputDetails(), model.getOutputDetails(), entry.file);
    return new LiteRtSegmenter(entry, model, layout, accelerator, threads);
  }

  constructor(entry, model, layout, accelerator, threads) {
    this.entry = entry;
    this.model = model;
    this.layout = layout;
    this.runtime = 'LiteRT.js';
    this.accelerator = accelerator;
    this.threads = threads;
    this.fullyAccelerated = accelerator === 'webgpu' ? model.isFullyAccelerated : null;
    this.outputNames = model.getOutputDetails().map(d => d.name); // the signature's names
  }

  get label() {
    if (this.accelerator === 'webgpu') return `WebGPU${this.fullyAccelerated ? '' : ' (partly WASM)'}`;
    return `WASM${this.threads ? ' + threads' : ''}`;
  }

  /** Segments RGBA pixels of the model's input size. */
  async segment(rgba) {
    const { layout, entry } = this;
    const started = performance.now();
    const input = new Tensor(toInput(rgba, layout, entry.input.quantization),
      [1, layout.height, layout.width, layout.channels]);
    let outputs;
    try {
      outputs = await this.model.run(input);
    } finally {
      input.delete();
    }
    const arrays = [];
    for (const [i, t] of outputs.entries()) { // only the outputs the task reads leave the runtime
      if (layout.read && !layout.read.includes(i)) {
        arrays.push(null);
        t.delete();
        continue;
      }
      const host = t.accelerator === 'wasm' ? t : await t.moveTo('wasm');
      arrays.push(host.toTypedArray().slice());
      host.delete();
    }
    const ms = performance.now() - started;
    return { ...interpret(arrays, layout, entry), ms };
  }

  delete() {
    this.model.delete();
  }
}

function interpret(arrays, layout, entry) {
  if (layout.task === 'panoptic') return decodePanoptic(arrays, layout);
  if (layout.task === 'instance') {
    return decodeInstances(arrays, layout, {
      scoreThreshold: entry.score_threshold ?? 0.5, maskThreshold: entry.mask_threshold ?? 0.5,
    });
  }
  if (layout.mapIndex >= 0) {
    const map = arrays[layout.mapIndex];
    const classes = Uint8Array.from(map);
    const confidence = arrays.find((a, i) => i !== layout.mapIndex && a instanceof Float32Array);
    const foreground = new Float32Array(classes.length);
    for (let i = 0; i < classes.length; i++) {
      const c = confidence ? confidence[i] : 1;
      foreground[i] = classes[i] === (entry.background ?? 0) ? 1 - c : c;
    }
    return { classes, foreground, scores: null };
  }
  const scores = arrays[layout.scoreIndex];
  const decoded = decodeScores(scores, layout.numClasses, entry.activation, entry.output.quantization, entry.background ?? 0);
  return { ...decoded, scores: scores instanceof Float32Array ? scores : null };
}

let visionFileset = null;

/** The same model file run by MediaPipe's Image Segmenter (labels and normalization from its metadata). */
export class MediaPipeSegmenter {
  static async create(entry, bytes) {
    checkTflite(bytes, entry.file);
    visionFileset ??= FilesetResolver.forVisionTasks(`${BASE}vendor/mediapipe`);
    let segmenter;
    try {
      segmenter = await ImageSegmenter.createFromOptions(await visionFileset, {
        baseOptions: { modelAssetBuffer: bytes, delegate: 'CPU' },
        runningMode: 'VIDEO',
        outputCategoryMask: true,
        outputConfidenceMasks: true,
      });
    } catch (err) {
      throw new Error(`${entry.file}: MediaPipe could not load it (${err.message || err})`);
    }
    return new MediaPipeSegmenter(entry, segmenter);
  }

  constructor(entry, segmenter) {
    this.entry = entry;
    this.segmenter = segmenter;
    const [, height, width, channels] = entry.input.shape;
    this.layout = { height, width, channels };
    this.runtime = 'MediaPipe';
    this.accelerator = 'cpu';
    this.label = 'MediaPipe CPU';
    this.fullyAccelerated = null;
    this.timestamp = 0;
  }

  async segment(rgba) {
    const { height, width } = this.layout;
    const started = performance.now();
    const image = new ImageData(new Uint8ClampedArray(rgba), width, height);
    this.timestamp = Math.max(this.timestamp + 1, Math.floor(performance.now()));
    let result;
    this.segmenter.segmentForVideo(image, this.timestamp, r => {
      const classes = r.categoryMask.getAsUint8Array().slice();
      const background = r.confidenceMasks[this.entry.background ?? 0].getAsFloat32Array();
      const foreground = new Float32Array(background.length);
      for (let i = 0; i < foreground.length; i++) foreground[i] = 1 - background[i];
      result = { classes, foreground, scores: null };
    });
    return { ...result, ms: performance.now() - started };
  }

  delete() {
    this.segmenter.close();
  }
}

/** Loads `entry` (an index.json entry; `bytes` optional) with a runtime: "litert" or "mediapipe". */
export async function createSegmenter(entry, { runtime = 'litert', accelerator = 'wasm', bytes } = {}) {
  if (runtime === 'mediapipe' && (entry.task === 'instance' || entry.task === 'panoptic')) {
    const kind = entry.task === 'instance' ? 'an instance model (Mask R-CNN)' : 'a panoptic model (Panoptic FPN, MaskFormer)';
    throw new Error(`${entry.file}: ${kind} runs on LiteRT.js only; MediaPipe's Image Segmenter takes semantic models`);
  }
  bytes ??= await fetchModel(entry.url);
  if (runtime === 'mediapipe') return MediaPipeSegmenter.create(entry, bytes);
  if (runtime !== 'litert') throw new Error(`runtime ${JSON.stringify(runtime)}: expected litert or mediapipe`);
  return LiteRtSegmenter.create(entry, bytes, accelerator);
}
