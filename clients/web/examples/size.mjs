// What the package costs an app: examples/minimal.ts bundled for browsers,
// plain and minified, and the minified bundle gzipped.
import { gzipSync } from "node:zlib";
import { build } from "esbuild";

const kib = (n) => `${(n / 1024).toFixed(1)} KiB (${n} bytes)`;
const bundle = async (minify) =>
  (
    await build({
      entryPoints: [new URL("./minimal.ts", import.meta.url).pathname],
      bundle: true,
      minify,
      format: "esm",
      target: "es2022",
      write: false,
      logLevel: "warning",
    })
  ).outputFiles[0].contents;

const raw = await bundle(false);
const min = await bundle(true);
console.log(`examples/minimal.ts bundled: ${kib(raw.length)}`);
console.log(`minified:                    ${kib(min.length)}`);
console.log(`minified + gzip -9:          ${kib(gzipSync(min, { level: 9 }).length)}`);
