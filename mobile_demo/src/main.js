// The page: camera (or a still image) -> model-size RGBA -> segmenter -> effect -> HUD.
// URL parameters pick the start state, e.g. ?model=isbi_unet_int8&runtime=litert&accelerator=webgpu
// &effect=replace&source=image. `window.ksegDemo` exposes the state to tests and the console.

import { createSegmenter, liteRtHeapBytes } from './engine.js';
import { drawEffect, EFFECTS, effectsFor, instanceColor, instanceText, panopticColors, segmentText } from './effects.js';

const BASE = import.meta.env.BASE_URL;
const MAX_SIDE = 1280;
const $ = id => document.getElementById(id);
const view = $('view');
const viewCtx = view.getContext('2d', { willReadFrequently: true });
const video = $('video');
const params = new URLSearchParams(location.search);
const SYNC_TIMING = params.get('timing') === '1';

const state = {
  models: [],
  model: null, // index entry
  segmenter: null,
  runtime: params.get('runtime') || 'litert',
  accelerator: params.get('accelerator') || 'wasm',
  effect: params.get('effect') || null,
  source: null, // HTMLVideoElement or ImageBitmap
  sourceKind: 'none',
  facing: params.get('facing') || 'user',
  frames: 0, // frames segmented and drawn with the effect
  displayed: 0, // frames shown (with or without a model)
  error: null,
  loading: null,
  inferenceMs: [],
  stageMs: { prepare: [], effect: [] }, // the rest of a frame: camera frame -> input pixels; drawing
  frameTimes: [],
  instances: null, // the last frame's instance count (instance models), else null
  segments: null, // the last frame's segment count (panoptic models), else null
  captureRequests: [],
  timingLog: null, // while recording (ksegDemo.recordTimings): [time, inference ms, frame ms] per frame
};
const TIMING_LOG_MAX = 100000; // frames kept between two takeTimings() calls; later ones are counted, not kept

// An instance or panoptic model's HUD line ("3 instances", "5 segments"); hidden for semantic models.
const hudInstances = document.createElement('div');
hudInstances.id = 'hud-instances';
hudInstances.hidden = true;
$('hud').append(hudInstances);

// ------------------------------------------------------------------ messages and HUD

function showError(text) {
  state.error = text;
  $('message').textContent = text;
  $('message').hidden = false;
  console.error(text);
}

function clearError() {
  state.error = null;
  $('message').hidden = true;
}

