// A module Worker that sends parcels for the page (see src/worker.ts):
// bundle it on its own and start it with
// `new Worker(new URL("./inbox-worker.js", import.meta.url), { type: "module" })`.
import { serveInboxWorker } from "../src/worker.js";

serveInboxWorker(self as unknown as Parameters<typeof serveInboxWorker>[0]);
