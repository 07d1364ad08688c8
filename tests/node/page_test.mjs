// The page of `diffuse serve` in headless Chromium, as a person would use it: generate and watch
// the previews of x_t change, take the result into the Edit tab, paint a mask and inpaint it,
// noise and denoise, upscale with a super-resolution model, look at the schedule. Screenshots of
// each tab go to --out; every check that fails is printed and the exit status is 1.
//
//   node tests/node/page_test.mjs --binary build/diffuse [--checkpoint PATH] [--out DIR]
//
// Without --checkpoint a small model is trained for a few steps first (the page, not the
// model's quality, is under test).
import {mkdirSync, mkdtempSync, rmSync} from "node:fs";
import {tmpdir} from "node:os";
import {join} from "node:path";
import puppeteer from "puppeteer-core";
import {startServer, trainTinyModel} from "./server.mjs";

const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, a, i, all) =>
  a.startsWith("--") ? [...pairs, [a.slice(2), all[i + 1]]] : pairs, []));
const binary = args.binary || "build/diffuse";
const out = args.out || "build/page";
const chromium = args.chromium || "/usr/bin/chromium";
mkdirSync(out, {recursive: true});

const failures = [];
const check = (ok, what) => { console.log(`${ok ? "ok  " : "FAIL"} ${what}`); if (!ok) failures.push(what); };

const scratch = mkdtempSync(join(tmpdir(), "diffuse-page-"));
const checkpoint = args.checkpoint || trainTinyModel(binary, scratch);
// beside it a model trained to upscale (the Edit tab's super-resolution section is for it alone)
const upscaler = trainTinyModel(binary, join(scratch, "upscaler"), ["--image-cond", "super-resolution"]);
const server = await startServer(binary, checkpoint, ["--checkpoint", upscaler]);
const port = server.port;

const browser = await puppeteer.launch({executablePath: chromium, headless: true,
                                        args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]});
