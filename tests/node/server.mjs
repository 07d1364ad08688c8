// `diffuse serve` as a child process for the Node tests: started on a free port (its log says
// which), stopped with SIGTERM.
import {execFileSync, spawn} from "node:child_process";
import {join} from "node:path";

// A small model trained for a few steps on the shipped MNIST (the server, not the model's
// quality, is under test), with `extra` train flags (a condition); returns its checkpoint's path.
export function trainTinyModel(binary, dir, extra = []) {
  execFileSync(binary, ["--threads", "2", "train", "--data", "mnist", "--model", "tiny", "--steps", "30", "--batch-size", "16",
                        "--out", dir, "--preview-every", "0", "--checkpoint-every", "0", "--no-progress", ...extra],
               {stdio: "ignore"});
  return join(dir, "checkpoint.safetensors");
}

export async function startServer(binary, checkpoint, extra = []) {
  const child = spawn(binary, ["--threads", "2", "serve", "--checkpoint", checkpoint, "--port", "0", ...extra],
                      {stdio: ["ignore", "pipe", "pipe"]});
  let log = "";
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({code, signal})));
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the server did not start:\n" + log)), 60000);
    const read = (chunk) => {
      log += chunk;
      const m = log.match(/serving on http:\/\/127\.0\.0\.1:(\d+)\//);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    };
    child.stderr.on("data", read);
    child.stdout.on("data", read);
    exited.then(({code}) => reject(new Error(`the server exited (${code}):\n${log}`)));
  });
  return {port, log: () => log, stop: () => { child.kill("SIGTERM"); return exited; }};
}