function median(values) {
  if (!values.length) return null;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function fps() {
  const t = state.frameTimes;
  if (t.length < 2) return 0;
  return (1000 * (t.length - 1)) / (t[t.length - 1] - t[0]);
}

function stats() {
  const s = state.segmenter;
  return {
    model: state.model ? state.model.name : null,
    runtime: s ? s.runtime : null,
    accelerator: s ? s.accelerator : null,
    acceleratorLabel: s ? s.label : null,
    fullyAccelerated: s ? s.fullyAccelerated : null,
    inferenceMs: median(state.inferenceMs),
    prepareMs: median(state.stageMs.prepare),
    effectMs: median(state.stageMs.effect),
    fps: fps(),
    frames: state.frames,
    displayed: state.displayed,
    source: state.sourceKind,
    effect: state.effect,
    task: s ? s.layout.task ?? 'semantic' : null,
    outputNames: s?.outputNames ?? null,
    instanceOutputsBy: s?.layout.instance?.by ?? null, // "name" or "shape"
    instances: state.instances,
    panopticOutputsBy: s?.layout.panoptic?.by ?? null,
    segments: state.segments,
    error: state.error,
  };
}

function updateHud() {
  const s = stats();
  $('hud-model').textContent = s.model ? `${s.model}` : 'no model';
  $('hud-accel').textContent = s.acceleratorLabel ? `${s.acceleratorLabel} · ${s.source}` : s.source;
  $('hud-ms').textContent = s.inferenceMs == null ? '– ms' : `${s.inferenceMs.toFixed(1)} ms`;
  $('hud-fps').textContent = `${s.fps.toFixed(1)} FPS`;
  const [count, noun] = s.segments != null ? [s.segments, 'segment'] : [s.instances, 'instance'];
  hudInstances.hidden = count == null;
  hudInstances.textContent = count == null ? '' : `${count} ${noun}${count === 1 ? '' : 's'}`;
}

function updateLegend(segmentation) {
  const legend = $('legend');
  if (!state.model || !['classes', 'outlines', 'panoptic'].includes(state.effect)) {
    delete legend.dataset.key;
    legend.replaceChildren();
    return;
  }
  if (segmentation.segments) { // one chip per segment in its colour: things "name 0.93", stuff "name"
    const colors = panopticColors(segmentation.segments, state.model);
    const texts = segmentation.segments.map(seg => (seg.isthing ? segmentText(state.model, seg)
      : state.model.labels?.[seg.category] ?? `class ${seg.category}`));
    const key = segmentation.segments.map((seg, i) => `${seg.id} ${texts[i]}`).join('\n');
    if (legend.dataset.key === key) return;
    legend.dataset.key = key;
    legend.replaceChildren(...segmentation.segments.map((seg, i) => {
      const chip = document.createElement('span');
      chip.textContent = texts[i];
      chip.style.borderColor = `rgb(${colors.get(seg.id).join(',')})`;
      return chip;
    }));
    return;
  }
  if (segmentation.instances) { // one chip per instance, "name 0.93", in its colour; redrawn when they change
    const key = segmentation.instances.map(inst => `${inst.id} ${instanceText(state.model, inst)}`).join('\n');
    if (legend.dataset.key === key) return;
    legend.dataset.key = key;
    legend.replaceChildren(...segmentation.instances.map(inst => {
      const chip = document.createElement('span');
      chip.textContent = instanceText(state.model, inst);
      chip.style.borderColor = `rgb(${instanceColor(state.model, inst.id).join(',')})`;
      return chip;
    }));
    return;
  }
  delete legend.dataset.key;
  const present = new Set(segmentation.classes);
  const chips = [...present].filter(c => c !== (state.model.background ?? 0)).sort((a, b) => a - b).map(c => {
    const chip = document.createElement('span');
    chip.textContent = state.model.labels[c] ?? `class ${c}`;
    chip.style.borderColor = `rgb(${state.model.colors[c % state.model.colors.length].join(',')})`;
    return chip;
  });
  legend.replaceChildren(...chips);
}

// ------------------------------------------------------------------ models

/** A fallback palette for models picked from disk (index models carry kseg.viz's palette). */
function hueColors(n) {
  return Array.from({ length: n }, (_, k) => {
    if (k === 0) return [0, 0, 0];
    const h = ((k * 0.618034) % 1) * 6, f = h - Math.floor(h), v = 230, p = 60;
    const q = Math.round(v - (v - p) * f), t = Math.round(p + (v - p) * f);
    return [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][Math.floor(h)];
  });
}

async function loadIndex() {
  const url = `${BASE}models/index.json`;
  let response;
  try {
    response = await fetch(url);
  } catch (err) {
    throw new Error(`${url}: could not be fetched (${err.message})`);
  }
  if (!response.ok) {
    throw new Error(`${url}: HTTP ${response.status}. Export models first: npm run models (or python3 -m export.webdemo)`);
  }
  const index = await response.json();
  for (const m of index.models) m.url = `${BASE}models/${m.file}`;
  return index.models;
}

function fillSelect(select, values, labels = values) {
  select.replaceChildren(...values.map((v, i) => new Option(labels[i], v)));
}

async function useModel(entry, bytes) {
  const token = Symbol('load');
  state.loading = token;
  clearError();
  $('hud-model').textContent = `loading ${entry.name}…`;
  let segmenter;
  try {
    segmenter = await createSegmenter(entry, { runtime: state.runtime, accelerator: state.accelerator, bytes });
  } catch (err) {
    if (state.loading === token) {
      state.loading = null;
      showError(err.message || String(err));
    }
    return;
  }
  if (state.loading !== token) {
    segmenter.delete();
    return;
  }
  state.loading = null;
  if (state.segmenter) state.segmenter.delete();
  entry.task ??= segmenter.layout.task;
  if (!entry.colors || entry.colors.length === 0) {
    const k = segmenter.layout.numClasses || 2;
    entry.colors = hueColors(Math.max(k, 2));
    entry.labels = entry.labels?.length ? entry.labels : Array.from({ length: k }, (_, i) => `class ${i}`);
    if (entry.task === 'instance') entry.labels = ['background']; // others read "class c"
    if (entry.task === 'panoptic') entry.labels = ['void'];
  }
  state.model = entry;
  state.instances = null;
  state.segments = null;
  state.segmenter = segmenter;
  state.inferenceMs = [];
  state.stageMs = { prepare: [], effect: [] };
  state.frameTimes = [];
  // An index entry may name its effects, default first (the person model: blur).
  const effects = entry.effects?.length ? entry.effects.filter(e => EFFECTS.includes(e)) : effectsFor(entry.labels.length, entry.task);
  fillSelect($('effect'), effects);
  if (!effects.includes(state.effect)) state.effect = effects[0];
  $('effect').value = state.effect;
  $('model').value = entry.name;
  $('runtime').value = `${state.runtime}/${state.runtime === 'mediapipe' ? 'cpu' : state.accelerator}`;
}

async function pickLocalModel(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  const entry = {
    name: file.name, file: file.name, variant: 'local', labels: [], colors: [],
    activation: 'softmax', input: { quantization: null, shape: null }, output: { quantization: null },
    bytes, // kept: switching runtimes loads it again
  };
  await useModel(entry, bytes);
  if (state.segmenter && state.model === entry) {
    entry.input.shape = [1, state.segmenter.layout.height, state.segmenter.layout.width, state.segmenter.layout.channels];
    if (![...$('model').options].some(o => o.value === entry.name)) $('model').add(new Option(`${file.name} (local)`, entry.name));
    state.models.push(entry);
    $('model').value = entry.name;
  }
}

// ------------------------------------------------------------------ sources

async function startCamera() {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error('camera: this page has no camera access (it needs https or localhost); showing a still image');
  }
  const stream = await navigator.mediaDevices.getUserMedia({
    video: { facingMode: state.facing, width: { ideal: 640 }, height: { ideal: 480 } },
    audio: false,
  });
  if (video.srcObject) video.srcObject.getTracks().forEach(t => t.stop());
  video.srcObject = stream;
  await video.play();
  state.source = video;
  state.sourceKind = 'camera';
}

