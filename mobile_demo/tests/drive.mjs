// Drives the demo in headless Chromium (playwright-core + Debian's /usr/bin/chromium) through a
// list of steps and writes what it saw as JSON. The assertions live in tests/mobile_demo/test_mobile_demo.py.
//
//   node tests/drive.mjs plan.json result.json
//
// plan: {url, video?: "frames.y4m", webgpu?: bool, timeoutMs?, steps: [...]}; steps:
//   {"wait": "ready" | "error", "frames"?: n}   wait for n processed frames, or an error message
//   {"wait": "model", "name": "x", "runtime"?}  wait until model x has segmented a frame
//   {"runtime": "mediapipe/cpu"}                 pick a runtime (a value of the #runtime select)
//   {"capture": "key"}                           the next frame's pixels, input, result, output
//   {"runWith": [runtime, accelerator], "on": "key", "as": "key2"}  re-run a captured input
//   {"effect": "blur"}                           switch the effect
//   {"model": "name"}                            pick a model and wait for its first frames
//   {"upload": "#model-file", "file": path}      pick a file in a file input
//   {"stats": "key"}                             the HUD's figures, its text and the legend's chips
//   {"measure": "key", "seconds": s}             frames and inference times over s seconds
//   {"soak": "key", "seconds": s, "interval": i} every i s for s s: the frames' timings since the
//                                                last sample and the JS heap after a forced GC
//   {"screenshot": path}
import { readFileSync, writeFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const [planPath, resultPath] = process.argv.slice(2);
const plan = JSON.parse(readFileSync(planPath, 'utf8'));
const timeout = plan.timeoutMs ?? 120000;

const args = [
  '--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--no-first-run', '--disable-quic', '--autoplay-policy=no-user-gesture-required',
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
];
if (plan.video) args.push(`--use-file-for-fake-video-capture=${plan.video}`);
if (plan.webgpu) args.push('--enable-unsafe-webgpu', '--use-webgpu-adapter=swiftshader', '--enable-features=Vulkan');

const result = { console: [], pageErrors: [] };

// Runs the page for `seconds`, sampling every `interval` s: the frames' [epoch ms, inference ms,
// frame ms] since the last sample (ksegDemo.takeTimings), V8's heap after a full GC (CDP) and
// the size of LiteRT.js's WASM memory.
async function soak(context, page, seconds, interval) {
  const cdp = await context.newCDPSession(page);
  await page.evaluate(() => window.ksegDemo.recordTimings(true));
  const samples = [], timings = [];
  let dropped = 0;
  const end = Date.now() + seconds * 1000;
  while (Date.now() < end) {
    await page.waitForTimeout(Math.min(interval * 1000, Math.max(0, end - Date.now())));
    const got = await page.evaluate(() => ({
      ...window.ksegDemo.takeTimings(), frames: window.ksegDemo.stats().frames, wasm: window.ksegDemo.liteRtHeapBytes(),
    }));
    for (const t of got.timings) timings.push(t);
    dropped += got.dropped;
    await cdp.send('HeapProfiler.collectGarbage');
    const heap = await cdp.send('Runtime.getHeapUsage');
    samples.push({ t: Date.now(), frames: got.frames, heapUsed: heap.usedSize, heapTotal: heap.totalSize, wasmHeap: got.wasm });
  }
  await page.evaluate(() => window.ksegDemo.recordTimings(false));
  await cdp.detach();
  return { samples, timings, dropped };
}
const browser = await chromium.launch({ executablePath: plan.chromium ?? '/usr/bin/chromium', headless: true, args });
try {
  const context = await browser.newContext({ viewport: plan.viewport ?? { width: 390, height: 844 }, hasTouch: true });
  await context.grantPermissions(['camera']);
  const page = await context.newPage();
  page.on('console', m => result.console.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', e => result.pageErrors.push(String(e)));
  await page.goto(plan.url, { timeout });
  result.crossOriginIsolated = await page.evaluate(() => self.crossOriginIsolated);
  for (const step of plan.steps) {
    if (step.wait === 'ready') {
      const n = step.frames ?? 1;
      await page.waitForFunction(k => window.ksegDemo && window.ksegDemo.stats().frames >= k, n, { timeout });
    } else if (step.wait === 'model') {
      await page.waitForFunction(([name, runtime]) => {
        const s = window.ksegDemo.stats();
        return s.model === name && s.inferenceMs !== null && (!runtime || s.runtime === runtime);
      }, [step.name, step.runtime], { timeout });
    } else if (step.runtime && !step.wait) {
      await page.selectOption('#runtime', step.runtime);
    } else if (step.wait === 'error') {
      await page.waitForSelector('#message:not([hidden])', { timeout });
    } else if (step.capture) {
      result[step.capture] = await page.evaluate(() => window.ksegDemo.capture());
    } else if (step.runWith) {
      const input = result[step.on].input;
      result[step.as] = await page.evaluate(([r, a, i]) => window.ksegDemo.runWith(r, a, i), [...step.runWith, input]);
    } else if (step.effect) {
      await page.selectOption('#effect', step.effect);
    } else if (step.model) {
      await page.selectOption('#model', step.model);
      await page.waitForFunction(name => {
        const s = window.ksegDemo.stats();
        return s.model === name && s.inferenceMs !== null;
      }, step.model, { timeout });
    } else if (step.upload) {
      await page.setInputFiles(step.upload, step.file);
    } else if (step.stats) {
      result[step.stats] = await page.evaluate(() => { // one task: the figures, HUD and legend of one frame
        const m = document.getElementById('message');
        return {
          ...window.ksegDemo.stats(),
          message: m.hidden ? null : m.textContent,
          hud: document.getElementById('hud').innerText,
          legend: [...document.querySelectorAll('#legend span')].map(
            chip => ({ text: chip.textContent, color: chip.style.borderColor })),
          modelMenu: [...document.querySelectorAll('#model option')].map(o => o.value),
          effectMenu: [...document.querySelectorAll('#effect option')].map(o => o.value),
        };
      });
    } else if (step.measure) {
      result[step.measure] = await page.evaluate(async seconds => {
        const start = window.ksegDemo.stats().frames;
        const t0 = performance.now();
        await new Promise(r => setTimeout(r, seconds * 1000));
        const s = window.ksegDemo.stats();
        return { frames: s.frames - start, seconds: (performance.now() - t0) / 1000, stats: s };
      }, step.seconds);
    } else if (step.soak) {
      result[step.soak] = await soak(context, page, step.seconds, step.interval ?? 10);
    } else if (step.screenshot) {
      await page.screenshot({ path: step.screenshot, fullPage: true });
    } else {
      throw new Error(`unknown step ${JSON.stringify(step)}`);
    }
  }
} catch (err) {
  result.failure = String(err.stack || err);
} finally {
  await browser.close();
  writeFileSync(resultPath, JSON.stringify(result));
}
process.exit(result.failure ? 1 : 0);