try {
  const page = await browser.newPage();
  await page.setViewport({width: 1280, height: 900});
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  await page.goto(`http://127.0.0.1:${port}/`, {waitUntil: "networkidle0"});
  await page.waitForFunction(() => document.querySelectorAll("#model option").length > 0, {timeout: 10000});
  check(true, "the page lists the model");
  const spacings = await page.$$eval("[name=spacing] option", (options) => options.map((o) => o.value));
  const served = (await (await fetch(`http://127.0.0.1:${port}/api/models`)).json()).models[0];
  check(JSON.stringify(spacings) === JSON.stringify(served.spacings) && spacings.includes("quadratic") &&
        (await page.$eval("[name=spacing]", (e) => e.value)) === served.spacing,
        "the spacing select offers the server's spacings, the model's own chosen");
  // an unconditional model: no class, guidance or prompt rows (hidden rows stay hidden under the form's grid)
  const shown = (selector) => page.$eval(selector, (e) => e.offsetParent !== null);
  check(!(await shown("#class-row")) && !(await shown("#guidance-row")) && !(await shown("#prompt-row")),
        "an unconditional model shows no class, guidance or prompt fields");

  // The spread of an image's pixels (0 for a blank one), read through a canvas.
  const spread = (selector) => page.$eval(selector, (img) => {
    const c = document.createElement("canvas");
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const g = c.getContext("2d");
    g.drawImage(img, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    let s = 0, s2 = 0, n = 0;
    for (let i = 0; i < d.length; i += 4) { s += d[i]; s2 += d[i] * d[i]; ++n; }
    return Math.sqrt(Math.max(0, s2 / n - (s / n) ** 2));
  });

  // Generate: every preview of x_t the page shows is recorded as it changes.
  await page.evaluate(() => {
    window.previews = [];
    new MutationObserver(() => window.previews.push(document.getElementById("xt").src))
      .observe(document.getElementById("xt"), {attributes: true, attributeFilter: ["src"]});
  });
  await page.$eval("[name=n]", (e) => { e.value = "16"; });
  await page.$eval("[name=steps]", (e) => { e.value = "100"; });
  await page.$eval("[name=seed]", (e) => { e.value = "7"; });
  await page.click("#generate");
  // mid-run: x_t still noisy, x̂_0 the network's guess
  await page.waitForFunction(() => Number(document.getElementById("progress").value) >= 30, {timeout: 60000, polling: 10});
  await page.screenshot({path: join(out, "generate_running.png")});
  await page.waitForFunction(() => document.getElementById("result").src.startsWith("data:image/png"), {timeout: 60000});
  const previews = await page.evaluate(() => new Set(window.previews).size);
  check(previews >= 10, `the preview of x_t changed while it ran (${previews} different previews)`);
  const status = await page.$eval("#status", (e) => e.textContent);
  check(/16 images, ddim with 100 steps, seed 7/.test(status), `the status names the result: "${status}"`);
  const resultSpread = await spread("#result");
  check(resultSpread > 10, `the result is not blank (pixel spread ${resultSpread.toFixed(1)})`);
  check(await page.$eval("#download", (e) => !e.hidden && e.href.startsWith("data:image/png")), "the result can be downloaded");
  await page.screenshot({path: join(out, "generate.png")});

  // Cancel: a long run stopped from the page.
  await page.$eval("[name=steps]", (e) => { e.value = "1000"; });
  await page.$eval("[name=n]", (e) => { e.value = "64"; });
  await page.click("#generate");
  await page.waitForFunction(() => /step \d+ of/.test(document.getElementById("status").textContent), {timeout: 30000});
  await page.click("#cancel");
  await page.waitForFunction(() => document.getElementById("status").textContent === "cancelled", {timeout: 30000});
  check(true, "a run is cancelled from the page");
  await page.$eval("[name=steps]", (e) => { e.value = "100"; });
  await page.$eval("[name=n]", (e) => { e.value = "16"; });

  // Edit: the first generated image, a painted stroke, inpainting.
  await page.click("[data-tab=edit]");
  await page.click("#edit-from-result");
  await page.waitForFunction(() => edit.image !== null, {timeout: 5000});
  const box = await (await page.$("#edit-canvas")).boundingBox();
  await page.mouse.move(box.x + box.width * 0.3, box.y + box.height * 0.5);
  await page.mouse.down();
  for (let k = 0; k <= 10; ++k) await page.mouse.move(box.x + box.width * (0.3 + 0.04 * k), box.y + box.height * 0.5);
  await page.mouse.up();
  const painted = await page.evaluate(() => edit.mask.reduce((a, b) => a + b, 0));
  check(painted > 10, `the mouse painted the mask (${painted} pixels)`);
  await page.$eval("#edit-steps", (e) => { e.value = "50"; });
  await page.click("#edit-inpaint");
  await page.waitForFunction(() => /inpainted/.test(document.getElementById("edit-status").textContent), {timeout: 60000});
  check(await spread("#edit-result") > 10, "the inpainted image is not blank");
  await page.screenshot({path: join(out, "inpaint.png")});

  // Noise and denoise over a sweep of t: the table of what survives.
  await page.click("#edit-sweep");
  await page.waitForFunction(() => document.querySelectorAll("#sweep-table tbody tr").length === 10, {timeout: 120000});
  const psnrs = await page.$$eval("#sweep-table tbody tr", (rows) => rows.map((r) => Number(r.cells[4].textContent)));
  check(psnrs.every(Number.isFinite), `the sweep's PSNRs are numbers (${psnrs.join(", ")})`);
  check(psnrs[0] > psnrs[9], "less survives at t = T than at t = T/10 (PSNR falls)");
  await page.screenshot({path: join(out, "sweep.png"), fullPage: true});

  // DDIM inversion's round trip.
  await page.click("#edit-invert");
  await page.waitForFunction(() => /inverted to x_T/.test(document.getElementById("edit-status").textContent), {timeout: 60000});
  check(await page.$eval("#edit-latent-figure", (e) => !e.hidden), "the inversion shows its latent");
  check(await spread("#edit-result") > 10, "the decoded image is not blank");

  // The super-resolution section is there only for a model trained for it (this one is not).
  check(await page.$eval("#edit-upscale-section", (e) => e.hidden), "no super-resolution section for this model");

  // Mixing the first two generated images.
  await page.click("#edit-mix");
  await page.waitForFunction(() => /seven mixtures/.test(document.getElementById("edit-status").textContent), {timeout: 60000});
  check(await spread("#edit-result") > 10, "the mixtures are not blank");
  check(await page.$eval("#edit-latent-figure", (e) => e.hidden), "the mixtures show no latent");
  await page.screenshot({path: join(out, "mix.png")});

  // The super-resolution model: its section shows, and its result comes with the bicubic baseline.
  await page.select("#edit-model", "upscaler");
  check(!(await page.$eval("#edit-upscale-section", (e) => e.hidden)), "the super-resolution model shows its section");
  await page.click("#edit-upscale");
  await page.waitForFunction(() => /upscaled ×4/.test(document.getElementById("edit-status").textContent), {timeout: 60000});
  await page.waitForFunction(() => document.getElementById("edit-bicubic").naturalWidth > 0, {timeout: 5000});
  check(await page.$eval("#edit-bicubic-figure", (e) => !e.hidden), "the upscale shows the bicubic image beside its result");
  check(await page.$eval("#edit-latent-figure", (e) => e.hidden), "the inversion's latent is gone with its result");
  check(await spread("#edit-bicubic") > 10 && await spread("#edit-result") > 10, "the bicubic and upscaled images are not blank");
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({path: join(out, "upscale.png")});

  // Interpolation between two seeds.
  await page.click("[data-tab=interpolate]");
  await page.$eval("#interpolate-frames", (e) => { e.value = "6"; });
  await page.$eval("#interpolate-steps", (e) => { e.value = "20"; });
  await page.click("#interpolate-run");
  await page.waitForFunction(() => /6 frames from seed/.test(document.getElementById("interpolate-status").textContent), {timeout: 60000});
  check(await spread("#interpolate-result") > 10, "the interpolation is not blank");
  await page.screenshot({path: join(out, "interpolate.png")});

  // The schedule.
  await page.click("[data-tab=schedule]");
  await new Promise((r) => setTimeout(r, 300));
  const inked = await page.$eval("#schedule-plot", (c) => {
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) n += d[i + 3] > 0 && (d[i] < 200 || d[i + 1] < 200 || d[i + 2] < 200);
    return n;
  });
  check(inked > 2000, `the schedule is drawn (${inked} inked pixels)`);
  await page.click("#forward-run");
  await page.waitForFunction(() => document.querySelectorAll("#forward-strip canvas").length === 8, {timeout: 10000});
  check(true, "the forward process of the image is drawn at 8 timesteps");
  await page.screenshot({path: join(out, "schedule.png")});
  check(pageErrors.length === 0, `no script errors on the page${pageErrors.length ? ": " + pageErrors.join("; ") : ""}`);
} catch (e) {
  check(false, String(e));
} finally {
  await browser.close();
  const {code, signal} = await server.stop();
  check(code === 0, `the server stopped on SIGTERM with status 0 (${code ?? signal})`);
  rmSync(scratch, {recursive: true, force: true});
}
console.log(failures.length ? `${failures.length} check(s) failed` : `all checks passed; screenshots in ${out}`);
process.exit(failures.length ? 1 : 0);