async function startImage(blobOrUrl) {
  let blob = blobOrUrl;
  if (typeof blobOrUrl === 'string') {
    const response = await fetch(blobOrUrl);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    blob = await response.blob();
  }
  state.source = await createImageBitmap(blob);
  state.sourceKind = 'image';
  if (video.srcObject) {
    video.srcObject.getTracks().forEach(t => t.stop());
    video.srcObject = null;
  }
}

async function startSource() {
  if (params.get('source') !== 'image') {
    try {
      await startCamera();
      return;
    } catch (err) {
      showError(`camera: ${err.message || err.name}; showing a still image instead`);
    }
  }
  const url = `${BASE}models/${state.sampleImage || 'sample.png'}`;
  try {
    await startImage(url);
  } catch (err) {
    showError(`${url}: could not be shown (${err.message || err}); pick a photo`);
  }
}

function sourceSize(source) {
  const w = source.videoWidth || source.width, h = source.videoHeight || source.height;
  const scale = Math.min(1, MAX_SIDE / Math.max(w, h));
  return [Math.round(w * scale), Math.round(h * scale)];
}

// ------------------------------------------------------------------ the frame loop

const frameCanvas = new OffscreenCanvas(1, 1);
const frameCtx = frameCanvas.getContext('2d', { willReadFrequently: true });
const inputCanvas = new OffscreenCanvas(1, 1);
const inputCtx = inputCanvas.getContext('2d', { willReadFrequently: true });

function nextFrame() {
  if (state.sourceKind === 'camera' && 'requestVideoFrameCallback' in video) {
    return new Promise(resolve => video.requestVideoFrameCallback(() => resolve()));
  }
  return new Promise(resolve => requestAnimationFrame(() => resolve()));
}

