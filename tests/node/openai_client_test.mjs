// OpenAI's own Node client library, unchanged, against `diffuse serve`'s images API: the models,
// a generation, an edit sent as multipart, and the errors as the client reads them (status,
// message, the field). Exit status 1 when a check fails.
//
//   node tests/node/openai_client_test.mjs --binary build/diffuse [--checkpoint PATH]
import {mkdtempSync, rmSync} from "node:fs";
import {tmpdir} from "node:os";
import {join} from "node:path";
import OpenAI, {toFile} from "openai";
import {startServer, trainTinyModel} from "./server.mjs";

const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, a, i, all) =>
  a.startsWith("--") ? [...pairs, [a.slice(2), all[i + 1]]] : pairs, []));
const binary = args.binary || "build/diffuse";
const failures = [];
const check = (ok, what) => { console.log(`${ok ? "ok  " : "FAIL"} ${what}`); if (!ok) failures.push(what); };

const scratch = mkdtempSync(join(tmpdir(), "diffuse-openai-"));
const checkpoint = args.checkpoint || trainTinyModel(binary, scratch);
const server = await startServer(binary, checkpoint, ["--api-key", "sesame"]);
const name = checkpoint.includes("checkpoint.safetensors") ? checkpoint.split("/").slice(-2)[0] : undefined;
try {
  const client = new OpenAI({baseURL: `http://127.0.0.1:${server.port}/v1`, apiKey: "sesame", maxRetries: 0});
  const models = await client.models.list();
  check(models.data.length === 1 && (!name || models.data[0].id === name), `models.list: ${models.data.map((m) => m.id)}`);
  const model = models.data[0].id;

  const generated = await client.images.generate({model, prompt: "a digit", n: 3, size: "28x28", seed: 4});
  check(generated.data.length === 3, "images.generate gives n images");
  const png = Buffer.from(generated.data[0].b64_json, "base64");
  check(png.subarray(1, 4).toString() === "PNG", "as base64 PNGs");
  const again = await client.images.generate({model, prompt: "a digit", n: 3, size: "28x28", seed: 4});
  check(again.data[2].b64_json === generated.data[2].b64_json, "the seed (an extra field) makes them reproducible");

  const edited = await client.images.edit({model, image: await toFile(png, "digit.png", {type: "image/png"}),
                                           prompt: "the same digit", n: 2});
  check(edited.data.length === 2, "images.edit (multipart, no mask: noise and denoise) gives n images");

  try {
    await client.images.generate({model, prompt: "a digit", size: "1024x1024"});
    check(false, "a wrong size is refused");
  } catch (e) {
    check(e.status === 400 && e.param === "size" && /28x28/.test(e.message), `a wrong size: ${e.status} ${e.message}`);
  }
  try {
    await new OpenAI({baseURL: `http://127.0.0.1:${server.port}/v1`, apiKey: "wrong", maxRetries: 0}).models.list();
    check(false, "a wrong key is refused");
  } catch (e) {
    check(e.status === 401, `a wrong key: ${e.status} ${e.message}`);
  }
} catch (e) {
  check(false, String(e));
} finally {
  const {code} = await server.stop();
  check(code === 0, `the server stopped on SIGTERM with status 0 (${code})`);
  rmSync(scratch, {recursive: true, force: true});
}
console.log(failures.length ? `${failures.length} check(s) failed` : "all checks passed");
process.exit(failures.length ? 1 : 0);