async function processFrame() {
  const source = state.source;
  if (!source || (state.sourceKind === 'camera' && video.readyState < 2)) return;
  const [w, h] = sourceSize(source);
  if (frameCanvas.width !== w || frameCanvas.height !== h) {
    frameCanvas.width = view.width = w;
    frameCanvas.height = view.height = h;
  }
  const started = performance.now();
  frameCtx.drawImage(source, 0, 0, w, h);
  const segmenter = state.segmenter;
  if (!segmenter) {
    viewCtx.drawImage(frameCanvas, 0, 0);
    state.displayed += 1;
    return;
  }
  const { width, height } = segmenter.layout;
  if (inputCanvas.width !== width || inputCanvas.height !== height) {
    inputCanvas.width = width;
    inputCanvas.height = height;
  }
  inputCtx.drawImage(frameCanvas, 0, 0, width, height);
  const input = inputCtx.getImageData(0, 0, width, height).data;
  const prepared = performance.now();
  const segmentation = await segmenter.segment(input);
  if (segmenter !== state.segmenter) return;
  const drawing = performance.now();
  const regions = drawEffect(viewCtx, frameCanvas, segmentation, segmenter.layout, state.model, state.effect);
  // With ?timing=1 a 1-pixel read waits for the drawing, so the effect's time is its own. It
  // stalls a GPU-backed canvas, so an ordinary page does not pay it on every frame.
  if (SYNC_TIMING) viewCtx.getImageData(0, 0, 1, 1);
  state.frames += 1;
  state.displayed += 1;
  for (const [list, ms] of [[state.inferenceMs, segmentation.ms], [state.stageMs.prepare, prepared - started],
    [state.stageMs.effect, performance.now() - drawing]]) {
    list.push(ms);
    if (list.length > 30) list.shift();
  }
  const now = performance.now();
  if (state.timingLog) {
    if (state.timingLog.length < TIMING_LOG_MAX) state.timingLog.push([performance.timeOrigin + now, segmentation.ms, now - started]);
    else state.timingLog.dropped += 1;
  }
  state.frameTimes.push(now);
  while (state.frameTimes.length > 2 && now - state.frameTimes[0] > 2000) state.frameTimes.shift();
  state.instances = segmentation.instances ? segmentation.instances.length : null;
  state.segments = segmentation.segments ? segmentation.segments.length : null;
  updateHud(); // now, so the HUD never shows another frame's figures than stats()
  if (state.frames % 10 === 1 || segmentation.instances || segmentation.segments) updateLegend(segmentation);
  if (state.captureRequests.length) {
    const requests = state.captureRequests.splice(0);
    const capture = {
      width: w, height: h, inputWidth: width, inputHeight: height,
      input, segmentation, regions, effect: state.effect,
      frame: frameCtx.getImageData(0, 0, w, h).data,
      output: viewCtx.getImageData(0, 0, w, h).data,
      legend: [...$('legend').children].map(chip => ({ text: chip.textContent, color: chip.style.borderColor })),
      stats: stats(),
    };
    requests.forEach(resolve => resolve(capture));
  }
}

async function loop() {
  for (;;) {
    await nextFrame();
    try {
      await processFrame();
    } catch (err) {
      showError(`inference failed: ${err.message || err}`);
      if (state.segmenter) state.segmenter.delete();
      state.segmenter = null;
    }
    updateHud();
  }
}

// ------------------------------------------------------------------ controls

function wireControls() {
  $('model').addEventListener('change', () => {
    const entry = state.models.find(m => m.name === $('model').value);
    if (entry) useModel(entry);
  });
  $('effect').addEventListener('change', () => { state.effect = $('effect').value; });
  $('runtime').addEventListener('change', () => {
    const [runtime, accelerator] = $('runtime').value.split('/');
    state.runtime = runtime;
    state.accelerator = runtime === 'mediapipe' ? 'wasm' : accelerator;
    if (state.model) useModel(state.model, state.model.bytes);
  });
  $('camera').addEventListener('click', () => startCamera().then(clearError, err => showError(`camera: ${err.message || err.name}`)));
  $('flip').addEventListener('click', () => {
    state.facing = state.facing === 'user' ? 'environment' : 'user';
    startCamera().catch(err => showError(`camera: ${err.message || err.name}`));
  });
  $('photo').addEventListener('change', e => {
    const file = e.target.files[0];
    if (file) startImage(file).then(clearError, err => showError(`${file.name}: not an image this browser can decode (${err.message || err})`));
  });
  $('model-file').addEventListener('change', e => { if (e.target.files[0]) pickLocalModel(e.target.files[0]); });
}

// ------------------------------------------------------------------ test and console hooks

function b64(typed) {
  const bytes = new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

window.ksegDemo = {
  stats,
  ready: () => state.frames > 0,
  /** The next processed frame: its pixels, model input, result and the drawn output (base64). */
  async capture() {
    const c = await new Promise(resolve => state.captureRequests.push(resolve));
    return {
      width: c.width, height: c.height, inputWidth: c.inputWidth, inputHeight: c.inputHeight,
      input: b64(c.input), frame: b64(c.frame), output: b64(c.output),
      classes: b64(c.segmentation.classes), foreground: b64(c.segmentation.foreground),
      scores: c.segmentation.scores ? b64(c.segmentation.scores) : null,
      instances: c.segmentation.instances ?? null,
      instanceIds: c.segmentation.instanceIds ? b64(c.segmentation.instanceIds) : null,
      segments: c.segmentation.segments ?? null,
      panopticIds: c.segmentation.panopticIds ? b64(c.segmentation.panopticIds) : null,
      effect: c.effect, regions: c.regions, legend: c.legend,
      stats: c.stats,
    };
  },
  /** Runs the current model with another runtime/accelerator on RGBA pixels (base64). */
  async runWith(runtime, accelerator, rgbaBase64) {
    const rgba = Uint8Array.from(atob(rgbaBase64), ch => ch.charCodeAt(0));
    const segmenter = await createSegmenter(state.model, { runtime, accelerator, bytes: state.model.bytes });
    try {
      const r = await segmenter.segment(rgba);
      return {
        classes: b64(r.classes), foreground: b64(r.foreground), scores: r.scores ? b64(r.scores) : null,
        instances: r.instances ?? null, instanceIds: r.instanceIds ? b64(r.instanceIds) : null,
        segments: r.segments ?? null, panopticIds: r.panopticIds ? b64(r.panopticIds) : null,
        fullyAccelerated: segmenter.fullyAccelerated, label: segmenter.label,
      };
    } finally {
      segmenter.delete();
    }
  },
  liteRtHeapBytes,
  /** Starts (true) or stops keeping each frame's [epoch ms, inference ms, frame ms] for takeTimings(). */
  recordTimings(on = true) {
    state.timingLog = on ? Object.assign([], { dropped: 0 }) : null;
  },
  /** The frames' timings kept since the last call ({timings, dropped}); the log starts empty again. */
  takeTimings() {
    const log = state.timingLog ?? Object.assign([], { dropped: 0 });
    if (state.timingLog) state.timingLog = Object.assign([], { dropped: 0 });
    return { timings: log, dropped: log.dropped };
  },
  setEffect(effect) {
    if (!EFFECTS.includes(effect)) throw new Error(`effect ${effect}: expected one of ${EFFECTS}`);
    state.effect = effect;
  },
};

// ------------------------------------------------------------------ start

async function main() {
  wireControls();
  loop();
  try {
    const index = await loadIndex();
    state.models = index;
    fillSelect($('model'), index.map(m => m.name), index.map(m => `${m.title} · ${m.variant}`));
    state.sampleImage = index.find(m => m.sample)?.sample;
  } catch (err) {
    showError(err.message);
  }
  await startSource();
  const wanted = params.get('model');
  const entry = state.models.find(m => m.name === wanted) ?? state.models[0];
  if (wanted && entry && entry.name !== wanted) {
    showError(`model ${JSON.stringify(wanted)}: not in models/index.json (have ${state.models.map(m => m.name).join(', ')})`);
  }
  if (entry) await useModel(entry);
}

main();
